//! A real Chronos client library (`chronos-python` from PyPI) against `tug up`: it creates
//! scheduled and dependent jobs, lists, searches, updates, runs, kills and deletes them, under
//! both API prefixes. `scripts/test` installs the library.

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn chronos_python_client_works_against_tug_up() {
    let has_client = Command::new("python3").args(["-c", "import chronos"]).status().is_ok_and(|s| s.success());
    assert!(has_client, "the chronos-python library is missing: `pip install chronos-python` (scripts/test does this)");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut up = Command::new(env!("CARGO_BIN_EXE_tug"))
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/chronos-client/check.py");
    let out = ready.then(|| Command::new("python3").arg(script).arg(format!("127.0.0.1:{port}")).output().unwrap());
    let _ = up.kill();
    let _ = up.wait();
    let out = out.expect("tug up did not start listening");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chronos client checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("21 passed, 0 failed"), "{stdout}");
}
