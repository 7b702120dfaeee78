//! gRPC unary calls per second through tollgate, against the same server
//! called directly: `cargo run --release --example grpc_bench -- 5 4 16 3`
//! (seconds per run, client connections, calls in flight per connection,
//! rounds).
//!
//! Everything runs in this process on 127.0.0.1: the tests' gRPC server
//! (tonic, `tests/support/grpc.rs`), tollgate with its default pool on
//! `protocol: http2` and rate limiting on (limits too high to refuse), and
//! tonic clients on h2c. Direct and proxied runs alternate, so a change in
//! the machine's load shows as a spread between rounds rather than as a
//! difference between the two. The clients and the server share the
//! machine's cores with tollgate's threads: the figures compare the two
//! paths on one box, they are not a capacity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../tests/support/grpc.rs"]
mod grpc;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| args.next().and_then(|s| s.parse().ok()).unwrap_or(default);
    let secs = arg(5);
    let connections = arg(4) as usize;
    let in_flight = arg(16) as usize;
    let rounds = arg(3);
    let server = grpc::server("bench").await;
    let lb = tollgate::app::start(&config(server.addr))
        .await
        .expect("tollgate starts");
    let run = |addr| calls_per_second(addr, Duration::from_secs(secs), connections, in_flight);
    println!(
        "{connections} connections x {in_flight} calls in flight, {secs} s per run, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let d = run(server.addr).await;
        let p = run(lb.proxy_addr()).await;
        println!("round {round}: direct {d:.0} calls/s, through tollgate {p:.0} calls/s");
        direct.push(d);
        proxied.push(p);
    }
    let (d, p) = (median(&mut direct), median(&mut proxied));
    println!(
        "median: direct {d:.0} calls/s, through tollgate {p:.0} calls/s ({:.0}% of direct)",
        100.0 * p / d
    );
    lb.shutdown().await;
}

/// Unary calls answered per second at `addr` over `connections` h2c
/// connections with `in_flight` calls each, for `length`.
async fn calls_per_second(
    addr: SocketAddr,
    length: Duration,
    connections: usize,
    in_flight: usize,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = grpc::client(addr).await;
        for _ in 0..in_flight {
            let (mut client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client
                        .unary("ping", Duration::ZERO, None, &[])
                        .await
                        .expect("call");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    let took = started.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    counted as f64 / took.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// tollgate in front of `backend`: HTTP/2 to it, listeners on port 0, a
/// SQLite file of its own, limits no run reaches.
fn config(backend: SocketAddr) -> tollgate::config::Config {
    let dir = std::env::temp_dir().join(format!("grpc_bench_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}\n\
         admin: {{listen: 127.0.0.1:0}}\n\
         backends: [{{url: 'http://{backend}'}}]\n\
         proxy: {{protocol: http2}}\n\
         rate_limit: {{default: {{capacity: 1000000000, rate_per_sec: 1000000000}}}}\n\
         store: {{url: 'sqlite://{}'}}\n\
         log: {{level: warn}}\n",
        dir.join("tollgate.db").display()
    );
    tollgate::config::Config::parse(&yaml).expect("config")
}
