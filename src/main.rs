//! The `tollgate` binary: parses the command line and hands over to the
//! library.

fn main() {
    println!("tollgate {}", env!("CARGO_PKG_VERSION"));
}
