//! Safe by default, through the CLI: a server on a non-loopback address needs credentials, the
//! first admin token comes from a file, tokens and roles work end to end, and the audit log shows
//! who changed what.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

mod common;
use common::Up;

const TUG: &str = env!("CARGO_BIN_EXE_tug");

fn tug(server: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(TUG);
    c.args(args).env("TUG_SERVER", server).env_remove("TUG_TOKEN");
    if let Some(t) = token {
        c.env("TUG_TOKEN", t);
    }
    c.output().expect("running tug")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_server_reachable_from_other_hosts_needs_credentials_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = tug("", None, &["server", "--listen", "0.0.0.0:0", "--agent-listen", "127.0.0.1:0", "--data-dir", data]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing to serve the API on 0.0.0.0:0 without credentials: it listens on a non-loopback address")
            && err.contains("--init-token")
            && err.contains("--insecure"),
        "{err}"
    );
    let out = tug("", None, &["server", "--listen", "127.0.0.1:0", "--agent-listen", "0.0.0.0:0", "--data-dir", data]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refusing to accept agents on 0.0.0.0:0 without a join token") && err.contains("--join-token-file"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = tug("http://127.0.0.1:9", None, &["agent", "run", "--join-token-file", empty.to_str().unwrap()]);
    assert!(stderr(&out).contains("is empty; put the secret in it"), "{}", stderr(&out));
    let out = tug("", None, &["up", "--rate-limit=-1", "--data-dir", data]);
    assert!(stderr(&out).contains("invalid --rate-limit -1"), "{}", stderr(&out));
    let out = tug("", None, &["up", "--chronos-credentials", "nopassword", "--data-dir", data]);
    assert!(stderr(&out).contains("expected USER:PASSWORD"), "{}", stderr(&out));
}

#[test]
fn tokens_from_an_init_file_roles_and_the_audit_log_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    let up = Up::start_with(&["--init-token-file", file.to_str().unwrap()]);
    let s = up.server.clone();
    for _ in 0..100 {
        if file.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let admin = std::fs::read_to_string(&file).unwrap().trim().to_owned();

    let out = tug(&s, None, &["job", "list"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("this server needs a token") && err.contains("(HTTP 401)") && err.contains("set TUG_TOKEN"), "{err}");

    let out = tug(&s, Some(&admin), &["job", "add", "hi", "--schedule", "@yearly", "--", "echo hi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tug(&s, Some(&admin), &["token", "create", "--role", "read", "--name", "viewer"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(stderr(&out).contains("shown once"), "{}", stderr(&out));

    assert!(tug(&s, Some(&read), &["job", "show", "hi"]).status.success());
    let out = tug(&s, Some(&read), &["job", "delete", "hi"]);
    assert!(stderr(&out).contains("needs a token with role admin or above; this one has role read (HTTP 403)"), "{}", stderr(&out));
    let out = tug(&s, Some(&read), &["job", "run", "hi"]);
    assert!(stderr(&out).contains("needs a token with role operate"), "{}", stderr(&out));

    let list = tug(&s, Some(&admin), &["token", "list"]);
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(text.contains("viewer") && text.contains("read") && !text.contains(&read[17..]), "{text}");
    let read_id = &read[4..16];
    assert!(tug(&s, Some(&admin), &["token", "revoke", read_id]).status.success());
    let out = tug(&s, Some(&read), &["job", "show", "hi"]);
    assert!(stderr(&out).contains("was revoked"), "{}", stderr(&out));

    let out = tug(&s, Some(&admin), &["audit", "--job", "hi", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen: Vec<(String, u64)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["method"].as_str().unwrap().to_owned() + " " + e["path"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST /api/v1/jobs".to_owned(), 201),
            ("DELETE /api/v1/jobs/hi".to_owned(), 403),
            ("POST /api/v1/jobs/hi/run".to_owned(), 403)
        ]
    );
    let out = tug(&s, Some(&read), &["audit"]);
    assert!(!out.status.success());
}

/// `tug up --init-token` on the given data dir until it says it is up; SIGTERM, and its stdout
/// and stderr.
fn up_with_init_token(data: &std::path::Path, then: impl FnOnce(&str)) -> (String, String) {
    use std::io::Read;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(TUG)
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--init-token", "--data-dir"])
        .arg(data)
        .env_remove("TUG_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let reader = {
        let err = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let up = (0..400).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        err.lock().unwrap().contains("Tugboat is up")
    });
    if up {
        then(&format!("http://127.0.0.1:{port}"));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let err = err.lock().unwrap().clone();
    assert!(up, "tug up did not come up: {err}");
    (out, err)
}

#[test]
fn init_token_is_printed_once_and_the_cli_takes_tokens_by_flag_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (first, err) = up_with_init_token(dir.path(), |s| {
        // Needed once a token exists, even on loopback.
        assert!(stderr(&tug(s, None, &["job", "list"])).contains("(HTTP 401)"));
    });
    let admin = first.trim().to_owned();
    assert!(admin.starts_with("tug_") && !admin.contains('\n'), "stdout: {first:?}, stderr: {err}");
    assert!(err.contains("it is shown once"), "{err}");

    let (second, err) = up_with_init_token(dir.path(), |s| {
        // --token works as TUG_TOKEN does, and wins over it.
        let out = tug(s, None, &["job", "add", "hi", "--token", &admin, "--schedule", "@yearly", "--", "true"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = tug(s, Some("tug_000000000000_nope"), &["job", "show", "hi", "--token", &admin]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = tug(s, Some("tug_000000000000_nope"), &["job", "show", "hi"]);
        assert!(stderr(&out).contains("(HTTP 401)"), "{}", stderr(&out));
        // Before the command's name too, as `--server` is taken; one after the name wins.
        let out = tug(s, Some("tug_000000000000_nope"), &["--token", &admin, "job", "show", "hi"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = tug(s, None, &["--token", &admin, "job", "show", "hi", "--token", "tug_000000000000_nope"]);
        assert!(stderr(&out).contains("(HTTP 401)"), "{}", stderr(&out));

        let out = tug(s, Some(&admin), &["token", "create", "--role", "operate", "--scope", "label:team=data", "--ttl", "1h", "--name", "data"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let data = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(stderr(&out).contains("(operate, scope label:team=data): shown once"), "{}", stderr(&out));
        let out = tug(s, Some(&admin), &["token", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = list.as_array().unwrap().iter().find(|t| t["name"] == "data").expect("the scoped token is listed");
        let at = |k: &str| t[k].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
        assert_eq!(at("expires_at").duration_since(at("created_at")), jiff::SignedDuration::from_hours(1), "{t}");
        let table = String::from_utf8(tug(s, Some(&admin), &["token", "list"]).stdout).unwrap();
        assert!(table.lines().any(|l| l.contains("data") && l.contains("operate") && l.contains("label:team=data")), "{table}");
        // The scoped token does not see a job without the label.
        let out = tug(s, None, &["job", "show", "hi", "--token", &data]);
        assert!(!out.status.success() && stderr(&out).contains("(HTTP 404)"), "{}", stderr(&out));
    });
    assert_eq!(second, "", "a second start prints no new token");
    assert!(err.contains("from an earlier start still works, so no new one is made"), "{err}");
}

#[test]
fn an_agents_data_dir_is_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // No server answers there: the agent keeps trying, its data dir already set up.
    let mut child = Command::new(TUG)
        .args(["agent", "run", "--server", "http://127.0.0.1:9", "--name", "modes", "--data-dir"])
        .arg(&data)
        .env_remove("TUG_JOIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mode = || std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    let private = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        mode() == 0o700
    });
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(private, "the agent's data dir is mode {:o} (exited: {exited:?})", mode());
}
