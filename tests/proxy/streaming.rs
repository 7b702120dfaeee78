//! Bodies stream both ways: a proxy that held a whole body before passing
//! it on would never let the first piece through, and these tests would
//! time out. (How much memory 100 MB each way costs is measured by
//! `cargo bench --bench streaming_memory`, not asserted here: other tests
//! share this process.)

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::support::{backends, balancer, client, config, url};

/// Longer than any step takes on a loaded machine; a buffering proxy
/// waits forever, so it fails at this.
const STEP: Duration = Duration::from_secs(10);

/// Each piece sent up comes back down through the echo backend before the
/// next is sent: neither direction is held until the body ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_piece_comes_back_before_the_next_is_sent() {
    let bs = backends(1).await;
    let lb = balancer(&config(&[bs[0].addr])).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let upload = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    tx.send(Ok(piece.clone()))
        .await
        .expect("first piece queued");
    let response = tokio::time::timeout(
        STEP,
        client()
            .post(url(lb.proxy_addr(), "/echo"))
            .body(reqwest::Body::wrap_stream(upload))
            .send(),
    )
    .await
    .expect("response headers while the request body is still open")
    .expect("response");
    assert_eq!(response.status(), 200);
    let mut down = response.bytes_stream();
    for round in 0..8 {
        let mut got = 0;
        while got < piece.len() {
            let chunk = tokio::time::timeout(STEP, down.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: echo did not come back while the upload is open")
                })
                .expect("body open")
                .expect("chunk");
            got += chunk.len();
        }
        assert_eq!(got, piece.len(), "round {round}: exactly one piece back");
        tx.send(Ok(piece.clone())).await.expect("next piece queued");
    }
    drop(tx);
    let mut rest = 0;
    while let Some(chunk) = down.next().await {
        rest += chunk.expect("chunk").len();
    }
    assert_eq!(rest, piece.len(), "the last piece, then the end");
    lb.shutdown().await;
}
