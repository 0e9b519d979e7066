//! Health checks of service replicas, run by the agent that runs them: an HTTP GET, a TCP
//! connect or a command, every `interval`, each bounded by `timeout`. [`Verdicts`] turns the
//! results into changes worth reporting:
//!
//! | now                   | check   | after                          | reported           |
//! |-----------------------|---------|--------------------------------|--------------------|
//! | starting or unhealthy | passes  | `healthy_threshold` in a row    | healthy            |
//! | starting              | fails   | within `grace_period`           | nothing            |
//! | starting or healthy   | fails   | `unhealthy_threshold` in a row  | unhealthy (reason) |
//!
//! http and tcp checks probe the replica's address: its container's on a docker network (the
//! bridge) or from its pool, else 127.0.0.1 (process replicas, host-network containers); exec
//! checks run on the host with the replica's environment (`TUG_SERVICE`, `TUG_REPLICA`, its `env`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tug_core::service::{HealthCheck, HealthKind};

/// Why a health check failed. Its text is the reason a replica is reported unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The check did not finish within its `timeout`.
    #[error("no answer within {0}")]
    Timeout(tug_core::Duration),
    /// The replica's port could not be reached, or the connection broke.
    #[error("{kind} {addr}: {source}")]
    Io {
        /// `tcp` or `http`.
        kind: &'static str,
        /// The address probed.
        addr: SocketAddr,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// Something answered on the port, but not with an HTTP status line.
    #[error("GET {path} on port {port}: not an HTTP answer ({line:?})")]
    NotHttp {
        /// The path asked for.
        path: String,
        /// The port.
        port: u16,
        /// The first line of the answer.
        line: String,
    },
    /// The HTTP answer's status is not 2xx or 3xx.
    #[error("GET {path} on port {port} answered {status}")]
    Status {
        /// The path asked for.
        path: String,
        /// The port.
        port: u16,
        /// The status.
        status: u16,
    },
    /// An exec check with an empty command.
    #[error("the exec check has no command; give the service's health check a command")]
    NoCommand,
    /// The exec check's program could not be started.
    #[error("cannot run the check {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exec check's command failed.
    #[error("the check command exited with {0}")]
    Exit(std::process::ExitStatus),
}

/// Runs one check against the replica at `addr`; `Err` says why it failed. An exec check gets
/// `env`, the replica's own environment (`TUG_SERVICE`, `TUG_REPLICA` and the service's `env`).
pub async fn probe(check: &HealthCheck, addr: IpAddr, env: &BTreeMap<String, String>) -> Result<(), ProbeError> {
    let timeout = check.timeout.as_std();
    match tokio::time::timeout(timeout, probe_once(check, addr, env)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    }
}

async fn probe_once(check: &HealthCheck, addr: IpAddr, env: &BTreeMap<String, String>) -> Result<(), ProbeError> {
    let port = check.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
    let target = SocketAddr::new(addr, port);
    match check.kind {
        HealthKind::Tcp => {
            TcpStream::connect(target).await.map_err(|source| ProbeError::Io { kind: "tcp", addr: target, source })?;
            Ok(())
        }
        HealthKind::Http => {
            let io = |source| ProbeError::Io { kind: "http", addr: target, source };
            let path = check.path.as_deref().unwrap_or("/");
            let mut s = TcpStream::connect(target).await.map_err(io)?;
            let req = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: tug-health\r\n\r\n");
            s.write_all(req.as_bytes()).await.map_err(io)?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                let got = s.read(&mut head[n..]).await.map_err(io)?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            let line = String::from_utf8_lossy(&head[..n]);
            let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| ProbeError::NotHttp {
                path: path.to_owned(),
                port,
                line: line.lines().next().unwrap_or_default().to_owned(),
            })?;
            if (200..400).contains(&status) { Ok(()) } else { Err(ProbeError::Status { path: path.to_owned(), port, status }) }
        }
        HealthKind::Exec => {
            let argv = check.command.as_ref().map(|c| c.argv()).unwrap_or_default();
            let (prog, args) = argv.split_first().ok_or(ProbeError::NoCommand)?;
            let status = tokio::process::Command::new(prog)
                .args(args)
                .envs(env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|source| ProbeError::Spawn { program: prog.clone(), source })?;
            if status.success() { Ok(()) } else { Err(ProbeError::Exit(status)) }
        }
    }
}

/// What the checks of one replica add up to (see the module's table).
#[derive(Debug)]
pub struct Verdicts {
    check: HealthCheck,
    started: Instant,
    /// The last state reported: `None` until the first verdict.
    healthy: Option<bool>,
    passes: u32,
    fails: u32,
}

impl Verdicts {
    /// Checks of a replica that started at `started`.
    pub fn new(check: HealthCheck, started: Instant) -> Verdicts {
        Verdicts { check, started, healthy: None, passes: 0, fails: 0 }
    }

    /// Time between checks.
    pub fn interval(&self) -> Duration {
        self.check.interval.as_std()
    }

    /// The check.
    pub fn check(&self) -> &HealthCheck {
        &self.check
    }

    /// The last state reported: `None` until the first verdict.
    pub fn current(&self) -> Option<bool> {
        self.healthy
    }

    /// Takes one check's result (`passed` or not) at `now`; returns the new state when it changed.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<bool> {
        match passed {
            true => {
                self.passes += 1;
                self.fails = 0;
                if self.healthy != Some(true) && self.passes >= self.check.healthy_threshold {
                    self.healthy = Some(true);
                    return Some(true);
                }
            }
            false => {
                self.passes = 0;
                if self.healthy.is_none() && now.duration_since(self.started) < self.check.grace_period.as_std() {
                    return None;
                }
                self.fails += 1;
                if self.healthy != Some(false) && self.fails >= self.check.unhealthy_threshold {
                    self.healthy = Some(false);
                    return Some(false);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use tug_core::Duration as D;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn check(grace: u64) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Tcp,
            path: None,
            port: Some(1),
            command: None,
            interval: D::from_secs(1),
            timeout: D::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            grace_period: D::from_secs(grace),
        }
    }

    #[test]
    fn thresholds_and_grace() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (ok, bad) = (true, false);
        let mut v = Verdicts::new(check(5), t0);
        // Failures in the grace period do not count; passes need two in a row.
        assert_eq!([v.record(bad, at(1)), v.record(bad, at(2)), v.record(bad, at(3))], [None, None, None]);
        assert_eq!([v.record(ok, at(4)), v.record(ok, at(5))], [None, Some(true)]);
        assert_eq!(v.record(ok, at(6)), None);
        // Three failures in a row, broken by a pass, then three again.
        assert_eq!([v.record(bad, at(7)), v.record(bad, at(8)), v.record(ok, at(9))], [None, None, None]);
        assert_eq!([v.record(bad, at(10)), v.record(bad, at(11)), v.record(bad, at(12))], [None, None, Some(false)]);
        assert_eq!(v.record(bad, at(13)), None);
        // A replica that never came up is unhealthy once the grace period is over.
        let mut v = Verdicts::new(check(0), t0);
        assert_eq!([v.record(bad, at(1)), v.record(bad, at(2)), v.record(bad, at(3))], [None, None, Some(false)]);
    }

    #[tokio::test]
    async fn probes_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                let code = if String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ") { "200 OK" } else { "503 Unavailable" };
                let _ = s.write_all(format!("HTTP/1.0 {code}\r\n\r\n").as_bytes()).await;
            }
        });
        let mut c = check(0);
        c.port = Some(i64::from(port));
        let text = |r: Result<(), ProbeError>| r.map_err(|e| e.to_string());
        assert_eq!(text(probe(&c, LOCAL, &BTreeMap::new()).await), Ok(()));
        c.kind = HealthKind::Http;
        c.path = Some("/ok".into());
        assert_eq!(text(probe(&c, LOCAL, &BTreeMap::new()).await), Ok(()));
        c.path = Some("/bad".into());
        assert_eq!(text(probe(&c, LOCAL, &BTreeMap::new()).await), Err(format!("GET /bad on port {port} answered 503")));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        c.port = Some(i64::from(closed));
        let e = probe(&c, LOCAL, &BTreeMap::new()).await.unwrap_err();
        assert!(e.to_string().starts_with(&format!("http 127.0.0.1:{closed}: ")), "{e}");
        assert!(matches!(&e, ProbeError::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused), "{e:?}");
        c.kind = HealthKind::Exec;
        c.command = Some(tug_core::job::Command::Shell("exit 3".into()));
        assert_eq!(text(probe(&c, LOCAL, &BTreeMap::new()).await), Err("the check command exited with exit status: 3".into()));
        c.command = Some(tug_core::job::Command::Shell("test \"$TUG_REPLICA\" = 4".into()));
        assert!(probe(&c, LOCAL, &BTreeMap::new()).await.is_err());
        assert_eq!(text(probe(&c, LOCAL, &BTreeMap::from([("TUG_REPLICA".to_string(), "4".to_string())])).await), Ok(()));
        c.command = Some(tug_core::job::Command::Argv(vec!["/nonexistent/check".into()]));
        let e = probe(&c, LOCAL, &BTreeMap::new()).await.unwrap_err();
        assert!(e.to_string().starts_with("cannot run the check \"/nonexistent/check\": "), "{e}");
        c.command = None;
        assert_eq!(text(probe(&c, LOCAL, &BTreeMap::new()).await), Err("the exec check has no command; give the service's health check a command".into()));
    }

    #[tokio::test]
    async fn a_slow_or_strange_answer_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                if String::from_utf8_lossy(&buf[..n]).starts_with("GET /garbage ") {
                    let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
                } else {
                    held.push(s);
                }
            }
        });
        let mut c = check(0);
        c.kind = HealthKind::Http;
        c.port = Some(i64::from(port));
        c.timeout = D::from_millis(200);
        c.path = Some("/garbage".into());
        let e = probe(&c, LOCAL, &BTreeMap::new()).await.unwrap_err();
        assert_eq!(e.to_string(), format!("GET /garbage on port {port}: not an HTTP answer (\"SSH-2.0-OpenSSH_9.2\")"));
        c.path = Some("/slow".into());
        let e = probe(&c, LOCAL, &BTreeMap::new()).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(_)), "{e:?}");
        assert_eq!(e.to_string(), "no answer within 200ms");
    }
}
