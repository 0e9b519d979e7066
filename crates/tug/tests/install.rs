//! What installs `tug` like the tools operators already run: shell completions, and the systemd
//! units in deploy/systemd (checked by `systemd-analyze verify` where it exists).

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
