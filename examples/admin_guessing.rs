//! How many bearer tokens one client can try against a running admin API:
//! `cargo run --release --example admin_guessing -- 127.0.0.1:9090 10 8`
//! (address, seconds, connections). Every request carries a different
//! wrong token on a keep-alive connection; the answers are counted by
//! status. A 401 is a guess the server judged; a 429 is one it refused to
//! judge (the address is throttled).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9090".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let connections: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(guess(addr.clone(), c, until)))
        .collect();
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        for (status, n) in t.await.unwrap_or_default() {
            *counts.entry(status).or_default() += n;
        }
    }
    let total: u64 = counts.values().sum();
    let judged = counts.get(&401).copied().unwrap_or(0);
    println!("{total} requests in {secs} s over {connections} connections");
    for (status, n) in &counts {
        println!("  {status}: {n}");
    }
    println!(
        "tokens judged (401): {:.1}/s; answers: {:.1}/s",
        judged as f64 / secs as f64,
        total as f64 / secs as f64
    );
}

/// Guesses on one keep-alive connection (reconnecting when the server
/// closes it) until `until`; the answers by status.
async fn guess(addr: String, connection: usize, until: Instant) -> BTreeMap<u16, u64> {
    let mut counts = BTreeMap::new();
    let mut n = 0u64;
    'connect: while Instant::now() < until {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            eprintln!("cannot connect to {addr}");
            return counts;
        };
        let mut buf = Vec::with_capacity(4096);
        while Instant::now() < until {
            n += 1;
            let req = format!(
                "GET /clients HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: Bearer guess-{connection}-{n:016}\r\n\r\n"
            );
            if stream.write_all(req.as_bytes()).await.is_err() {
                continue 'connect;
            }
            match read_answer(&mut stream, &mut buf).await {
                Some(status) => *counts.entry(status).or_insert(0) += 1,
                None => continue 'connect,
            }
        }
    }
    counts
}

/// Reads one answer (head and a Content-Length body); its status.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.get(9..12)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Some(status);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
