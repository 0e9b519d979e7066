//! The wire protocol between the agent and `dwait`: one unix-socket connection per run, carrying
//! frames of `[kind: u8][length: u32 big-endian][payload]`.
//!
//! ```text
//! agent                                dwait
//!   REQUEST {argv, env, workdir, user} ──>
//!                                    <── STARTED "pid"        (or ERROR "why", then close)
//!                                    <── STDOUT bytes / STDERR bytes ...
//!   SIGNAL "15" / SIGNAL "9"  ──>         (to the run's whole process group)
//!                                    <── EXIT {code, signal, core, oom}
//!   DONE                       ──>        (a detachable run: the agent has recorded the exit)
//! ```
//!
//! When the agent's side closes before EXIT, dwait SIGKILLs the run's process group: a run never
//! outlives the connection that asked for it. Unless the request named a `key` (a *detachable*
//! run): then the run goes on, dwait keeps the last `buffer` bytes of its output, and a restarted
//! agent continues it on a new connection:
//!
//! ```text
//!   ATTACH {key, from}         ──>
//!                                    <── STARTED "pid"        (or ERROR "no such run", then close)
//!                                    <── STDOUT: a marker line if output before the buffer's
//!                                        start was lost, then the output from byte `from` on
//!                                    <── STDOUT / STDERR ... EXIT, as above
//!   DONE                       ──>
//! ```
//!
//! A finished detachable run is kept until an agent says DONE (or for an hour).

use std::io::{self, Read, Write};

/// Agent → dwait: what to run (JSON, see [`Request`]).
pub const REQUEST: u8 = b'R';
/// Agent → dwait: send this signal (decimal number) to the run's process group.
pub const SIGNAL: u8 = b'K';
/// dwait → agent: the run started; payload is its pid inside the container (decimal).
pub const STARTED: u8 = b'S';
/// dwait → agent: a chunk of the run's stdout.
pub const STDOUT: u8 = b'O';
/// dwait → agent: a chunk of the run's stderr.
pub const STDERR: u8 = b'E';
/// dwait → agent: the run ended (JSON, see [`Exit`]).
pub const EXIT: u8 = b'X';
/// dwait → agent: the run could not start; payload is the reason in words.
pub const ERROR: u8 = b'F';
/// Agent → dwait: continue a detachable run on this connection (JSON, see [`Attach`]).
pub const ATTACH: u8 = b'A';
/// Agent → dwait: the agent has recorded a detachable run's exit; dwait may forget the run.
pub const DONE: u8 = b'D';

/// The largest payload either side accepts.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// The 5-byte header of a frame: kind and payload length.
pub fn encode_header(kind: u8, len: usize) -> [u8; 5] {
    let l = (len as u32).to_be_bytes();
    [kind, l[0], l[1], l[2], l[3]]
}

/// Splits a header into kind and length, refusing lengths over [`MAX_PAYLOAD`].
pub fn decode_header(h: [u8; 5]) -> io::Result<(u8, usize)> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    Ok((h[0], len))
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = decode_header(h)?;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Program and arguments (the program is looked up in `PATH`).
    pub argv: Vec<String>,
    /// Variables added to dwait's own environment (the image's).
    pub env: Vec<(String, String)>,
    /// Working directory; the container's when absent.
    pub workdir: Option<String>,
    /// `name`, `uid` or `uid:gid`; names are looked up in the container's `/etc/passwd`.
    pub user: Option<String>,
    /// Makes the run detachable under this key (unique in the container): it outlives the
    /// connection and can be [attached](Attach) again.
    pub key: Option<String>,
    /// For a detachable run: how many bytes of its latest output dwait keeps for a re-attach.
    pub buffer: Option<u64>,
}

impl Request {
    /// As JSON.
    pub fn encode(&self) -> Vec<u8> {
        let env: serde_json::Map<String, serde_json::Value> =
            self.env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        serde_json::json!({ "argv": self.argv, "env": env, "workdir": self.workdir, "user": self.user, "key": self.key, "buffer": self.buffer })
            .to_string()
            .into_bytes()
    }

    /// From JSON.
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        const WHAT: &str = "request";
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { what: WHAT, source })?;
        let argv = v["argv"]
            .as_array()
            .ok_or(DecodeError::Field { what: WHAT, problem: "no argv" })?
            .iter()
            .map(|a| a.as_str().map(str::to_string).ok_or(DecodeError::Field { what: WHAT, problem: "argv holds a non-string" }))
            .collect::<Result<Vec<_>, _>>()?;
        let env = v["env"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let text = |k: &str| v[k].as_str().map(str::to_string);
        Ok(Request { argv, env, workdir: text("workdir"), user: text("user"), key: text("key"), buffer: v["buffer"].as_u64() })
    }
}

/// Continue a detachable run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attach {
    /// The run's key, as in its [`Request`].
    pub key: String,
    /// How many bytes of the run's output the agent has already: dwait sends the rest.
    pub from: u64,
}

impl Attach {
    /// As JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::json!({ "key": self.key, "from": self.from }).to_string().into_bytes()
    }

    /// From JSON.
    pub fn decode(bytes: &[u8]) -> Result<Attach, DecodeError> {
        const WHAT: &str = "attach";
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { what: WHAT, source })?;
        let key = v["key"].as_str().ok_or(DecodeError::Field { what: WHAT, problem: "no key" })?.to_string();
        Ok(Attach { key, from: v["from"].as_u64().unwrap_or(0) })
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core: bool,
    /// Whether the container's memory cgroup OOM-killed a process during the run.
    pub oom: bool,
}

impl Exit {
    /// As JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::json!({ "code": self.code, "signal": self.signal, "core": self.core, "oom": self.oom })
            .to_string()
            .into_bytes()
    }

    /// From JSON.
    pub fn decode(bytes: &[u8]) -> Result<Exit, DecodeError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { what: "exit frame", source })?;
        let int = |k: &str| v[k].as_i64().and_then(|n| i32::try_from(n).ok());
        Ok(Exit { code: int("code"), signal: int("signal"), core: v["core"].as_bool().unwrap_or(false), oom: v["oom"].as_bool().unwrap_or(false) })
    }
}

/// Why a frame's payload (or a network request line) could not be read.
#[derive(Debug)]
pub enum DecodeError {
    /// It is not JSON.
    Json {
        /// What was being read.
        what: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A field is missing or has the wrong type.
    Field {
        /// What was being read.
        what: &'static str,
        /// Which field, and what is wrong with it.
        problem: &'static str,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Json { what, source } => write!(f, "bad {what}: {source}"),
            DecodeError::Field { what, problem } => write!(f, "bad {what}: {problem}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Json { source, .. } => Some(source),
            DecodeError::Field { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_messages_round_trip() {
        let req = Request {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            workdir: Some("/tmp".into()),
            user: None,
            key: Some("7-1".into()),
            buffer: Some(4096),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, REQUEST, &req.encode()).unwrap();
        write_frame(&mut buf, STDOUT, b"\x00\xffbinary").unwrap();
        let mut r = &buf[..];
        let (k, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((k, Request::decode(&p).unwrap()), (REQUEST, req));
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), (STDOUT, b"\x00\xffbinary".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let exit = Exit { code: None, signal: Some(9), core: false, oom: true };
        assert_eq!(Exit::decode(&exit.encode()).unwrap(), exit);
        let attach = Attach { key: "7-1".into(), from: 12 };
        assert_eq!(Attach::decode(&attach.encode()).unwrap(), attach);
    }

    /// A payload that cannot be read says what it was and what is wrong, and keeps the parser's
    /// error as its source.
    #[test]
    fn unreadable_payloads_say_what_is_wrong() {
        let e = Request::decode(b"{").unwrap_err();
        assert!(e.to_string().starts_with("bad request: EOF while parsing"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(Request::decode(br#"{"env":{}}"#).unwrap_err().to_string(), "bad request: no argv");
        assert_eq!(Request::decode(br#"{"argv":[1]}"#).unwrap_err().to_string(), "bad request: argv holds a non-string");
        assert_eq!(Attach::decode(br#"{"from":3}"#).unwrap_err().to_string(), "bad attach: no key");
        assert!(Exit::decode(b"exit").unwrap_err().to_string().starts_with("bad exit frame: "));
        let e = crate::net::Ask::from_line(r#"{"instance":"job/web/0"}"#).unwrap_err();
        assert_eq!(e.to_string(), "bad network request: no pool");
    }
}
