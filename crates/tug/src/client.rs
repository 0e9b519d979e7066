//! A small HTTP client for the native API that turns error bodies into readable errors.

use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The token every request carries (`--token` or `TUG_TOKEN`), set once at start.
static TOKEN: OnceLock<String> = OnceLock::new();

/// Makes every client send `token` as its bearer token.
pub fn use_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The TLS settings every client uses: the system's roots plus `--ca` / `TUG_CA`.
static TLS: OnceLock<rustls::ClientConfig> = OnceLock::new();

/// Makes every client trust the CA certificates in `ca` (besides the system's roots).
pub fn use_ca(ca: &std::path::Path) -> anyhow::Result<()> {
    let config = tug_tls::ClientTls::new(Some(ca), None)?.for_http()?;
    let _ = TLS.set(config);
    Ok(())
}

/// An HTTP client with the TLS settings above.
pub fn http() -> reqwest::Client {
    let tls = TLS.get_or_init(|| {
        // Only a CA file can make this fail, and --ca was checked by `use_ca`.
        tug_tls::ClientTls::default().for_http().expect("TLS settings with the system's roots")
    });
    reqwest::Client::builder().tls_backend_preconfigured(tls.clone()).build().unwrap_or_default()
}

/// The API client.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:4400`).
    pub fn new(base: &str) -> Client {
        Client { base: base.trim_end_matches('/').to_string(), http: http() }
    }

    /// The full URL of an API path.
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Sends a request and returns the JSON body (Null for 204).
    pub async fn call(&self, method: Method, path: &str, body: Option<(&str, String)>) -> anyhow::Result<Value> {
        let resp = self.send(method, path, body).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = resp.text().await.context("reading the server's answer")?;
        serde_json::from_str(&text).with_context(|| format!("the server sent something that is not JSON: {text:.200}"))
    }

    /// Sends a request and returns the response if its status is a success.
    pub async fn send(&self, method: Method, path: &str, body: Option<(&str, String)>) -> anyhow::Result<reqwest::Response> {
        self.check_base()?;
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = TOKEN.get() {
            req = req.bearer_auth(token);
        }
        if let Some((content_type, body)) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        }
        self.checked(req.send().await).await
    }

    /// Refuses a server address that is not an http(s) URL, saying what one looks like.
    fn check_base(&self) -> anyhow::Result<()> {
        match reqwest::Url::parse(&self.base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
            _ if !self.base.contains("://") => Err(anyhow!(
                "invalid server URL {:?}: it needs a scheme, e.g. --server http://{} (or TUG_SERVER)",
                self.base,
                self.base
            )),
            _ => Err(anyhow!(
                "invalid server URL {:?}: give it as http://HOST:PORT, e.g. --server http://127.0.0.1:4400 (or TUG_SERVER)",
                self.base
            )),
        }
    }

    /// A GET whose body is read as a stream (no overall timeout), with `Last-Event-ID` when
    /// resuming an event stream.
    pub async fn stream_get(&self, path: &str, last_event_id: Option<&str>) -> anyhow::Result<reqwest::Response> {
        self.check_base()?;
        let mut req = self.http.get(self.url(path));
        if let Some(token) = TOKEN.get() {
            req = req.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        self.checked(req.send().await).await
    }

    /// The response if it is a success; otherwise the server's error message, or what to do
    /// when the server could not be reached.
    async fn checked(&self, sent: reqwest::Result<reqwest::Response>) -> anyhow::Result<reqwest::Response> {
        let resp = sent.map_err(|e| match tug_tls::explain(&e) {
            Some(why) => anyhow!("cannot talk to the Tugboat server at {}: {why}", self.base),
            None => anyhow!(
                "cannot reach the Tugboat server at {}: {e}\nstart one with `tug up`, or point --server / TUG_SERVER at it",
                self.base
            ),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED && TOKEN.get().is_none() {
            return Err(anyhow!("{msg} (HTTP 401)\nset TUG_TOKEN or pass --token"));
        }
        Err(anyhow!("{msg} (HTTP {})", status.as_u16()))
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// POST without a body.
    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::POST, path, None).await
    }
}

/// Percent-encodes a path segment or query value (the same encoding the web UI's links use).
pub use tug_server::ui::enc;
