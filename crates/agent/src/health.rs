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
use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tug_core::service::{HealthCheck, HealthKind};

/// Runs one check against the replica at `addr`; `Err` says why it failed. An exec check gets
/// `env`, the replica's own environment (`TUG_SERVICE`, `TUG_REPLICA` and the service's `env`).
pub async fn probe(check: &HealthCheck, addr: IpAddr, env: &BTreeMap<String, String>) -> Result<(), String> {
    let timeout = check.timeout.as_std();
    match tokio::time::timeout(timeout, probe_once(check, addr, env)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", check.timeout)),
    }
}

async fn probe_once(check: &HealthCheck, addr: IpAddr, env: &BTreeMap<String, String>) -> Result<(), String> {
    let port = check.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
    match check.kind {
        HealthKind::Tcp => {
            TcpStream::connect((addr, port)).await.map_err(|e| format!("tcp {addr}:{port}: {e}"))?;
            Ok(())
        }
        HealthKind::Http => {
            let path = check.path.as_deref().unwrap_or("/");
            let mut s = TcpStream::connect((addr, port)).await.map_err(|e| format!("http {addr}:{port}: {e}"))?;
            let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}:{port}\r\nUser-Agent: tug-health\r\n\r\n");
            s.write_all(req.as_bytes()).await.map_err(|e| format!("http {addr}:{port}: {e}"))?;
            let mut head = vec![0u8; 64];
            let mut n = 0;
            while n < 12 {
                let got = s.read(&mut head[n..]).await.map_err(|e| format!("http {addr}:{port}: {e}"))?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            let line = String::from_utf8_lossy(&head[..n]);
            let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
                format!("GET {path} on port {port}: not an HTTP answer ({:?})", line.lines().next().unwrap_or_default())
            })?;
            if (200..400).contains(&status) { Ok(()) } else { Err(format!("GET {path} on port {port} answered {status}")) }
        }
        HealthKind::Exec => {
            let argv = check.command.as_ref().map(|c| c.argv()).unwrap_or_default();
            let (prog, args) = argv.split_first().ok_or("no command")?;
            let status = tokio::process::Command::new(prog)
                .args(args)
                .envs(env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("cannot run the check {prog:?}: {e}"))?;
            if status.success() { Ok(()) } else { Err(format!("the check command exited with {status}")) }
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

    /// Takes one result at `now`; returns the new state when it changed.
    pub fn record(&mut self, result: &Result<(), String>, now: Instant) -> Option<bool> {
        match result {
            Ok(()) => {
                self.passes += 1;
                self.fails = 0;
                if self.healthy != Some(true) && self.passes >= self.check.healthy_threshold {
                    self.healthy = Some(true);
                    return Some(true);
                }
            }
            Err(_) => {
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
        let (ok, bad) = (Ok(()), Err("refused".to_string()));
        let mut v = Verdicts::new(check(5), t0);
        // Failures in the grace period do not count; passes need two in a row.
        assert_eq!([v.record(&bad, at(1)), v.record(&bad, at(2)), v.record(&bad, at(3))], [None, None, None]);
        assert_eq!([v.record(&ok, at(4)), v.record(&ok, at(5))], [None, Some(true)]);
        assert_eq!(v.record(&ok, at(6)), None);
        // Three failures in a row, broken by a pass, then three again.
        assert_eq!([v.record(&bad, at(7)), v.record(&bad, at(8)), v.record(&ok, at(9))], [None, None, None]);
        assert_eq!([v.record(&bad, at(10)), v.record(&bad, at(11)), v.record(&bad, at(12))], [None, None, Some(false)]);
        assert_eq!(v.record(&bad, at(13)), None);
        // A replica that never came up is unhealthy once the grace period is over.
        let mut v = Verdicts::new(check(0), t0);
        assert_eq!([v.record(&bad, at(1)), v.record(&bad, at(2)), v.record(&bad, at(3))], [None, None, Some(false)]);
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
        assert_eq!(probe(&c, LOCAL, &BTreeMap::new()).await, Ok(()));
        c.kind = HealthKind::Http;
        c.path = Some("/ok".into());
        assert_eq!(probe(&c, LOCAL, &BTreeMap::new()).await, Ok(()));
        c.path = Some("/bad".into());
        assert_eq!(probe(&c, LOCAL, &BTreeMap::new()).await, Err(format!("GET /bad on port {port} answered 503")));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        c.port = Some(i64::from(closed));
        assert!(probe(&c, LOCAL, &BTreeMap::new()).await.unwrap_err().starts_with(&format!("http 127.0.0.1:{closed}:")));
        c.kind = HealthKind::Exec;
        c.command = Some(tug_core::job::Command::Shell("exit 3".into()));
        assert_eq!(probe(&c, LOCAL, &BTreeMap::new()).await, Err("the check command exited with exit status: 3".into()));
        c.command = Some(tug_core::job::Command::Shell("test \"$TUG_REPLICA\" = 4".into()));
        assert!(probe(&c, LOCAL, &BTreeMap::new()).await.is_err());
        assert_eq!(probe(&c, LOCAL, &BTreeMap::from([("TUG_REPLICA".to_string(), "4".to_string())])).await, Ok(()));
    }
}
