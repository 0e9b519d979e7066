//! A follower of the server's event stream (`/api/v1/events`, Server-Sent Events) that reconnects
//! by itself and resumes where it left off (`Last-Event-ID`), for `tug events` and
//! `tug runs --watch`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::client::Client;

/// One event as the server sent it.
pub struct Sse {
    /// `job.created`, `run.finished`, ... or `lagged`.
    pub kind: String,
    /// The event as JSON.
    pub data: Value,
}

/// Follows the stream; see the module doc.
pub struct Follower {
    client: Client,
    query: String,
    last_id: Option<String>,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    /// Bytes received and not yet parsed (an event may end mid-chunk, even mid-character).
    buf: Vec<u8>,
}

impl Follower {
    /// A follower of `/events?{query}` (query without the `?`, may be empty).
    pub fn new(client: Client, query: String) -> Follower {
        Follower { client, query, last_id: None, body: None, buf: Vec::new() }
    }

    /// Starts after event `id` (0: from the oldest the server still holds) instead of now.
    pub fn after(mut self, id: u64) -> Follower {
        self.last_id = Some(id.to_string());
        self
    }

    /// The next event. Reconnects (resuming) when the connection drops; fails only when the
    /// server refuses the request itself (a bad filter) or cannot be reached at the start.
    pub async fn next(&mut self) -> anyhow::Result<Sse> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if let Some(e) = self.take_event() {
                return Ok(e);
            }
            let Some(body) = self.body.as_mut() else {
                let path = if self.query.is_empty() { "/events".to_string() } else { format!("/events?{}", self.query) };
                match self.client.stream_get(&path, self.last_id.as_deref()).await {
                    Ok(resp) => {
                        self.body = Some(resp.bytes_stream().boxed());
                        backoff = Duration::from_millis(200);
                    }
                    // Refused outright, or never reached: say so rather than retry forever.
                    Err(e) if self.last_id.is_none() => return Err(e),
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                // The server went away: reconnect and resume after the last id.
                Some(Err(_)) | None => {
                    self.body = None;
                    self.buf.clear();
                    if self.last_id.is_none() {
                        self.last_id = Some("0".into());
                    }
                }
            }
        }
    }

    /// Parses one complete event out of the buffer, if there is one.
    fn take_event(&mut self) -> Option<Sse> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let bytes: Vec<u8> = self.buf.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&bytes);
            let (mut kind, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    self.last_id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if data.is_empty() {
                continue; // keep-alive
            }
            let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            return Some(Sse { kind, data });
        }
    }
}
