//! 100 MB up and 100 MB down through the proxy with flat memory: bodies
//! stream, they are never held whole. Alone in its own test binary so the
//! process's peak RSS belongs to this test.

// The one test of this binary (alone: see above) uses only some of the
// helpers in net.rs.
#[allow(dead_code)]
#[path = "support"]
mod support {
    pub mod net;
    pub use net::*;
}

use bytes::Bytes;
use futures_util::StreamExt;
use support::{backends, balancer, client, config, url};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// Far below the 100 MB a buffering proxy would need for either direction.
const MAX_GROWTH: u64 = 40 * 1024 * 1024;

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

async fn drain(r: reqwest::Response) -> u64 {
    assert!(r.status().is_success(), "{}", r.status());
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        n += chunk.expect("body chunk").len() as u64;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_with_flat_memory() {
    let bs = backends(1).await;
    let lb = balancer(&config(&[bs[0].addr])).await;
    let c = client();
    // Warm everything up (connection pools, allocator arenas) first.
    assert_eq!(
        drain(
            c.get(url(lb.proxy_addr(), "/bytes/1048576"))
                .send()
                .await
                .expect("req")
        )
        .await,
        1 << 20
    );
    let before = peak_rss();

    let down = drain(
        c.get(url(lb.proxy_addr(), &format!("/bytes/{SIZE}")))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(down, SIZE);

    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let chunks = SIZE / CHUNK as u64;
    let upload =
        futures_util::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let echoed = c
        .post(url(lb.proxy_addr(), "/echo"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .expect("upload");
    assert_eq!(drain(echoed).await, SIZE);

    let growth = peak_rss().saturating_sub(before);
    assert!(
        growth < MAX_GROWTH,
        "peak RSS grew {} MB moving 2 x 100 MB",
        growth / (1024 * 1024)
    );
    println!("peak RSS growth: {:.1} MB", growth as f64 / 1048576.0);
    lb.shutdown().await;
}
