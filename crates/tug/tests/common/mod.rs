//! What the integration tests share: `tug up` as a child process (the CLI's tests), and servers in
//! the test process (see `server`).

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

const TUG: &str = env!("CARGO_BIN_EXE_tug");

/// Starts `tug up` on a free port; kills it on drop.
pub struct Up {
    child: std::process::Child,
    /// The server's URL.
    pub server: String,
    _dir: tempfile::TempDir,
}

impl Up {
    /// Starts it and waits until it listens.
    pub fn start() -> Up {
        Up::start_with(&[])
    }

    /// Starts it with more flags.
    pub fn start_with(args: &[&str]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = spawn_with(dir.path(), port, args);
        Up { child, server: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    /// Kills it with SIGKILL (no shutdown at all) and starts it again on the same port and data.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn(self._dir.path(), self.port());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..200 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tug up did not exit after SIGTERM");
    }
}

/// Starts `tug up` and waits until it listens.
fn spawn(dir: &std::path::Path, port: u16) -> std::process::Child {
    spawn_with(dir, port, &[])
}

fn spawn_with(dir: &std::path::Path, port: u16, args: &[&str]) -> std::process::Child {
    #[allow(clippy::zombie_processes)] // waited for by `Up`
    let child = Command::new(TUG)
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("tug up did not start listening");
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}


impl Up {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server.rsplit(':').next().and_then(|p| p.parse().ok()).expect("server URL has a port")
    }
}

mod server;
#[allow(unused_imports)]
pub use server::*;

/// Runs `tug ARGS` against `server`.
pub fn tug(server: &str, args: &[&str]) -> std::process::Output {
    Command::new(TUG).args(args).env("TUG_SERVER", server).output().expect("running tug")
}

/// Runs `tug ARGS`, which must succeed; its stdout.
pub fn ok(server: &str, args: &[&str]) -> String {
    let out = tug(server, args);
    assert!(out.status.success(), "tug {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `tug ARGS`, which must fail; its stderr.
pub fn fails(server: &str, args: &[&str]) -> String {
    let out = tug(server, args);
    assert!(!out.status.success(), "tug {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// The docker test image, when the docker tests can run here (Docker, the image and `TUG_DWAIT`,
/// which scripts/test provides); otherwise says they are skipped.
pub fn docker_test_image() -> Option<String> {
    let image = std::env::var("TUG_TEST_IMAGE").unwrap_or_else(|_| "tugboat-test-busybox:1".into());
    let present = Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    if !present || std::env::var_os("TUG_DWAIT").is_none() {
        eprintln!("\n!!!!!!!! SKIPPED: no Docker, no test image {image} or no TUG_DWAIT (scripts/test provides them) !!!!!!!!\n");
        return None;
    }
    Some(image)
}

/// Adds docker service `name` (`sleep 1000` in `image`, 1 s stop grace, never pulled) with
/// `replicas` replicas through `tug service add -f`.
pub fn add_docker_service(server: &str, name: &str, replicas: u32, image: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    let spec = format!(
        "name = \"{name}\"\nreplicas = {replicas}\ncommand = \"sleep 1000\"\nruntime = \"docker\"\nstop_grace = \"1s\"\n\
         [docker]\nimage = \"{image}\"\npull = \"never\"\n"
    );
    std::fs::write(&file, spec).unwrap();
    ok(server, &["service", "add", "-f", file.to_str().unwrap()]);
}

/// `docker ps -aq` of one service replica's containers.
pub fn replica_containers(service: &str, index: u32) -> Vec<String> {
    let filter = format!("label=tugboat.job=service/{service}/{index}");
    let out = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}
