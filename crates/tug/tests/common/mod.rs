//! `tug up` as a child process on a free port, for the CLI's integration tests.

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
    #[allow(clippy::zombie_processes)] // waited for in Drop
    pub fn start() -> Up {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(TUG)
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Up { child, server, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tug up did not start listening");
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
