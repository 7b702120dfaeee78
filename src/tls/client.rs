//! Verifying `https://` backends: the roots (system + `proxy.ca_file`)
//! and one rustls client configuration shared by the proxy and the health
//! checks.
