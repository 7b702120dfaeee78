//! Peak memory while 100 MB go up and 100 MB come down through the proxy.
//!
//! `cargo bench --bench streaming_memory`: starts a demo backend and a
//! balancer in this process, downloads `/bytes/104857600` and uploads
//! 100 MB to `/echo` (read back as it comes), and prints the growth of
//! the process's peak RSS (`VmHWM`) over a warmed-up start. A proxy that
//! buffered whole bodies would need 100 MB or more; streaming needs a few
//! buffers. (tests/proxy/streaming.rs shows the streaming itself; this is
//! the figure, measured where nothing else shares the process.)

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tollgate::balancer::BackendUrl;
use tollgate::config::{BackendConfig, Config};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn drain(r: reqwest::Response) -> u64 {
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        n += chunk.map_or(0, |c| c.len() as u64);
    }
    n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend = listener.local_addr()?;
    let (_stop, signal) = tollgate::shutdown::channel();
    tokio::spawn(tollgate::demo::serve(listener, "b0".into(), signal.wait()));
    let mut config = Config::default();
    config.server.listen = Some("127.0.0.1:0".parse()?);
    config.admin.listen = "127.0.0.1:0".parse()?;
    config.store.url = "sqlite::memory:".into();
    config.rate_limit.enabled = false;
    config.backends = vec![BackendConfig::new(BackendUrl::parse(&format!(
        "http://{backend}"
    ))?)];
    let lb = tollgate::app::start(&config).await?;
    let base = format!("http://{}", lb.proxy_addr());
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    // Warm everything up (connection pools, allocator arenas) first.
    drain(c.get(format!("{base}/bytes/1048576")).send().await?).await;
    let before = peak_rss();
    let down = drain(c.get(format!("{base}/bytes/{SIZE}")).send().await?).await;
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let upload = futures_util::stream::iter(0..SIZE / CHUNK as u64)
        .map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let echoed = c
        .post(format!("{base}/echo"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await?;
    let up = drain(echoed).await;
    let growth = peak_rss().saturating_sub(before);
    println!(
        "moved {} MB down and {} MB up and back; peak RSS growth {:.1} MB",
        down >> 20,
        up >> 20,
        growth as f64 / 1048576.0
    );
    lb.shutdown().await;
    Ok(())
}
