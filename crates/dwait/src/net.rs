//! Waiting for the network: `dwait` asks `dresponse` (the agent, over a unix socket bind-mounted
//! into the container) to plumb the container, and starts nothing before the answer.
//!
//! ```text
//! dwait                                         dresponse (agent)
//!   connect /.tug/net/dresponse.sock ──────────►  peer credentials: dwait's pid on the host
//!   {"instance":"job/web/0","pool":"blue"}\n ──►  claim (server) → plumb (netlink)
//!                                           ◄──  {"ok":{"ip":..,"prefix":..,"mac":..,"gateway":..}}\n
//!                                                or {"error":"why"}\n
//! ```
//!
//! A refused connection or a connection closed before the answer (dresponse restarting) is
//! retried until the deadline; an `error` answer is final.

// dwait has no async runtime and no paused-time tests: the std clock is the right one here.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::protocol::DecodeError;

/// Where the socket appears inside a container.
pub const SOCKET_IN_CONTAINER: &str = "/.tug/net/dresponse.sock";

/// What a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The instance's claim name, e.g. `job/web/0`.
    pub instance: String,
    /// The pool.
    pub pool: String,
}

impl Ask {
    /// The request line.
    pub fn to_line(&self) -> String {
        format!("{}\n", json!({"instance": self.instance, "pool": self.pool}))
    }

    /// Parses a request line.
    pub fn from_line(line: &str) -> Result<Ask, DecodeError> {
        const WHAT: &str = "network request";
        let v: Value = serde_json::from_str(line).map_err(|source| DecodeError::Json { what: WHAT, source })?;
        let field = |k: &str, problem| v[k].as_str().map(str::to_owned).ok_or(DecodeError::Field { what: WHAT, problem });
        Ok(Ask { instance: field("instance", "no instance")?, pool: field("pool", "no pool")? })
    }
}

/// The answer line for a plumbed container: what it got.
pub fn ok_line(ip: &str, prefix: u8, mac: &str, gateway: &str) -> String {
    format!("{}\n", json!({"ok": {"ip": ip, "prefix": prefix, "mac": mac, "gateway": gateway}}))
}

/// The answer line for a refusal.
pub fn error_line(why: &str) -> String {
    format!("{}\n", json!({"error": why}))
}

/// How one attempt ended.
enum Attempt {
    /// The network is ready: the answer's `ok` object.
    Ready(Value),
    /// Refused for good.
    Refused(String),
    /// Try again (no dresponse yet, or it went away mid-answer).
    Retry(String),
}

fn attempt(socket: &Path, ask: &Ask, left: Duration) -> Attempt {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Attempt::Retry(format!("cannot reach dresponse at {}: {e}", socket.display())),
    };
    let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
    if let Err(e) = stream.write_all(ask.to_line().as_bytes()) {
        return Attempt::Retry(format!("dresponse went away: {e}"));
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => Attempt::Retry("dresponse closed the connection before answering".into()),
        Ok(_) => match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["ok"].is_object() => Attempt::Ready(v["ok"].clone()),
            Ok(v) => Attempt::Refused(v["error"].as_str().unwrap_or("an answer without ok or error").to_owned()),
            Err(e) => Attempt::Refused(format!("an answer that is not JSON: {e}")),
        },
        Err(e) => Attempt::Retry(format!("no answer from dresponse: {e}")),
    }
}

/// Asks for the network until it is ready, refused, or `timeout` passes; returns the answer's
/// `ok` object, or what to tell the container's log.
pub fn wait_for_network(socket: &Path, ask: &Ask, timeout: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the network of {} (pool {:?}) was not ready within {}s: {last}; check the agent's log (dresponse) \
                 on this host",
                ask.instance,
                ask.pool,
                timeout.as_secs()
            ));
        }
        match attempt(socket, ask, deadline - now) {
            Attempt::Ready(v) => return Ok(v),
            Attempt::Refused(why) => return Err(format!("the network of {} was refused: {why}", ask.instance)),
            Attempt::Retry(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
