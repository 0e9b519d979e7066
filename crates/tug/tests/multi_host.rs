//! `tug server` and `tug agent run` processes on simulated hosts: each agent in its own network
//! namespace behind a veth pair on a bridge (see `hosts/mod.rs`), so failures are the real ones:
//! a `kill -9`, a restart, a cut link. Every assertion is on state read back through the API.
//!
//! Needs root (CI runs ./scripts/test as root); without it every test here fails and says why.

mod hosts;

use std::time::Duration;

use hosts::{AgentArgs, Cluster, TOKEN, marker_lines, until};
use serde_json::{Value, json};

/// Three agents on racks a, b and c with 1, 2 and 4 cpus.
async fn three_racks(server_extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(3, server_extra).await;
    for (i, (name, rack, cpus)) in [("host-a", "a", "1"), ("host-b", "b", "2"), ("host-c", "c", "4")].into_iter().enumerate() {
        c.start_agent(i, &AgentArgs { name, attributes: &format!("rack={rack}"), cpus, token: TOKEN });
    }
    c.wait_agents_up(&["host-a", "host-b", "host-c"]).await;
    c
}

/// The host index of an agent of [`three_racks`].
fn host_of(agent: &Value) -> usize {
    match agent.as_str() {
        Some("host-a") => 0,
        Some("host-b") => 1,
        Some("host-c") => 2,
        other => panic!("run on an unexpected agent {other:?}"),
    }
}

/// A job run on demand whose command sleeps `secs`, then appends "run-id attempt" to `marker`.
fn marked_job(name: &str, secs: u32, marker: &std::path::Path, retries: u32) -> Value {
    json!({
        "name": name,
        "schedule": "@yearly",
        "command": ["sh", "-c", format!("sleep {secs}; echo \"$TUG_RUN_ID $TUG_ATTEMPT\" >> {}", marker.display())],
        "resources": {"cpus": 0.5},
        "retries": {"count": retries, "initial_delay": "100ms", "max_delay": "100ms"},
    })
}

/// The run's attempts, from GET /runs/{id}.
async fn attempts(c: &Cluster, run: &Value) -> Vec<Value> {
    c.get(&format!("/runs/{}", run["id"])).await["attempts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_respects_resources_and_constraints() {
    let c = three_racks(&[]).await;
    // (job, resources, constraints, the only agent that may run it)
    let cases = [
        ("on-rack-b", json!({"cpus": 0.5}), json!([["rack", "EQUALS", "b"]]), "host-b"),
        ("not-rack-a-or-b", json!({"cpus": 0.5}), json!([["rack", "UNLIKE", "a|b"]]), "host-c"),
        ("three-cpus", json!({"cpus": 3}), json!([]), "host-c"),
        ("cpus-and-unlike", json!({"cpus": 1.5}), json!([["rack", "UNLIKE", "c"]]), "host-b"),
    ];
    for (name, resources, constraints, want) in &cases {
        c.post("/jobs", json!({"name": name, "schedule": "@yearly", "command": ["true"], "resources": resources, "constraints": constraints}))
            .await;
        // Several runs, one after the other: a right answer by chance is then unlikely.
        for n in 1..=3 {
            c.post(&format!("/jobs/{name}/run"), json!({})).await;
            until(Duration::from_secs(15), || format!("{name} run {n} to succeed\n{}", c.logs()), || async {
                let runs = c.runs(name).await;
                (runs.len() == n && runs.iter().all(|r| r["state"] == "succeeded")).then_some(())
            })
            .await;
        }
        for r in c.runs(name).await {
            assert_eq!(r["agent"], *want, "{name} must run on {want}: {r}");
        }
    }

    // Nobody has 8 cpus; nobody is on rack z. Both wait, saying why.
    c.create_and_run(json!({"name": "too-big", "schedule": "@yearly", "command": ["true"], "resources": {"cpus": 8}})).await;
    c.create_and_run(json!({"name": "rack-z", "schedule": "@yearly", "command": ["true"], "constraints": [["rack", "EQUALS", "z"]]}))
        .await;
    let big = c.wait_run("too-big", Duration::from_secs(10), "too-big pending", |r| r["state"] == "pending" && r["reason"].is_string()).await;
    let reason = big["reason"].as_str().unwrap();
    assert!(reason.contains("no agent has 8 cpus free; the most free is 4"), "the reason names the shortfall: {reason}");
    let z = c.wait_run("rack-z", Duration::from_secs(10), "rack-z pending", |r| r["state"] == "pending" && r["reason"].is_string()).await;
    let reason = z["reason"].as_str().unwrap();
    assert!(reason.contains("constraints") && reason.contains("rack") && reason.contains('z'), "the reason names the constraint: {reason}");
    // Still waiting a little later, and said so by the CLI too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for job in ["too-big", "rack-z"] {
        let runs = c.runs(job).await;
        assert!(runs.len() == 1 && runs[0]["state"] == "pending" && runs[0]["agent"].is_null(), "{job} stays pending: {runs:?}");
    }
    let out = std::process::Command::new(hosts::TUG).args(["--server", &c.api, "runs", "--ca", c.certs.join("ca.pem").to_str().unwrap(), "too-big"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("pending") && text.contains("no agent has 8 cpus free"), "tug runs too-big:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_run_is_lost_and_retried_elsewhere() {
    const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
    // Detection is checked once a second and the retry waits 100 ms; the rest is CI noise.
    const SLACK: Duration = Duration::from_secs(2);
    let mut c = three_racks(&["--agent-timeout", "3s"]).await;
    let marker = c.path("long.marker");
    c.create_and_run(marked_job("long", 20, &marker, 1)).await;
    let first = c.wait_run("long", Duration::from_secs(10), "long to run", |r| r["state"] == "running").await;
    let victim = host_of(&first["agent"]);
    c.kill_agent(victim);
    let killed_at = tokio::time::Instant::now();
    let retried = c
        .wait_run("long", AGENT_TIMEOUT + SLACK + Duration::from_secs(5), "long retried on another agent", |r| {
            r["state"] == "running" && r["attempt"] == 2 && r["agent"].is_string() && r["agent"] != first["agent"]
        })
        .await;
    let took = killed_at.elapsed();
    assert_eq!(retried["id"], first["id"], "the same run is retried: {retried}");
    assert!(took >= AGENT_TIMEOUT - Duration::from_secs(1), "retried only once the agent timed out, not after {took:?}");
    assert!(took <= AGENT_TIMEOUT + SLACK, "retried within the agent timeout + {SLACK:?}, took {took:?}");
    let history = attempts(&c, &retried).await;
    assert_eq!(history.len(), 2, "two attempts: {history:?}");
    assert_eq!(history[0]["state"], "lost", "the first attempt is lost: {history:?}");
    let agents = c.get("/agents").await;
    let gone = agents.as_array().unwrap().iter().find(|a| a["name"] == first["agent"]).cloned().unwrap_or_default();
    assert_eq!(gone["state"], "lost", "the killed agent is lost: {gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_reattaches_its_run() {
    let mut c = three_racks(&[]).await;
    let marker = c.path("reattach.marker");
    let mut job = marked_job("reattach", 8, &marker, 1);
    // Output before and after the agent's restart, both in the run's log.
    let script = format!("echo before; {}; echo after", job["command"][2].as_str().unwrap());
    job["command"][2] = json!(script);
    c.create_and_run(job).await;
    let first = c.wait_run("reattach", Duration::from_secs(10), "reattach to run", |r| r["state"] == "running").await;
    let i = host_of(&first["agent"]);
    let name = first["agent"].as_str().unwrap().to_string();
    let (attributes, cpus) = [("rack=a", "1"), ("rack=b", "2"), ("rack=c", "4")][i];
    // The agent process only: its runs live on.
    c.kill_agent(i);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start_agent(i, &AgentArgs { name: &name, attributes, cpus, token: TOKEN });
    let done = c
        .wait_run("reattach", Duration::from_secs(30), "reattach to end", |r| {
            matches!(r["state"].as_str(), Some("succeeded" | "failed" | "lost" | "killed" | "timed_out")) && r["retry_at"].is_null()
        })
        .await;
    // A little longer, for a duplicate to show up if there is one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = c.runs("reattach").await;
    let seen = format!("{done}\nattempts: {:?}\nmarker: {:?}\n{}", attempts(&c, &done).await, marker_lines(&marker), c.logs());
    assert_eq!(runs.len(), 1, "one run record: {runs:?}");
    assert_eq!(done["state"], "succeeded", "the re-attached run succeeds: {seen}");
    assert_eq!(done["attempt"], 1, "on its first attempt: {seen}");
    assert_eq!(done["agent"], name.as_str(), "on the restarted agent: {seen}");
    assert_eq!(marker_lines(&marker), vec![format!("{} 1", done["id"])], "the command ran to the end exactly once");
    // The log stays on the agent's host; the server reads it through the agent's stream.
    let (status, log) = c.get_text(&format!("/runs/{}/log", done["id"])).await;
    assert_eq!((status, log.as_str()), (200, "before\nafter\n"), "the whole log, read from the agent");
    c.kill_agent(i);
    let (status, err) = c.get_text(&format!("/runs/{}/log", done["id"])).await;
    assert_eq!(status, 503, "{err}");
    assert!(err.contains(&format!("the log is on agent {name}, which is not connected now")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_run_is_retried_and_stale_attempt_killed() {
    // Default agent timeout (10 s); the link is cut for 30 s; the command takes 45 s.
    let c = three_racks(&[]).await;
    let marker = c.path("cut.marker");
    c.create_and_run(marked_job("cut", 45, &marker, 1)).await;
    let first = c.wait_run("cut", Duration::from_secs(10), "cut to run", |r| r["state"] == "running").await;
    let i = host_of(&first["agent"]);
    c.net.set_link(i, false);
    let cut_at = tokio::time::Instant::now();
    let retried = c
        .wait_run("cut", Duration::from_secs(20), "cut retried on another agent", |r| {
            r["state"] == "running" && r["attempt"] == 2 && r["agent"].is_string() && r["agent"] != first["agent"]
        })
        .await;
    let history = attempts(&c, &retried).await;
    assert_eq!(history.first().map(|a| &a["state"]), Some(&json!("lost")), "attempt 1 is lost: {history:?}");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed())).await;
    c.net.set_link(i, true);
    // The cut agent comes back; the server kills its stale attempt (which would otherwise finish
    // at 45 s and append a line).
    c.wait_agents_up(&[first["agent"].as_str().unwrap()]).await;
    let done = c
        .wait_run("cut", Duration::from_secs(45), "cut to end", |r| {
            matches!(r["state"].as_str(), Some("succeeded" | "failed" | "lost" | "killed" | "timed_out")) && r["retry_at"].is_null()
        })
        .await;
    let runs = c.runs("cut").await;
    let seen = format!("{done}\nattempts: {:?}\nmarker: {:?}\n{}", attempts(&c, &done).await, marker_lines(&marker), c.logs());
    assert_eq!(runs.len(), 1, "one run record: {runs:?}");
    assert_eq!(done["state"], "succeeded", "{seen}");
    assert_eq!(done["attempt"], 2, "{seen}");
    assert_eq!(done["agent"], retried["agent"], "it ends on the agent that took the retry: {seen}");
    assert_eq!(
        marker_lines(&marker),
        vec![format!("{} 2", done["id"])],
        "only the retry ran to the end; the stale attempt on {} was killed: {seen}",
        first["agent"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_keeps_running_runs() {
    let mut c = three_racks(&[]).await;
    let marker = c.path("survive.marker");
    c.create_and_run(marked_job("survive", 10, &marker, 1)).await;
    let first = c.wait_run("survive", Duration::from_secs(10), "survive to run", |r| r["state"] == "running").await;
    c.kill_server();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start_server().await;
    let done = c
        .wait_run("survive", Duration::from_secs(40), "survive to end", |r| {
            matches!(r["state"].as_str(), Some("succeeded" | "failed" | "lost" | "killed" | "timed_out")) && r["retry_at"].is_null()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = c.runs("survive").await;
    let seen = format!("{done}\nattempts: {:?}\nmarker: {:?}\n{}", attempts(&c, &done).await, marker_lines(&marker), c.logs());
    assert_eq!(runs.len(), 1, "one run record: {runs:?}");
    assert_eq!(done["state"], "succeeded", "{seen}");
    assert_eq!(done["attempt"], 1, "still its first attempt: {seen}");
    assert_eq!(done["agent"], first["agent"], "{seen}");
    assert_eq!(marker_lines(&marker), vec![format!("{} 1", done["id"])], "the command ran to the end exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_join_token_is_refused() {
    // The server signs certificates against the join token; the intruder has none and a wrong
    // token. An agent holding a certificate for its name needs no token (it only bootstraps
    // certificates): one left with an old token still joins.
    let mut c = Cluster::new(2, &["--agent-ca-key", "{certs}/ca-key.pem"]).await;
    let ca_only = c.agent_ca_only();
    c.start_agent_tls(0, &AgentArgs { name: "intruder", attributes: "", cpus: "1", token: "wrong-token" }, &ca_only, &[]);
    c.start_agent(1, &AgentArgs { name: "member", attributes: "", cpus: "1", token: "an-old-token" });
    let agent_out = refused(&mut c, 0).await;
    assert!(
        agent_out.contains("join token refused") && agent_out.contains("--join-token"),
        "the agent says its token was refused and what to check:\n{agent_out}"
    );
    let server = c.server.as_ref().unwrap();
    until(Duration::from_secs(5), || format!("the server to say which agent it refused and why:\n{}", server.output()), || {
        let out = server.output();
        let said = out.lines().any(|l| l.contains("refused: wrong join token") && l.contains("intruder"));
        async move { said.then_some(()) }
    })
    .await;
    c.wait_agents_up(&["member"]).await;
    let agents = c.get("/agents").await;
    assert!(!agents.as_array().unwrap().iter().any(|a| a["name"] == "intruder"), "a refused agent is not registered: {agents}");
}

/// Waits for a refused agent to exit non-zero; returns what it printed.
async fn refused(c: &mut Cluster, i: usize) -> String {
    let mut agent = c.agents[i].take().unwrap();
    let status = until(Duration::from_secs(15), || format!("the refused agent {i} to exit\n{}", c.logs()), || {
        let s = agent.child.try_wait().unwrap();
        async move { s }
    })
    .await;
    let out = agent.output();
    assert!(!status.success(), "a refused agent exits non-zero:\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_a_wrong_ca_no_certificate_or_another_name_are_refused_saying_which() {
    let mut c = Cluster::new(4, &[]).await;
    let args = |name| AgentArgs { name, attributes: "", cpus: "1", token: TOKEN };
    // A CA that did not sign the server's certificate.
    let other = c.path("other-certs");
    let made = std::process::Command::new(hosts::TUG).args(["certs", "init", other.to_str().unwrap()]).output().unwrap();
    assert!(made.status.success());
    let mut wrong_ca = c.agent_tls("wrong-ca");
    wrong_ca[1] = other.join("ca.pem").to_str().unwrap().to_owned();
    c.start_agent_tls(0, &args("wrong-ca"), &wrong_ca, &[]);
    // The CA only: no client certificate.
    let ca_only = c.agent_tls("no-cert")[..2].to_vec();
    c.start_agent_tls(1, &args("no-cert"), &ca_only, &[]);
    // Another agent's certificate.
    let borrowed = c.agent_tls("owner");
    c.start_agent_tls(2, &args("impostor"), &borrowed, &[]);
    c.start_agent(3, &args("member"));

    let out = refused(&mut c, 0).await;
    assert!(out.contains("the server's certificate is not signed by a CA this client trusts") && out.contains("--ca"), "{out}");
    let out = refused(&mut c, 1).await;
    assert!(out.contains("the server requires a client certificate (mTLS): give --cert and --key"), "{out}");
    let out = refused(&mut c, 2).await;
    assert!(out.contains("client certificate is not for the name \"impostor\"") && out.contains("tug certs agent"), "{out}");
    let server = c.server.as_ref().unwrap();
    until(Duration::from_secs(5), || format!("the server to log the refusals:\n{}", server.output()), || {
        let out = server.output();
        let said = out.contains("the client presented no certificate") && out.contains("its client certificate is for another name");
        async move { said.then_some(()) }
    })
    .await;
    c.wait_agents_up(&["member"]).await;
    let agents = c.get("/agents").await;
    let names: Vec<&str> = agents.as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["member"], "only the agent with its own certificate joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_certificate_is_revoked_is_refused_saying_so() {
    let mut c = Cluster::new(2, &[]).await;
    let args = |name| AgentArgs { name, attributes: "", cpus: "1", token: TOKEN };
    let (kept, gone) = (c.agent_tls("kept"), c.agent_tls("gone"));
    let out = std::process::Command::new(hosts::TUG).args(["certs", "revoke", c.certs.to_str().unwrap(), "gone"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let crl = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(crl.ends_with("crl.pem") && String::from_utf8_lossy(&out.stderr).contains("--agent-crl"), "{crl}");
    c.restart_server_with(&["--agent-crl".into(), crl]).await;
    c.start_agent_tls(0, &args("gone"), &gone, &[]);
    c.start_agent_tls(1, &args("kept"), &kept, &[]);
    let out = refused(&mut c, 0).await;
    assert!(out.contains("the server refused this client's certificate: it has been revoked") && out.contains("tug certs agent"), "{out}");
    let server = c.server.as_ref().unwrap();
    until(Duration::from_secs(5), || format!("the server to log the refusal:\n{}", server.output()), || {
        let said = server.output().contains("the client's certificate has been revoked");
        async move { said.then_some(()) }
    })
    .await;
    c.wait_agents_up(&["kept"]).await;
    // A revocation while the server runs applies at once: the connected agent is cut off.
    let out = std::process::Command::new(hosts::TUG).args(["certs", "revoke", c.certs.to_str().unwrap(), "kept"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = refused(&mut c, 1).await;
    assert!(out.contains("client certificate has been revoked") && out.contains("cut it off"), "{out}");
}

/// Runs `tug certs revoke` of agent `name` in the cluster's CA directory.
fn revoke(c: &hosts::Cluster, name: &str) {
    let out = std::process::Command::new(hosts::TUG).args(["certs", "revoke", c.certs.to_str().unwrap(), name]).output().unwrap();
    assert!(out.status.success(), "tug certs revoke {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The Unix second the first certificate in `path` ends.
fn cert_end(path: &std::path::Path) -> i64 {
    let certs = tug_tls::files::load_certs(path, "certificate").unwrap();
    tug_tls::certs::not_after(&certs[0]).unwrap().unix_timestamp()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_only_the_ca_and_the_join_token_gets_a_certificate_joins_over_mtls_and_renews_it() {
    let mut c = Cluster::new(2, &["--agent-ca-key", "{certs}/ca-key.pem", "--agent-cert-ttl", "10s"]).await;
    let ca_only = c.agent_ca_only();
    c.start_agent_tls(0, &AgentArgs { name: "fresh", attributes: "", cpus: "1", token: TOKEN }, &ca_only, &[]);
    c.start_agent_tls(1, &AgentArgs { name: "intruder", attributes: "", cpus: "1", token: "wrong-token" }, &ca_only, &[]);
    // A wrong join token gets no certificate, and the agent says why.
    let out = refused(&mut c, 1).await;
    assert!(out.contains("join token refused") && out.contains("no certificate was issued"), "{out}");
    assert!(!c.agent_dir("intruder").join("tls").join("agent.pem").exists(), "nothing kept for a refused agent");
    c.wait_agents_up(&["fresh"]).await;
    // The server requires client certificates (see the test above): fresh joined with the one it
    // was issued, kept with its key where only the agent's user can read it.
    let kept = c.agent_dir("fresh").join("tls").join("agent.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&kept).unwrap();
    assert!(first.contains("BEGIN CERTIFICATE") && first.contains("PRIVATE KEY"), "{first}");
    let first_end = cert_end(&kept);
    let issued = std::fs::read_to_string(c.certs.join("issued.txt")).unwrap();
    assert!(issued.lines().any(|l| l.split_whitespace().nth(1) == Some("fresh")), "{issued}");
    assert!(!issued.contains("intruder"), "{issued}");
    let server = c.server.as_ref().unwrap();
    let said = server.output();
    assert!(said.lines().any(|l| l.contains("agent certificate issued against the join token") && l.contains("fresh")), "{said}");
    assert!(said.lines().any(|l| l.contains("agent certificate refused: wrong join token") && l.contains("intruder")), "{said}");
    // Renewed before it expires (at two thirds of its 10 s), presenting the current certificate.
    let agent = c.agents[0].as_ref().unwrap();
    until(Duration::from_secs(20), || format!("the agent to renew its certificate\n{}", c.logs()), || {
        let renewed = agent.output().contains("renewed this agent's client certificate");
        async move { renewed.then_some(()) }
    })
    .await;
    assert_ne!(std::fs::read_to_string(&kept).unwrap(), first, "the renewed certificate is kept");
    assert!(server.output().lines().any(|l| l.contains("agent certificate renewed") && l.contains("fresh")));
    // Once the first certificate has expired, the agent starts again without the join token: the
    // renewed certificate alone lets it in (the token only bootstraps it).
    c.stop_agent(0);
    while unix_now() <= first_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.start_agent_tls(0, &AgentArgs { name: "fresh", attributes: "", cpus: "1", token: "" }, &ca_only, &[]);
    c.wait_agents_up(&["fresh"]).await;
    assert!(cert_end(&kept) > first_end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_kept_certificate_is_from_a_replaced_ca_gets_a_new_one() {
    let mut c = Cluster::new(1, &["--agent-ca-key", "{certs}/ca-key.pem"]).await;
    let args = AgentArgs { name: "moved", attributes: "", cpus: "1", token: TOKEN };
    c.start_agent_tls(0, &args, &c.agent_ca_only(), &[]);
    c.wait_agents_up(&["moved"]).await;
    c.stop_agent(0);
    // A new CA: the server's certificate, the agents' CA and its key all from it.
    let fresh = c.path("certs-2");
    let made = std::process::Command::new(hosts::TUG)
        .args(["certs", "init", fresh.to_str().unwrap(), "--name", &c.net.server_addr()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    c.kill_server();
    for (flag, file) in [("--tls-cert", "server.pem"), ("--tls-key", "server-key.pem"), ("--agent-ca", "ca.pem"), ("--agent-ca-key", "ca-key.pem")] {
        c.set_server_arg(flag, fresh.join(file).to_str().unwrap());
    }
    c.certs = fresh.clone();
    c.start_server().await;
    // Given the new CA, the agent drops the certificate the old one signed and asks for another.
    c.start_agent_tls(0, &args, &c.agent_ca_only(), &[]);
    c.wait_agents_up(&["moved"]).await;
    let out = c.agents[0].as_ref().unwrap().output();
    assert!(out.contains("the kept client certificate is not signed by the CA given with --ca"), "{out}");
    let issued = std::fs::read_to_string(fresh.join("issued.txt")).unwrap();
    assert!(issued.lines().any(|l| l.split_whitespace().nth(1) == Some("moved")), "{issued}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_cut_off_without_a_restart_and_gets_no_new_certificate() {
    let mut c = Cluster::new(2, &["--agent-ca-key", "{certs}/ca-key.pem"]).await;
    let ca_only = c.agent_ca_only();
    let args = |name| AgentArgs { name, attributes: "", cpus: "1", token: TOKEN };
    c.start_agent_tls(0, &args("gone"), &ca_only, &[]);
    c.start_agent_tls(1, &args("kept"), &ca_only, &[]);
    c.wait_agents_up(&["gone", "kept"]).await;
    // By name: the server signed its certificate, so there is no agent-gone.pem to read.
    revoke(&c, "gone");
    let out = refused(&mut c, 0).await;
    assert!(out.contains("client certificate has been revoked") && out.contains("cut it off"), "{out}");
    let server = c.server.as_ref().unwrap();
    until(Duration::from_secs(5), || format!("the server to log the cut:\n{}", server.output()), || {
        let said = server.output().lines().any(|l| l.contains("agent cut off: its client certificate has been revoked") && l.contains("gone"));
        async move { said.then_some(()) }
    })
    .await;
    // Started again with its kept certificate: refused in the handshake.
    c.start_agent_tls(0, &args("gone"), &ca_only, &[]);
    let out = refused(&mut c, 0).await;
    assert!(out.contains("the server refused this client's certificate: it has been revoked"), "{out}");
    // Without it, the join token gets no new certificate for the revoked name.
    std::fs::remove_file(c.agent_dir("gone").join("tls").join("agent.pem")).unwrap();
    c.start_agent_tls(0, &args("gone"), &ca_only, &[]);
    let out = refused(&mut c, 0).await;
    assert!(out.contains("\"gone\" has been revoked") && out.contains("another --name"), "{out}");
    c.wait_agents_up(&["kept"]).await;
}

/// A webhook receiver on 127.0.0.1 (the server's namespace): the JSON bodies POSTed to it.
struct Hook {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Hook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let got = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let got = got.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 8192];
                    // Headers, then as many body bytes as Content-Length says.
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        req.extend_from_slice(&buf[..n]);
                        let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            if let Ok(body) = serde_json::from_slice(&req[end + 4..end + 4 + len]) {
                                got.lock().unwrap().push(body);
                            }
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                });
            }
        });
        Hook { url, bodies }
    }

    /// Waits for the payload of `event` for run `id`.
    async fn payload(&self, event: &str, id: &Value, c: &Cluster) -> Value {
        until(Duration::from_secs(15), || format!("a {event} webhook for run {id}: {:?}\n{}", self.bodies.lock().unwrap(), c.logs()), || {
            let found = self.bodies.lock().unwrap().iter().find(|b| b["event"] == event && b["run"]["id"] == *id).cloned();
            async move { found }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_logs_reach_webhooks_and_are_pruned_on_their_agents() {
    let mut c = Cluster::new(2, &[]).await;
    let host_a = AgentArgs { name: "host-a", attributes: "rack=a", cpus: "1", token: TOKEN };
    c.start_agent(0, &host_a);
    c.start_agent(1, &AgentArgs { name: "host-b", attributes: "rack=b", cpus: "1", token: TOKEN });
    c.wait_agents_up(&["host-a", "host-b"]).await;
    let hook = Hook::start().await;
    // More output than the 4 KiB tail a webhook carries; one finished run kept.
    let mut job = json!({
        "name": "chatty",
        "schedule": "@yearly",
        "command": ["sh", "-c", "seq 1 2000; echo \"done $TUG_RUN_ID\""],
        "keep_runs": 1,
        "constraints": [["rack", "EQUALS", "a"]],
        "webhooks": [{"url": hook.url, "on": ["success"]}],
    });
    let agents_dir = c.path("agents");
    let log_on = |agent: &str, run: &Value| agents_dir.join(agent).join("logs").join(format!("{run}.log"));

    c.create_and_run(job.clone()).await;
    let first = c.wait_run("chatty", Duration::from_secs(15), "the first run to succeed", |r| r["state"] == "succeeded").await;
    assert_eq!(first["agent"], "host-a");
    let payload = hook.payload("success", &first["id"], &c).await;
    let tail = payload["log_tail"].as_str().unwrap_or_else(|| panic!("a tail read from host-a: {payload}"));
    assert!(tail.ends_with(&format!("1999\n2000\ndone {}\n", first["id"])), "{tail}");
    assert_eq!(payload["log_truncated"], true, "{payload}");
    assert!(log_on("host-a", &first["id"]).exists(), "the log stays on its agent's host");

    // A second run on host-a: retention (keep 1) removes the first run's log there.
    c.post("/jobs/chatty/run", json!({})).await;
    let second = c
        .wait_run("chatty", Duration::from_secs(15), "the second run to succeed", |r| r["state"] == "succeeded" && r["id"] != first["id"])
        .await;
    until(Duration::from_secs(25), || format!("run {}'s log removed on host-a\n{}", first["id"], c.logs()), || {
        let gone = !log_on("host-a", &first["id"]).exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(log_on("host-a", &second["id"]).exists());

    // host-a goes away; a third run on host-b prunes the second, whose log waits on host-a.
    c.kill_agent(0);
    job["constraints"] = json!([["rack", "EQUALS", "b"]]);
    let r = c.http().put(format!("{}/api/v1/jobs/chatty", c.api)).json(&job).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
    c.post("/jobs/chatty/run", json!({})).await;
    let third = c
        .wait_run("chatty", Duration::from_secs(15), "the third run to succeed", |r| r["state"] == "succeeded" && r["agent"] == "host-b")
        .await;
    until(Duration::from_secs(25), || format!("run {} pruned\n{}", second["id"], c.logs()), || async {
        let ids: Vec<Value> = c.runs("chatty").await.iter().map(|r| r["id"].clone()).collect();
        (ids == vec![third["id"].clone()]).then_some(())
    })
    .await;
    assert!(log_on("host-a", &second["id"]).exists(), "host-a is away: its log is still there");
    c.start_agent(0, &host_a);
    until(Duration::from_secs(20), || format!("run {}'s log removed when host-a came back\n{}", second["id"], c.logs()), || {
        let gone = !log_on("host-a", &second["id"]).exists();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(log_on("host-b", &third["id"]).exists(), "the kept run's log stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_run_outlives_its_agents_restart_and_the_server_waits_for_the_agent() {
    docker_run_across_an_agent_restart("warm", "dock").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_run_container_outlives_its_agents_restart_and_reports_its_real_end() {
    docker_run_across_an_agent_restart("per-run", "perrun").await;
}

/// A docker run (in the job's warm container, or in a container of its own) started, its agent
/// stopped for twice the agent timeout, started again: the run ends once, on its first attempt,
/// with its whole log.
async fn docker_run_across_an_agent_restart(mode: &str, prefix: &str) {
    let image = std::env::var("TUG_TEST_IMAGE").unwrap_or_else(|_| "tugboat-test-busybox:1".into());
    let present = std::process::Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    if !present || std::env::var_os("TUG_DWAIT").is_none() {
        eprintln!("\n!!!!!!!! SKIPPED: no Docker, no test image {image} or no TUG_DWAIT (scripts/test provides them) !!!!!!!!\n");
        return;
    }
    // An agent timeout far shorter than the restart below: only the restart notice keeps the run.
    let mut c = Cluster::new(1, &["--agent-timeout", "4s"]).await;
    let name = format!("{prefix}-{}", std::process::id());
    let args = AgentArgs { name: &name, attributes: "", cpus: "2", token: TOKEN };
    c.start_agent(0, &args);
    c.wait_agents_up(&[name.as_str()]).await;
    c.create_and_run(json!({
        "name": "boxed",
        "schedule": "@yearly",
        "command": ["sh", "-c", "echo before; sleep 14; echo after"],
        "runtime": "docker",
        "docker": {"image": image, "pull": "never", "mode": mode},
        "resources": {"cpus": 0.5},
        "retries": {"count": 1, "initial_delay": "100ms"},
    }))
    .await;
    let first = c.wait_run("boxed", Duration::from_secs(30), "the docker run to start", |r| r["state"] == "running").await;
    // SIGTERM: the agent leaves the run going and says it will be back.
    c.stop_agent(0);
    let restarting = until(Duration::from_secs(10), || format!("the agent to show as restarting\n{}", c.logs()), || async {
        c.get("/agents").await.as_array()?.iter().find(|a| a["name"] == name.as_str() && a["state"] == "restarting").cloned()
    })
    .await;
    assert_eq!(restarting["state"], "restarting");
    // Away for twice the agent timeout.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(c.runs("boxed").await[0]["state"], "running", "the run waits for its agent");
    c.start_agent(0, &args);
    let done = c
        .wait_run("boxed", Duration::from_secs(30), "the docker run to end", |r| {
            matches!(r["state"].as_str(), Some("succeeded" | "failed" | "lost" | "killed" | "timed_out")) && r["retry_at"].is_null()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = c.runs("boxed").await;
    let seen = format!("{done}\nattempts: {:?}\n{}", attempts(&c, &done).await, c.logs());
    assert_eq!(runs.len(), 1, "{seen}");
    assert_eq!((done["state"].as_str(), done["attempt"].as_u64()), (Some("succeeded"), Some(1)), "once, on its first attempt: {seen}");
    assert_eq!(done["id"], first["id"]);
    let (status, log) = c.get_text(&format!("/runs/{}/log", done["id"])).await;
    assert_eq!((status, log.as_str()), (200, "before\nafter\n"), "the whole log: {seen}");
    c.stop_agent(0);
    let filter = format!("label=tugboat.agent={name}");
    if let Ok(out) = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}
