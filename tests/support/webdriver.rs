//! A headless Chromium driven through chromedriver's W3C WebDriver HTTP
//! API with reqwest: enough to load a page, wait for what it renders, type,
//! click and take a screenshot, without a WebDriver crate.
//!
//! chromedriver is started as a child process on a free port and killed
//! when the [`Browser`] is dropped. Without chromedriver or Chromium on
//! the machine, [`Browser::start`] prints why and returns `None`, and the
//! test skips (CI installs Debian's `chromium` and `chromium-driver`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session first (the browser exits with it; a test that
        // panicked never reached `quit`), then chromedriver.
        if let Some(rest) = self.base.strip_prefix("http://") {
            if let Some((host, path)) = rest.split_once('/') {
                delete_blocking(host, &format!("/{path}"));
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE path` on `host` without a runtime (from `Drop`), waiting a
/// little for the answer.
fn delete_blocking(host: &str, path: &str) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.read_to_end(&mut Vec::new());
    }
}

fn find_program(env: &str, candidates: &[&str]) -> Option<String> {
    if let Ok(p) = std::env::var(env) {
        return Some(p);
    }
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width` x `height`; `None` (reason printed) when either is missing.
    pub async fn start(width: u32, height: u32) -> Option<Self> {
        let Some(driver) = find_program(
            "TOLLGATE_CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        ) else {
            eprintln!("skipped: chromedriver not found (apt-get install chromium-driver, or set TOLLGATE_CHROMEDRIVER)");
            return None;
        };
        let chromium = find_program(
            "TOLLGATE_CHROMIUM",
            &[
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ],
        );
        let Some(chromium) = chromium else {
            eprintln!(
                "skipped: Chromium not found (apt-get install chromium, or set TOLLGATE_CHROMIUM)"
            );
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: cannot run {driver}: {e}");
                return None;
            }
        };
        let mut browser = Self {
            driver: child,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            base: format!("http://127.0.0.1:{port}"),
        };
        let ready = async {
            loop {
                let r = browser
                    .http
                    .get(format!("{}/status", browser.base))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if let Ok(v) = r.json::<Value>().await {
                        if v["value"]["ready"] == true {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .is_err()
        {
            eprintln!("skipped: chromedriver did not become ready within 20 s");
            return None;
        }
        let mut options = json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"),
        ]});
        // Debian's /usr/bin/chromium is a wrapper script chromedriver finds
        // on its own; another path is passed as the binary.
        if chromium != "/usr/bin/chromium" {
            options["binary"] = json!(chromium);
        }
        let created = browser
            .http
            .post(format!("{}/session", browser.base))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options}}}))
            .send()
            .await;
        let session = match created {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(e) => {
                eprintln!("skipped: no WebDriver session: {e}");
                return None;
            }
        };
        let Some(id) = session["value"]["sessionId"].as_str() else {
            eprintln!("skipped: Chromium did not start: {session}");
            return None;
        };
        browser.base = format!("{}/session/{id}", browser.base);
        Some(browser)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        if answer["value"].get("error").is_some() {
            panic!("WebDriver {method} {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page
    /// and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Polls `script` until it returns something other than null or
    /// false, within `within`; returns that.
    pub async fn wait_for(&self, what: &str, script: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.eval(script, json!([])).await;
            if !(v.is_null() || v == false) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; page text:\n{}",
                self.eval("return document.body.innerText", json!([])).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    /// Replaces the value of the input `css` with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Clicks the element `css`. Found and clicked in one script run: the
    /// page redraws its tables every refresh, so an element looked up in
    /// one WebDriver call can be gone ("stale") by the next.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let script = "const el = document.querySelector(arguments[0]); \
                      if (!el) return false; el.click(); return true;";
        while self.eval(script, json!([css])).await != true {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no element {css} to click"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        decode_base64(v.as_str().expect("base64 PNG")).expect("valid base64")
    }

    /// Ends the session (the browser exits), then chromedriver.
    pub async fn quit(mut self) {
        let _ = self.http.delete(&self.base).send().await;
        // Drop has nothing left to delete.
        self.base.clear();
    }
}

/// Standard base64 (with padding) to bytes; `None` on a bad character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for &c in &data {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * (4 - data.len() as u32);
        let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&full[..data.len().saturating_sub(1)]);
    }
    Some(out)
}

#[test]
fn base64_decodes() {
    assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
    assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
    assert_eq!(decode_base64("a$=="), None);
}
