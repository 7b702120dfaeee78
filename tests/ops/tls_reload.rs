//! SIGHUP on the real binary: the TLS certificates are read again, new
//! connections get the new one, and the process keeps running (SIGHUP's
//! default action would end it).

use std::time::Duration;

use crate::support::tls::{CertFiles, TestCa};
use crate::support::{backend, serve_yaml, spawn_serve, temp_db};

/// Status of `GET /` over TLS to `app.test` with a client trusting only
/// `ca`, on a new connection.
async fn status_trusting(ca: &TestCa, tls: std::net::SocketAddr) -> reqwest::Result<u16> {
    let c = ca
        .client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .resolve("app.test", tls)
        .build()
        .expect("client");
    let r = c
        .get(format!("https://app.test:{}/", tls.port()))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

fn copy_over(from: &CertFiles, to: &CertFiles) {
    std::fs::copy(&from.cert, &to.cert).expect("copy cert");
    std::fs::copy(&from.key, &to.key).expect("copy key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificates() {
    let b = backend("b").await;
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let served = old_ca.issue("site", &["app.test"]);
    let replacement = new_ca.issue("site", &["app.test"]);
    let tls = format!(
        "server:\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n      - {{cert: {:?}, key: {:?}}}\n",
        served.cert, served.key
    );
    let yaml = serve_yaml(&[b.addr], &temp_db(), "").replacen("server:\n", &tls, 1);
    let mut p = spawn_serve(&yaml);
    let addr = p.tls.expect("TLS listener reported");
    assert_eq!(status_trusting(&old_ca, addr).await.ok(), Some(200));
    assert!(status_trusting(&new_ca, addr).await.is_err());

    copy_over(&replacement, &served);
    p.hup();
    let line = p.wait_for_log("reloaded");
    assert_eq!(line["certificates"], 1, "{line}");
    assert_eq!(status_trusting(&new_ca, addr).await.ok(), Some(200));
    assert!(status_trusting(&old_ca, addr).await.is_err());

    // A broken key on the next SIGHUP: logged with its path, the
    // certificate in use stays.
    std::fs::write(&served.key, "not a key").expect("write");
    p.hup();
    let line = p.wait_for_log("reload failed");
    assert_eq!(line["level"], "ERROR", "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains(&served.key.display().to_string()), "{line}");
    assert_eq!(status_trusting(&new_ca, addr).await.ok(), Some(200));

    let _ = p.child.kill();
    let _ = p.child.wait();
}
