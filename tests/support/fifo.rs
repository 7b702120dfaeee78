//! A file that blocks whoever opens it for reading: a FIFO with no
//! writer, as a hung network mount would block, for the tests of reads
//! that must not hang a reload or a shutdown.

use std::path::Path;

/// Replaces whatever is at `path` with a FIFO.
pub fn replace_with_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Lets a reader stuck opening the FIFO at `path` go: opens it for
/// writing (which waits for that reader), writes `text` and closes it,
/// on a thread of its own (joined by the caller once a reader is sure to
/// be there; a test that fails first does not hang on it).
pub fn release_fifo(path: &Path, text: &str) -> std::thread::JoinHandle<()> {
    let (path, text) = (path.to_owned(), text.to_owned());
    std::thread::spawn(move || {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = std::io::Write::write_all(&mut f, text.as_bytes());
        }
    })
}
