//! Sticky sessions (`sticky: {cookie, ttl}`), on top of any strategy: the
//! first answer sets a cookie naming its backend, and later requests that
//! carry it go to that backend while it takes requests, as HAProxy's
//! `cookie SRV insert` and Envoy's cookie-based hash policy do.
//!
//! The cookie names the backend by an opaque token: the first 16 bytes
//! of HMAC-SHA256 over the pool's and the backend's names, keyed by
//! `sticky.secret` or, when none is configured, by a random key made once
//! per process. A client learns nothing of the backend's address, and
//! cannot make a token for a backend it was never sent to; a value that
//! names no backend (forged, stale, from another secret) is ignored and
//! the request is balanced as if it had none. Tokens are computed once per
//! backend set and compared, not recomputed per request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{header, HeaderMap, HeaderValue};
use ring::hmac;

use super::{Backend, Pool};

/// A backend's token: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyToken(String);

impl StickyToken {
    /// The token as the cookie carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One pool's sticky-session cookie.
#[derive(Debug)]
pub struct Sticky {
    cookie: String,
    ttl: Duration,
    pool: Arc<str>,
    key: hmac::Key,
    /// The tokens of the backend set they were made for.
    tokens: ArcSwapOption<Tokens>,
}

#[derive(Debug)]
struct Tokens {
    all: Arc<Vec<Arc<Backend>>>,
    tokens: Vec<StickyToken>,
}

impl Sticky {
    /// Sessions of pool `pool` in cookie `cookie`, kept `ttl` by the
    /// client; tokens keyed by `secret`, or by this process's own random
    /// key when `None` (then they do not survive a restart, and replicas
    /// do not share them).
    pub fn new(pool: &str, cookie: &str, ttl: Duration, secret: Option<&[u8]>) -> Self {
        let key = secret.map_or_else(process_key, |s| hmac::Key::new(hmac::HMAC_SHA256, s));
        Self {
            cookie: cookie.to_owned(),
            ttl,
            pool: pool.into(),
            key,
            tokens: ArcSwapOption::empty(),
        }
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// `backend`'s token.
    pub fn token(&self, backend: &Backend) -> StickyToken {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(self.pool.as_bytes());
        ctx.update(&[0]);
        ctx.update(backend.name().as_bytes());
        let tag = ctx.sign();
        let mut hex = String::with_capacity(32);
        for b in tag.as_ref().iter().take(16) {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        StickyToken(hex)
    }

    /// The value of this pool's cookie in `headers`, if the request has it
    /// (the first, if several `Cookie` headers or pairs carry it).
    pub fn read<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie_value(headers, &self.cookie)
    }

    /// The backend of `pool` that `value` names, if there is one and it
    /// takes requests.
    pub fn find(&self, pool: &Pool, value: &str) -> Option<Arc<Backend>> {
        let all = pool.backends();
        let tokens = match self.tokens.load_full() {
            Some(t) if Arc::ptr_eq(&t.all, &all) => t,
            _ => {
                let t = Arc::new(Tokens {
                    tokens: all.iter().map(|b| self.token(b)).collect(),
                    all: all.clone(),
                });
                self.tokens.store(Some(t.clone()));
                t
            }
        };
        let i = tokens.tokens.iter().position(|t| t.0 == value)?;
        tokens.all.get(i).filter(|b| b.takes_requests()).cloned()
    }

    /// The `Set-Cookie` value pinning a client to `backend`; `secure` for a
    /// client on TLS.
    pub fn set_cookie(&self, backend: &Backend, secure: bool) -> Option<HeaderValue> {
        let mut v = format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            self.cookie,
            self.token(backend).0,
            self.ttl.as_secs()
        );
        if secure {
            v.push_str("; Secure");
        }
        HeaderValue::from_str(&v).ok()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// This process's token key, made once from the operating system's
/// random source.
fn process_key() -> hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // The system's source failing is not expected; the thread
            // generator still gives an unguessable key.
            let bytes: [u8; 32] = rand::random();
            hmac::Key::new(hmac::HMAC_SHA256, &bytes)
        })
    })
    .clone()
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{strategy_for, BackendSpec, BackendUrl, StrategyName, Weight};

    fn pool() -> Pool {
        let specs = (0..3u16).filter_map(|i| {
            Some(BackendSpec {
                url: BackendUrl::parse(&format!("http://10.0.0.{i}:8080")).ok()?,
                name: format!("b{i}").into(),
                weight: Weight::ONE,
            })
        });
        Pool::of(specs, strategy_for(StrategyName::RoundRobin))
    }

    #[test]
    fn tokens_are_opaque_per_pool_and_secret_and_find_only_active_backends() {
        let p = pool();
        let s = Sticky::new(
            "api",
            "tg",
            Duration::from_secs(60),
            Some(b"0123456789abcdef"),
        );
        let b1 = p.backends()[1].clone();
        let t = s.token(&b1);
        assert_eq!(t.as_str().len(), 32);
        // Hex digits only: no address or name in clear.
        assert!(t.as_str().bytes().all(|c| HEX.contains(&c)), "{t:?}");
        let other_pool = Sticky::new(
            "web",
            "tg",
            Duration::from_secs(60),
            Some(b"0123456789abcdef"),
        );
        let other_secret = Sticky::new(
            "api",
            "tg",
            Duration::from_secs(60),
            Some(b"fedcba9876543210"),
        );
        assert_ne!(t, other_pool.token(&b1));
        assert_ne!(t, other_secret.token(&b1));
        assert!(Arc::ptr_eq(&s.find(&p, t.as_str()).expect("found"), &b1));
        assert!(s.find(&p, "00000000000000000000000000000000").is_none());
        assert!(s.find(&p, "").is_none());
        assert!(other_secret.find(&p, t.as_str()).is_none());
        p.drain("b1");
        assert!(
            s.find(&p, t.as_str()).is_none(),
            "a drained backend is not kept"
        );
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_with_its_attributes() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; tg=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("tg=later"));
        let s = Sticky::new("api", "tg", Duration::from_secs(3600), None);
        assert_eq!(s.read(&h), Some("abc"));
        assert_eq!(cookie_value(&h, "a"), Some("1"));
        assert_eq!(cookie_value(&h, "t"), None);
        let p = pool();
        let set = s.set_cookie(&p.backends()[0], true).expect("value");
        let set = set.to_str().expect("ascii");
        assert!(set.starts_with("tg="), "{set}");
        assert!(set.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"));
    }
}
