//! Test helpers (feature `testing`): a small tmpfs to fill up, so tests can meet a real full disk,
//! and real etcd clusters for the etcd store and the server group.

use std::path::Path;
use std::process::Command;

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop. Needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `1m`, `512k`); `None`, after saying
    /// so on stderr, when this process may not mount (not root).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("########## SKIPPED: a full-disk test needs root to mount a small tmpfs ##########");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(out.status.success(), "mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr));
        Some(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a file named `name` until no space is left.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(name)).expect("creating the filler file");
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        // A partial last block may still fit.
        while f.write_all(&block[..1]).is_ok() {}
        let _ = f.sync_data();
    }

    /// Deletes the filler file `name`, making room again.
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.path().join(name)).expect("removing the filler file");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a store of the test may still hold files open while it shuts down.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A real etcd cluster of 1 or 3 members on free loopback ports, each in a temporary directory;
/// killed on drop (and, through `setpriv --pdeathsig`, when the test process dies). Needs the
/// `etcd` binary (Debian `etcd-server`; `scripts/test` installs it).
///
/// Members are spawned from the calling thread, which must outlive the cluster (the parent-death
/// signal follows the thread): call it from the test's own thread, not `spawn_blocking`.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<EtcdMember>,
    max_txn_ops: usize,
    /// The address clients reach the members at.
    host: String,
}

struct EtcdMember {
    name: String,
    client: u16,
    peer: u16,
    child: Option<std::process::Child>,
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

impl EtcdCluster {
    /// Starts `members` members (1 or 3) on loopback and waits until they are healthy.
    pub fn start(members: usize) -> EtcdCluster {
        EtcdCluster::start_on(members, "127.0.0.1")
    }

    /// Starts `members` members (1 or 3) whose clients reach them at `host` (an address of this
    /// machine, e.g. a test bridge's, so that network namespaces reach them too); the members
    /// talk among themselves on loopback.
    pub fn start_on(members: usize, host: &str) -> EtcdCluster {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()),
            "the etcd binary is missing: install Debian's etcd-server (scripts/test does)"
        );
        // A port found free can be taken by another test before etcd binds it: start again on
        // other ports then.
        for attempt in 1.. {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let token = format!("tug-test-{}-{}", std::process::id(), free_port());
            let members = (0..members)
                .map(|i| EtcdMember { name: format!("m{i}"), client: free_port(), peer: free_port(), child: None })
                .collect();
            let mut cluster = EtcdCluster { dir, token, members, max_txn_ops: 4096, host: host.to_owned() };
            for i in 0..cluster.members.len() {
                cluster.spawn(i, true);
            }
            let failed = (0..cluster.members.len()).find_map(|i| cluster.healthy_within_30s(i).err());
            match failed {
                None => return cluster,
                Some(log) if attempt < 3 && log.contains("address already in use") => continue,
                Some(log) => panic!("{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn(&mut self, i: usize, new: bool) {
        let initial: Vec<String> = self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("the member's log file");
        let client = format!("http://{}:{}", self.host, m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "etcd"])
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", if new { "new" } else { "existing" }])
            .args(["--max-txn-ops", &self.max_txn_ops.to_string(), "--max-request-bytes", "10485760"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.members[i].child = Some(child);
    }

    /// Waits until member `i` answers `/health` with `true`.
    fn wait_healthy(&mut self, i: usize) {
        if let Err(e) = self.healthy_within_30s(i) {
            panic!("{e}");
        }
    }

    /// Waits until member `i` answers `/health` with `true`; else says so with its log.
    fn healthy_within_30s(&mut self, i: usize) -> Result<(), String> {
        // 30 s in steps of 50 ms; a member that exited is not waited for.
        for _ in 0..600 {
            if self.healthy(i) {
                return Ok(());
            }
            if let Some(child) = self.members[i].child.as_mut()
                && child.try_wait().is_ok_and(|s| s.is_some())
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name))).unwrap_or_default();
        Err(format!("etcd member {} did not become healthy in 30 s; its log:\n{log}", self.members[i].name))
    }

    /// Whether member `i` says it is healthy (it has a leader and answers).
    pub fn healthy(&self, i: usize) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect((self.host.as_str(), self.members[i].client)) else { return false };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Which member is the raft leader now, as a live member reports it (through etcd's JSON
    /// gateway, `/v3/maintenance/status`).
    pub fn leader(&self) -> Option<usize> {
        use std::io::{Read, Write};
        let status = |i: usize| -> Option<serde_json::Value> {
            let mut s = std::net::TcpStream::connect((self.host.as_str(), self.members[i].client)).ok()?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
            let req = "POST /v3/maintenance/status HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            s.write_all(req.as_bytes()).ok()?;
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()
        };
        for i in (0..self.members.len()).filter(|&i| self.members[i].child.is_some()) {
            let Some(st) = status(i) else { continue };
            let leader = st["leader"].as_str()?.to_owned();
            // The leader's own status names itself.
            for j in (0..self.members.len()).filter(|&j| self.members[j].child.is_some()) {
                if status(j).is_some_and(|o| o["header"]["member_id"].as_str() == Some(leader.as_str())) {
                    return Some(j);
                }
            }
        }
        None
    }

    /// `HOST:PORT` of each member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("{}:{}", self.host, m.client)).collect()
    }

    /// A store URL for `--store`, with keys under `/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}?max-txn-ops={}", self.endpoints().join(","), self.max_txn_ops)
    }

    /// The same as [`EtcdCluster::url`], parsed.
    pub fn config(&self, prefix: &str) -> crate::etcd::EtcdConfig {
        crate::etcd::EtcdConfig::parse(&self.url(prefix)).expect("the test cluster's URL parses")
    }

    /// Kills member `i` (SIGKILL) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory, after [`EtcdCluster::kill`].
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, false);
        self.wait_healthy(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
