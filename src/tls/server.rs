//! Terminating TLS from clients: certificates by SNI, reloaded on
//! demand, protocol versions and ALPN as configured.
