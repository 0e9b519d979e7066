//! The CLI against a real server: `tug up` as a process, and the job/runs/logs commands.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{Up, fails, ok};

const TUG: &str = env!("CARGO_BIN_EXE_tug");

fn json(server: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ok(server, args)).expect("--json prints JSON")
}

fn wait_for_success(server: &str, job: &str) -> Value {
    for _ in 0..100 {
        let runs = json(server, &["runs", job, "--json"]);
        if let Some(r) = runs.as_array().unwrap().iter().find(|r| r["state"] == "succeeded") {
            return r.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no successful run of {job}");
}

#[test]
fn job_lifecycle_through_the_cli() {
    let up = Up::start();
    let s = up.server.clone();
    let out = ok(&s, &["job", "add", "hello", "--schedule", "@yearly", "--", "echo", "hello", "cli"]);
    assert!(out.starts_with("added hello"), "{out}");
    let list = json(&s, &["job", "list", "--json"]);
    assert_eq!(list[0]["spec"]["name"], "hello");
    assert_eq!(list[0]["spec"]["command"], serde_json::json!(["echo", "hello", "cli"]));
    let table = ok(&s, &["job", "list"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(table.contains("hello"));

    let run = json(&s, &["job", "run", "hello", "--json"]);
    let id = run["id"].as_u64().unwrap();
    let done = wait_for_success(&s, "hello");
    assert_eq!(done["id"].as_u64(), Some(id));
    assert_eq!(ok(&s, &["logs", &id.to_string()]), "hello cli\n");
    assert_eq!(ok(&s, &["logs", &id.to_string(), "-f"]), "hello cli\n");
    let shown = json(&s, &["run", "show", &id.to_string(), "--json"]);
    assert_eq!(shown["exit_code"], 0);

    let paused = json(&s, &["job", "pause", "hello", "--json"]);
    assert_eq!(paused["spec"]["paused"], true);
    let resumed = json(&s, &["job", "resume", "hello", "--json"]);
    assert_eq!(resumed["spec"]["paused"], false);
    assert!(ok(&s, &["job", "show", "hello"]).contains("recent runs:"));
    ok(&s, &["job", "delete", "hello"]);
    let err = fails(&s, &["job", "show", "hello"]);
    assert!(err.contains("job \"hello\" not found") && err.contains("404"), "{err}");
    assert!(up.terminate().success(), "tug up exits 0 on SIGTERM");
}

#[test]
fn job_files_and_their_errors() {
    let up = Up::start();
    let s = up.server.clone();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("nightly.toml");
    std::fs::write(&good, "name = \"nightly\"\nschedule = \"0 30 2 * * *\"\ntz = \"Europe/Berlin\"\ncommand = \"echo night\"\nretries = 2\n").unwrap();
    let out = ok(&s, &["job", "add", "-f", good.to_str().unwrap()]);
    assert!(out.starts_with("added nightly (next fire: "), "{out}");
    let bad = dir.path().join("typo.toml");
    std::fs::write(&bad, "name = \"typo\"\nschedul = \"* * * * *\"\ncommand = \"x\"\n").unwrap();
    let err = fails(&s, &["job", "add", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("unknown field `schedul`") && err.contains("typo.toml"), "{err}");
    let err = fails(&s, &["job", "add", "x", "--schedule", "* * * *", "--", "true"]);
    assert!(err.contains("invalid schedule") && err.contains("422"), "{err}");
    let err = fails(&s, &["job", "add", "x", "--schedule", "@daily"]);
    assert!(err.contains("no command"), "{err}");
}

#[test]
fn resources_and_constraints_from_flags() {
    let up = Up::start();
    let s = up.server.clone();
    let flags = ["--schedule", "@yearly", "--cpus", "2", "--mem", "512MiB", "--constraint", "rack:EQUALS:r1", "--constraint", "hostname:UNIQUE"];
    ok(&s, &[&["job", "add", "etl"][..], &flags, &["--", "true"]].concat());
    let out = ok(&s, &["job", "show", "etl"]);
    assert!(out.contains("rack:EQUALS:r1, hostname:UNIQUE"), "{out}");
    assert!(out.contains("cpus=2") && out.contains("mem=512MiB"), "{out}");
    let err = fails(&s, &["job", "add", "bad", "--schedule", "@yearly", "--constraint", "rack:EQUALS", "--", "true"]);
    assert!(err.contains("EQUALS needs a value"), "{err}");
    let err = fails(&s, &["job", "add", "bad", "--schedule", "@yearly", "--constraint", "rack:NEAR:r1", "--", "true"]);
    assert!(err.contains("unknown operator \"NEAR\""), "{err}");
}

#[test]
fn schedule_next_is_local_and_prints_json() {
    // Vixie day matching: the 1st of the month OR a Monday (2026-06-01 is both).
    let v = json("http://127.0.0.1:9", &["schedule", "next", "0 0 1 * MON", "--after", "2026-05-31T12:00:00Z", "--count", "3", "--json"]);
    assert_eq!(v["fires"], serde_json::json!(["2026-06-01T00:00:00+00:00", "2026-06-08T00:00:00+00:00", "2026-06-15T00:00:00+00:00"]));
    let err = fails("http://127.0.0.1:9", &["schedule", "next", "* * 32 * *"]);
    assert!(err.contains("32"), "{err}");
}

#[test]
fn unreachable_server_says_how_to_fix_it() {
    let err = fails("http://127.0.0.1:9", &["job", "list"]);
    assert!(err.contains("cannot reach the Tugboat server") && err.contains("tug up"), "{err}");
}

#[test]
fn agents_can_be_listed_and_drained_and_a_waiting_run_says_why() {
    let up = Up::start();
    let s = up.server.clone();
    let agents = json(&s, &["agent", "list", "--json"]);
    assert_eq!(agents[0]["name"], "local");
    assert_eq!(agents[0]["state"], "up");
    assert!(ok(&s, &["agent", "list"]).contains("local"));
    ok(&s, &["agent", "drain", "local"]);
    assert_eq!(json(&s, &["agent", "show", "local", "--json"])["state"], "draining");
    ok(&s, &["job", "add", "waits", "--schedule", "@yearly", "--", "echo", "ran"]);
    let run = json(&s, &["job", "run", "waits", "--json"]);
    assert_eq!(run["state"], "pending");
    let shown = ok(&s, &["job", "show", "waits"]);
    assert!(shown.contains("waiting for an agent: all 1 agents are down or draining"), "{shown}");
    ok(&s, &["agent", "undrain", "local"]);
    wait_for_success(&s, "waits");
    let err = fails(&s, &["agent", "drain", "ghost"]);
    assert!(err.contains("agent \"ghost\" not found"), "{err}");
}

#[test]
fn up_reads_a_config_file_and_names_its_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tug.toml");
    std::fs::write(&bad, "keep_runs = 5\nlisten_on = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(TUG).args(["up", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid config file") && err.contains("unknown field `listen_on`"), "{err}");
    let out = Command::new(TUG).args(["up", "--webhook", "ftp://example.invalid/hook", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ftp://example.invalid/hook") && err.contains("http:// or https://"),
        "a global webhook of another scheme is refused at start: {err}"
    );
}

#[test]
fn an_agent_refuses_a_server_address_that_is_not_a_url() {
    for bad in ["10.0.0.1:4401", "ftp://10.0.0.1:4401"] {
        let err = fails("http://127.0.0.1:9", &["agent", "run", "--name", "x", "--server", bad]);
        assert!(err.contains("invalid --server") && err.contains("e.g. --server http://10.0.0.1:4401"), "{err}");
    }
    let err = fails("http://127.0.0.1:9", &["agent", "run", "--name", "x", "--server", "http://10.0.0.1:4401", "--ca", "ca.pem"]);
    assert!(err.contains("--ca and --cert are for TLS: give the server as https://10.0.0.1:4401"), "{err}");
}

#[test]
fn a_run_outlives_a_kill_9_of_tug_up_and_is_recorded_once() {
    let mut up = Up::start();
    let s = up.server.clone();
    ok(&s, &["job", "add", "steady", "--schedule", "@yearly", "--", "echo before; sleep 3; echo after"]);
    let id = json(&s, &["job", "run", "steady", "--json"])["id"].as_u64().unwrap().to_string();
    for _ in 0..100 {
        if json(&s, &["run", "show", &id, "--json"])["state"] == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    up.kill9_and_restart();
    // The restarted agent re-attaches the run; the restarted scheduler carries on with it.
    let done = wait_for_success(&s, "steady");
    assert_eq!(done["id"].as_u64().unwrap().to_string(), id);
    assert_eq!(done["attempt"], 1, "not retried: {done}");
    assert_eq!(json(&s, &["runs", "steady", "--json"]).as_array().unwrap().len(), 1);
    assert_eq!(ok(&s, &["logs", &id]), "before\nafter\n", "one log, written across the restart");
}

#[test]
fn server_and_agent_durations_are_checked() {
    let err = fails("http://127.0.0.1:9", &["server", "--agent-timeout", "0s"]);
    assert!(err.contains("--agent-timeout") && err.contains("must be more than zero"), "{err}");
    let err = fails("http://127.0.0.1:9", &["server", "--agent-timeout", "soon"]);
    assert!(err.contains("invalid duration \"soon\"") && err.contains("e.g. 10s"), "{err}");
    let err = fails("http://127.0.0.1:4401", &["agent", "run", "--log-retention", "a week"]);
    assert!(err.contains("--log-retention") && err.contains("e.g. 7d or 12h"), "{err}");
}

fn tug_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(TUG);
    c.args(args).env_remove("TUG_SERVER").env_remove("TUG_AGENT_SERVER");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running tug")
}

#[test]
fn a_job_is_changed_from_a_file_or_an_editor_and_the_change_is_shown() {
    let up = Up::start();
    let s = up.server.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.toml");
    let doc = |schedule: &str, secret: &str| {
        format!("name = \"backup\"\nschedule = \"{schedule}\"\ncommand = \"echo dump\"\nenv = {{ PGHOST = \"db\", SECRET = \"{secret}\" }}\n")
    };
    std::fs::write(&file, doc("0 30 2 * * *", "one")).unwrap();
    let f = file.to_str().unwrap();
    ok(&s, &["job", "add", "-f", f]);
    let err = fails(&s, &["job", "add", "-f", f]);
    assert!(err.contains("already exists") && err.contains("tug job update NAME -f FILE"), "{err}");
    ok(&s, &["job", "pause", "backup"]);

    // The file does not say `paused`: the job stays paused. Secret values are never printed.
    std::fs::write(&file, doc("0 0 3 * * *", "two")).unwrap();
    let out = ok(&s, &["job", "update", "backup", "-f", f]);
    assert!(out.starts_with("updated backup (paused):"), "{out}");
    assert!(out.contains("schedule: \"0 30 2 * * *\" → \"0 0 3 * * *\""), "{out}");
    assert!(out.contains("env: SECRET changed") && !out.contains("two") && !out.contains("one"), "{out}");
    assert!(!out.contains("paused: true"), "paused kept: {out}");
    let job = json(&s, &["job", "show", "backup", "--json"]);
    assert_eq!(job["spec"]["paused"], true);
    assert_eq!(job["spec"]["schedule"], "0 0 3 * * *");
    assert_eq!(ok(&s, &["job", "update", "backup", "-f", f]), "backup is unchanged\n");
    // A file that says `paused = false` resumes it.
    std::fs::write(&file, format!("{}paused = false\n", doc("0 0 3 * * *", "two"))).unwrap();
    let out = ok(&s, &["job", "update", "backup", "-f", f]);
    assert!(out.contains("paused: true → false"), "{out}");

    // The file must name the job; bad documents name the file.
    std::fs::write(&file, doc("0 0 3 * * *", "two").replace("\"backup\"", "\"other\"")).unwrap();
    let err = fails(&s, &["job", "update", "backup", "-f", f]);
    assert!(err.contains("names job \"other\", not \"backup\"") && err.contains("backup.toml"), "{err}");
    let err = fails(&s, &["job", "update", "ghost", "-f", f]);
    assert!(err.contains("names job \"other\""), "{err}");

    // Through an editor: `sed` stands in for a person.
    let edit = [("EDITOR", "sed -i 's/echo dump/echo edited/'"), ("TUG_SERVER", s.as_str())];
    let out = tug_env(&["job", "edit", "backup"], &edit);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("command: \"echo dump\" → \"echo edited\""), "{text}");
    let out = tug_env(&["job", "edit", "backup"], &[("EDITOR", "true"), ("TUG_SERVER", s.as_str())]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backup is unchanged\n");
    // A refused edit is kept, and the error says where.
    let bad = [("EDITOR", "sed -i 's|^schedule = .*|schedule = \"61 * * * *\"|'"), ("TUG_SERVER", s.as_str())];
    let out = tug_env(&["job", "edit", "backup"], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid schedule \"61 * * * *\"") && err.contains("your edit is kept in"), "{err}");
    let kept = err.split("kept in ").nth(1).unwrap().split(':').next().unwrap();
    assert!(std::fs::read_to_string(kept).unwrap().contains("61 * * * *"));
    std::fs::remove_dir_all(std::path::Path::new(kept).parent().unwrap()).unwrap();
}

#[test]
fn job_show_shows_the_whole_job_but_no_env_values() {
    let up = Up::start();
    let s = up.server.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("thumbs.toml");
    std::fs::write(
        &file,
        "name = \"thumbs\"\ndescription = \"make thumbnails\"\nowner = \"media@example.com\"\nlabels = { team = \"media\" }\n\
         schedule = \"@yearly\"\ncommand = \"make-thumbs\"\nenv = { TOKEN = \"s3cret-value\" }\nworkdir = \"/srv\"\n\
         runtime = \"docker\"\n[docker]\nimage = \"registry.local/thumbs:1.4\"\nvolumes = [\"/srv/images:/images\"]\n",
    )
    .unwrap();
    ok(&s, &["job", "add", "-f", file.to_str().unwrap()]);
    let out = ok(&s, &["job", "show", "thumbs"]);
    for needle in ["make thumbnails", "media@example.com", "team=media", "TOKEN (values hidden)", "/srv", "docker.image", "registry.local/thumbs:1.4", "/srv/images:/images"] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    assert!(!out.contains("s3cret-value"), "{out}");
}

#[test]
fn a_run_waiting_for_its_retry_says_when() {
    let up = Up::start();
    let s = up.server.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flaky.toml");
    std::fs::write(&file, "name = \"flaky\"\nschedule = \"@yearly\"\ncommand = \"exit 3\"\nretries = { count = 2, initial_delay = \"1h\", max_delay = \"2h\" }\n").unwrap();
    ok(&s, &["job", "add", "-f", file.to_str().unwrap()]);
    ok(&s, &["job", "run", "flaky"]);
    for _ in 0..100 {
        let out = ok(&s, &["runs", "flaky"]);
        if out.contains("retry in ") {
            assert!(out.contains("retry in 59m") || out.contains("retry in 1h00m"), "{out}");
            assert!(!out.contains("running"), "{out}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the run never showed `retry in`: {}", ok(&s, &["runs", "flaky"]));
}

#[test]
fn bad_zones_and_server_urls_say_what_is_wrong() {
    let up = Up::start();
    let s = up.server.clone();
    let err = fails(&s, &["job", "add", "x", "--schedule", "@daily", "--tz", "Mars/Olympus", "--", "true"]);
    assert!(err.contains("`tz` \"Mars/Olympus\" is not a known IANA time zone") && !err.contains("invalid schedule"), "{err}");
    let err = fails(&s, &["schedule", "next", "@daily", "--tz", "Mars/Olympus"]);
    assert!(err.contains("unknown time zone \"Mars/Olympus\"") && !err.contains("invalid schedule"), "{err}");
    let err = fails("127.0.0.1:4400", &["job", "list"]);
    assert!(err.contains("invalid server URL \"127.0.0.1:4400\": it needs a scheme, e.g. --server http://127.0.0.1:4400"), "{err}");
    assert!(!err.contains("builder error"), "{err}");
    // Given after the command, before it, or by TUG_SERVER: all reach the server.
    let port = up.port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    assert!(tug_env(&["job", "list", "--server", &url], &[]).status.success());
    assert!(tug_env(&["--server", &url, "job", "list"], &[]).status.success());
    assert!(tug_env(&["job", "list"], &[("TUG_SERVER", &url)]).status.success());
    assert!(tug_env(&["job", "list", "--server", &url], &[("TUG_SERVER", "http://127.0.0.1:9")]).status.success());
}

#[test]
fn the_agent_has_its_own_server_variable_and_refuses_an_api_port() {
    let up = Up::start();
    // TUG_SERVER, exported for the CLI, is not the agent's: it uses TUG_AGENT_SERVER.
    let help = String::from_utf8(tug_env(&["agent", "run", "--help"], &[]).stdout).unwrap();
    assert!(help.contains("TUG_AGENT_SERVER") && help.contains("[default: http://127.0.0.1:4401]"), "{help}");
    assert!(!help.contains("TUG_SERVER="), "{help}");
    let help = String::from_utf8(tug_env(&["up", "--help"], &[]).stdout).unwrap();
    assert!(!help.contains("--server"), "tug up has no use for --server: {help}");
    let data = tempfile::tempdir().unwrap();
    let args = ["agent", "run", "--name", "lost", "--data-dir", data.path().to_str().unwrap()];
    let out = tug_env(&args, &[("TUG_AGENT_SERVER", &up.server)]);
    assert!(!out.status.success(), "an agent pointed at the API exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an agent endpoint") && err.contains("--agent-listen"), "{err}");
}

/// `docker ps -aq` of the containers of one job.
fn containers_of(job: &str) -> Vec<String> {
    let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=tugboat.job={job}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_clean_stop_removes_warm_containers_unless_asked_to_keep_them() {
    let image = std::env::var("TUG_TEST_IMAGE").unwrap_or_else(|_| "tugboat-test-busybox:1".into());
    let present = Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("\n!!!!!!!! SKIPPED: no Docker, or no test image {image} (scripts/test builds it) !!!!!!!!\n");
        return;
    }
    for keep in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = format!("http://127.0.0.1:{port}");
        let stderr = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let mut cmd = Command::new(TUG);
        cmd.args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(dir.path().join("data"));
        if keep {
            cmd.arg("--keep-warm");
        }
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(stderr).spawn().unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let job = format!("warm-{}-{keep}", std::process::id());
        let file = dir.path().join("job.toml");
        std::fs::write(&file, format!("name = \"{job}\"\nschedule = \"@yearly\"\ncommand = \"echo warm\"\nruntime = \"docker\"\n[docker]\nimage = \"{image}\"\npull = \"never\"\n")).unwrap();
        ok(&s, &["job", "add", "-f", file.to_str().unwrap()]);
        ok(&s, &["job", "run", &job]);
        let mut state = Value::Null;
        for _ in 0..600 {
            state = json(&s, &["runs", &job, "--json"])[0].clone();
            if state["finished_at"].is_string() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = || std::fs::read_to_string(dir.path().join("up.log")).unwrap();
        assert_eq!(state["state"], "succeeded", "{state}\n{}", log());
        assert_eq!(containers_of(&job).len(), 1);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(child.wait().unwrap().success());
        let log = log();
        let left = containers_of(&job);
        if keep {
            assert!(log.contains("1 warm container(s) stay in Docker (--keep-warm)"), "{log}");
            assert_eq!(left.len(), 1);
            Command::new("docker").args(["rm", "-f"]).args(&left).output().unwrap();
        } else {
            assert!(log.contains("removed 1 warm container(s)"), "{log}");
            assert!(left.is_empty(), "{left:?}");
        }
    }
}

#[test]
fn network_pools_through_the_cli() {
    let up = Up::start();
    let s = up.server.clone();
    let out = ok(&s, &["net", "pool", "add", "blue", "--cidr", "10.77.0.0/24", "--vlan", "77", "--gateway", "10.77.0.1", "--reserve", "10.77.0.2-10.77.0.9", "--select", "team=web"]);
    assert_eq!(out, "added pool blue (10.77.0.0/24, 245 addresses to hand out)\n");
    ok(&s, &["net", "pool", "add", "green", "--cidr", "10.78.0.0/24", "--vxlan", "5078", "--gateway", "10.78.0.1"]);
    let table = ok(&s, &["net", "pool", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("blue   10.77.0.0/24  vlan 77     10.77.0.1  0/245           team=web"), "{table}");
    assert!(table.contains("vxlan 5078"), "{table}");
    let shown = json(&s, &["net", "pool", "show", "blue", "--json"]);
    assert_eq!(shown["pool"]["reserve"][0], "10.77.0.2-10.77.0.9");
    assert_eq!(shown["addresses"], serde_json::json!([]));
    assert!(ok(&s, &["net", "pool", "show", "blue"]).contains("reserved: 10.77.0.2-10.77.0.9"));
    assert!(ok(&s, &["net", "addr", "list"]).starts_with("POOL  INSTANCE  IP  MAC  AGENT"));

    let bad = [
        (vec!["--cidr", "10.1.0.0/24", "--vlan", "4095", "--gateway", "10.1.0.1"], "VLAN 4095 is out of range; use 1-4094"),
        (vec!["--cidr", "10.1.0.0/24", "--vlan", "5", "--gateway", "10.9.0.1"], "gateway 10.9.0.1 is outside 10.1.0.0/24"),
        (vec!["--cidr", "10.1.0.300/24", "--vlan", "5", "--gateway", "10.1.0.1"], "\"10.1.0.300\" is not an IPv4 address"),
        (vec!["--cidr", "10.77.0.0/16", "--vlan", "5", "--gateway", "10.77.0.1"], "overlaps pool \"blue\""),
        (vec!["--cidr", "10.1.0.0/24", "--gateway", "10.1.0.1"], "--vlan <VLAN>|--vxlan <VXLAN>"),
        (vec!["--cidr", "10.1.0.0/24", "--vlan", "5", "--gateway", "10.1.0.1", "--select", "web"], "write key=value"),
    ];
    for (args, says) in bad {
        let mut full = vec!["net", "pool", "add", "p"];
        full.extend(args);
        let err = fails(&s, &full);
        assert!(err.contains(says), "{full:?}: {err}");
    }
    ok(&s, &["net", "pool", "delete", "green"]);
    let err = fails(&s, &["net", "pool", "show", "green"]);
    assert!(err.contains("network pool \"green\" not found") && err.contains("404"), "{err}");
    assert!(up.terminate().success());
}

#[test]
fn events_and_runs_watch_follow_the_server_live() {
    use std::io::BufRead;
    let up = Up::start();
    let s = up.server.clone();
    ok(&s, &["job", "add", "live", "--schedule", "@yearly", "--", "echo live"]);
    let events = Command::new(TUG)
        .args(["events", "--job", "live", "--kind", "run", "--json", "--count", "4", "--since", "0", "--server", &s])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = Command::new(TUG).args(["runs", "live", "--watch", "--server", &s]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let watched = std::io::BufReader::new(watch.stdout.take().unwrap());
    // Both are connected once the watcher has drawn its first table.
    let mut lines = watched.lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("runs of live, live (Ctrl-C to stop)"), "{first}");
    assert_eq!(lines.next().unwrap().unwrap(), "no runs yet");
    ok(&s, &["job", "run", "live"]);
    let out = events.wait_with_output().unwrap();
    assert!(out.status.success());
    let kinds: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["run.fired", "run.placed", "run.started", "run.finished"]);
    // The watcher redraws without being asked: the run shows up succeeded.
    let redrawn = lines.map(Result::unwrap).find(|l| l.contains("succeeded"));
    assert!(redrawn.is_some_and(|l| l.contains("manual")));
    watch.kill().unwrap();
    watch.wait().unwrap();
    let err = fails(&s, &["events", "--kind", "bogus"]);
    assert!(err.contains("unknown event kind \"bogus\": use job, run, agent"), "{err}");
}

#[test]
fn the_command_reference_is_generated_from_the_help() {
    let out = Command::new(TUG).args(["config", "reference"]).env_clear().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("## `tug up`") && text.contains("## `tug agent run`") && text.contains("## `tug job add`"), "{text}");
    assert!(text.contains("| `--header-timeout` | `TUG_HEADER_TIMEOUT` | `10s` |"), "{text}");
    assert!(!text.contains("## `tug agent shim`"), "hidden commands stay out");
    // Every visible command has its section, with every flag --help shows.
    let help = Command::new(TUG).args(["up", "--help"]).env_clear().output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let up = text.split("## `tug up`").nth(1).unwrap().split("\n## ").next().unwrap();
    for flag in help.split_whitespace().filter(|w| w.starts_with("--") && w.len() > 2 && !matches!(*w, "--help" | "--version")) {
        let flag = flag.trim_end_matches([',', '.', ')', '`', ';']).split(['=', '[', '<', '`']).next().unwrap();
        if flag.len() > 2 && help.contains(&format!("  {flag}")) {
            assert!(up.contains(&format!("`{flag}`")), "{flag} is in `tug up --help` but not in the reference");
        }
    }
}
