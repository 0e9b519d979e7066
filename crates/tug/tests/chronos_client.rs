//! A real Chronos client library (`chronos-python` from PyPI) against `tug up`: it creates
//! scheduled and dependent jobs, lists, searches, updates, runs, kills and deletes them, under
//! both API prefixes. `scripts/test` installs the library.

use std::process::Command;

mod common;
use common::Up;

#[test]
fn chronos_python_client_works_against_tug_up() {
    let has_client = Command::new("python3").args(["-c", "import chronos"]).status().is_ok_and(|s| s.success());
    assert!(has_client, "the chronos-python library is missing: `pip install chronos-python` (scripts/test does this)");
    let up = Up::start();
    let port = up.port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/chronos-client/check.py");
    let out = Command::new("python3").arg(script).arg(format!("127.0.0.1:{port}")).output().unwrap();
    drop(up);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chronos client checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("21 passed, 0 failed"), "{stdout}");
}

#[test]
fn chronos_python_client_with_basic_auth() {
    let up = Up::start_with(&["--chronos-credentials", "ops:s3cret"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/chronos-client/check.py");
    let out = Command::new("python3").arg(script).arg(format!("127.0.0.1:{}", up.port())).arg("ops:s3cret").output().unwrap();
    drop(up);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chronos client checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("23 passed, 0 failed"), "{stdout}");
}
