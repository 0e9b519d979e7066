//! What installs `tug` like the tools operators already run: shell completions, the systemd
//! units in deploy/systemd (checked by `systemd-analyze verify` where it exists), and the
//! container image of deploy/docker (built and run where Docker is up).

use std::path::PathBuf;
use std::process::Command;

const TUG: &str = env!("CARGO_BIN_EXE_tug");

fn units() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let mut u: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "service")).collect();
    u.sort();
    u
}

#[test]
fn completions_for_each_shell() {
    for (shell, needle) in [("bash", "_tug()"), ("zsh", "#compdef tug"), ("fish", "complete -c tug")] {
        let out = Command::new(TUG).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(needle) && script.contains("events"), "{shell}: {script:.300}");
    }
    let out = Command::new(TUG).args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: bash, elvish, fish, powershell, zsh]"));
}

#[test]
fn systemd_units_name_real_flags_and_verify() {
    let units = units();
    assert_eq!(units.len(), 2, "{units:?}");
    let dir = tempfile::tempdir().unwrap();
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart");
        // The command line parses: clap refuses an unknown flag before it gets to --help.
        let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
        let out = Command::new(TUG).args(&args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{exec}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("Restart="), "{}: a restart policy", unit.display());
        let local = dir.path().join(unit.file_name().unwrap());
        std::fs::write(&local, text.replace("/usr/local/bin/tug", TUG)).unwrap();
    }
    let server = std::fs::read_to_string(&units[1]).unwrap();
    for hardening in ["User=tug", "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=tug"] {
        assert!(server.contains(hardening), "tug-server.service lacks {hardening}");
    }
    let agent = std::fs::read_to_string(&units[0]).unwrap();
    assert!(agent.contains("KillMode=process"), "an agent restart must leave its runs going");
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("\n!!!!!!!! SKIPPED systemd-analyze verify: not installed !!!!!!!!\n");
        return;
    };
    let locals: Vec<PathBuf> = units.iter().map(|u| dir.path().join(u.file_name().unwrap())).collect();
    let out = Command::new(analyze).arg("verify").args(&locals).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn the_container_image_builds_from_the_binary_and_serves_the_api() {
    if !Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        eprintln!("\n!!!!!!!! SKIPPED the container image: Docker is not up !!!!!!!!\n");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ctx = tempfile::tempdir().unwrap();
    let tag = format!("tug-test-image:{}", std::process::id());
    // This test's tug (dynamic: the script brings its libraries) instead of a static release build.
    let out = Command::new(root.join("scripts/image")).args(["--binary", TUG, &tag]).env("TUG_IMAGE_CONTEXT", ctx.path()).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scripts/image: {printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains(&format!("tug {}", env!("CARGO_PKG_VERSION"))), "tug --version in the image: {printed}");
    struct Cleanup(String, Option<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(c) = &self.1 {
                let _ = Command::new("docker").args(["rm", "-f", c]).output();
            }
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let mut cleanup = Cleanup(tag.clone(), None);

    // Its default command: a server on all addresses, so with a first admin token in the volume.
    let out = Command::new("docker").args(["run", "-d", "-p", "127.0.0.1::4400", &tag]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    cleanup.1 = Some(id.clone());
    let port = String::from_utf8(Command::new("docker").args(["port", &id, "4400"]).output().unwrap().stdout).unwrap();
    let addr = port.lines().next().unwrap_or_else(|| panic!("no published port: {port:?}")).trim().to_owned();
    tug_tls::provider();
    let http = reqwest::blocking::Client::new();
    let api = format!("http://{addr}/api/v1");
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{api}/healthz")).send().is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logs = || String::from_utf8_lossy(&Command::new("docker").args(["logs", &id]).output().unwrap().stderr).into_owned();
    assert!(up, "the server in the image never answered: {}", logs());
    assert_eq!(http.get(format!("{api}/jobs")).send().unwrap().status(), 401, "a server on all addresses needs a token");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("docker").args(["cp", &format!("{id}:/var/lib/tug/admin.token"), dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let r = http.get(format!("{api}/jobs")).bearer_auth(token.trim()).send().unwrap();
    assert_eq!(r.status(), 200, "{}", logs());
    let user = Command::new("docker").args(["inspect", "-f", "{{.Config.User}}", &id]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532", "not root in the container");
}
