//! What the benchmarks share: percentiles, memory, event-stream subscribers and child processes. (A server's `/metrics` page is read with
//! `tug_server::prom`.)

/// The `p` quantile (0..=1) of sorted samples; 0 when there are none.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// This process's resident memory, in bytes (0 when /proc cannot say).
pub(super) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

use anyhow::Context;

/// Clients following a server's event stream, counting what they receive.
pub(super) struct Subscribers {
    /// Events received by all of them together.
    pub received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `lagged` notices received (a subscriber fell behind the buffer and missed events).
    pub lagged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscribers {
    /// `n` subscribers of `url` (an `/api/v1/events` URL with its filters).
    pub(super) fn start(http: &reqwest::Client, url: &str, n: usize) -> Subscribers {
        use futures::StreamExt;
        use std::sync::atomic::Ordering;
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lagged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (http, url, received, lagged) = (http.clone(), url.to_owned(), received.clone(), lagged.clone());
                tokio::spawn(async move {
                    let Ok(resp) = http.get(url).send().await else { return };
                    let mut body = resp.bytes_stream();
                    while let Some(Ok(chunk)) = body.next().await {
                        let n = chunk.windows(7).filter(|w| w == b"event: ").count();
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        let l = chunk.windows(14).filter(|w| w == b"event: lagged\n").count();
                        lagged.fetch_add(l as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Subscribers { received, lagged, tasks }
    }

    /// Events received so far, by all.
    pub(super) fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `lagged` notices so far.
    pub(super) fn lagged(&self) -> u64 {
        self.lagged.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Child processes, killed (and reaped) on drop, so an error or a panic leaves none behind.
pub(super) struct Children {
    procs: Vec<std::process::Child>,
    /// Each child's log name, by index.
    names: Vec<String>,
    logs: std::path::PathBuf,
}

impl Children {
    /// None yet; their logs go to `logs`.
    pub(super) fn new(logs: &std::path::Path) -> Children {
        Children { procs: Vec::new(), names: Vec::new(), logs: logs.to_path_buf() }
    }

    /// Kills child `i` (SIGKILL) and reaps it.
    pub(super) fn kill(&mut self, i: usize) {
        let _ = self.procs[i].kill();
        let _ = self.procs[i].wait();
    }

    /// Starts child `i` again with `args` (after [`Children::kill`]), its log appended to.
    pub(super) fn respawn(&mut self, i: usize, args: &[String], log: &str) -> anyhow::Result<()> {
        self.spawn(args, log)?;
        let new = self.procs.pop().expect("just spawned");
        self.procs[i] = new;
        self.names[i] = self.names.pop().expect("just spawned");
        Ok(())
    }

    /// Starts `tug args` with its output in `logs/<log>.log`.
    pub(super) fn spawn(&mut self, args: &[String], log: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the tug binary")?;
        let path = self.logs.join(format!("{log}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
        let child = std::process::Command::new(&exe)
            .args(args)
            .env_remove("TUG_JOIN_TOKEN")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        self.procs.push(child);
        self.names.push(log.to_string());
        Ok(())
    }

    /// CPU time (user + system, seconds) the children whose log name starts with `prefix` have
    /// used so far, from `/proc/<pid>/stat` (children that exited count 0).
    pub(super) fn cpu_seconds(&self, prefix: &str) -> f64 {
        self.procs
            .iter()
            .zip(&self.names)
            .filter(|(_, n)| n.starts_with(prefix))
            .map(|(c, _)| cpu_ticks(c.id()))
            .sum::<u64>() as f64
            / CLOCK_TICKS_PER_S
    }

    /// The last lines of a child's log, for error messages.
    pub(super) fn tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.logs.join(format!("{log}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // SIGKILL: everything they hold is in the benchmark's temporary directory.
        for c in &mut self.procs {
            let _ = c.kill();
        }
        for c in &mut self.procs {
            let _ = c.wait();
        }
    }
}


/// The unit of `/proc/<pid>/stat` times: `USER_HZ`, 100 on every Linux architecture's user ABI.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// utime + stime of a process, in clock ticks (0 when it cannot be read).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // "pid (comm) state ..."; comm may hold spaces, so count from the last ')'. Fields 14 and 15
    // (utime, stime) are the 12th and 13th after it.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    next() + next()
}
