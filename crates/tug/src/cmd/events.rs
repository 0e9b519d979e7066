//! `tug events`: follows the server's event stream, one line per event (or JSON lines).

use serde_json::Value;

use super::field;
use crate::client::{Client, enc};
use crate::events::Follower;

/// Arguments of `tug events`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug events\n  tug events --job backup --kind run.finished\n  tug events --kind run,agent --json\n  tug events --service web --kind replica,release\n  tug events --since 0 --count 20     the last 20 events the server holds, then stop\n\n\
    Kinds: job.created job.changed job.deleted job.paused job.resumed run.fired run.placed run.started\n\
    run.waiting run.retried run.finished run.misfired agent.joined agent.lost agent.drained agent.undrained\n\
    service.created service.changed service.deleted service.scaled replica.placed replica.started\n\
    replica.healthy replica.unhealthy replica.stopped replica.replaced operation.progress operation.finished\n\
    release.started release.stage release.braked release.resumed release.retried release.failed\n\
    release.succeeded release.revoked;\n\
    a prefix (job, run, agent, service, replica, operation, release) stands for all of its kinds. A follower that falls too far behind is told\n\
    how many events it missed (`lagged`).")]
pub struct EventsArgs {
    /// Only events of these jobs (comma-separated).
    #[arg(long)]
    job: Option<String>,
    /// Only events of these services (comma-separated): their replicas, scale operations and
    /// releases.
    #[arg(long)]
    service: Option<String>,
    /// Only events of jobs with this label (`key` or `key=value`).
    #[arg(long)]
    label: Option<String>,
    /// Only these kinds (comma-separated; `run` means every run.* kind).
    #[arg(long)]
    kind: Option<String>,
    /// Print each event as one line of JSON.
    #[arg(long)]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Start after this event id instead of now; 0 replays every event the server still holds.
    #[arg(long, value_name = "ID")]
    since: Option<u64>,
    #[command(flatten)]
    conn: crate::Conn,
}

/// Follows the stream until interrupted (or `--count` events).
pub async fn run(server: &str, a: EventsArgs) -> anyhow::Result<()> {
    let mut q = Vec::new();
    for (k, v) in [("job", &a.job), ("service", &a.service), ("label", &a.label), ("kind", &a.kind)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(v)));
        }
    }
    let mut follower = Follower::new(Client::new(server), q.join("&"));
    if let Some(id) = a.since {
        follower = follower.after(id);
    }
    let mut n = 0;
    while a.count.is_none_or(|c| n < c) {
        let e = follower.next().await?;
        if a.json {
            let mut v = e.data;
            if e.kind == "lagged" {
                v = serde_json::json!({"kind": "lagged", "lagged": v});
            }
            println!("{}", serde_json::to_string(&v)?);
        } else {
            println!("{}", line(&e.kind, &e.data));
        }
        n += 1;
    }
    Ok(())
}

/// `19:40:01  run.finished   hello  run 12 succeeded (exit 0) on local`.
fn line(kind: &str, e: &Value) -> String {
    if kind == "lagged" {
        let missed = e["missed"].as_u64().map_or_else(|| "an unknown number of".to_string(), |m| m.to_string());
        return format!("!! fell behind: {missed} events missed; going on from event {}", field(e, "resume_at"));
    }
    let at = e["at"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()).map_or_else(|| "-".into(), |t| t.strftime("%H:%M:%S").to_string());
    let subject = e["job"].as_str().or(e["service"].as_str()).or(e["agent"].as_str()).unwrap_or("-");
    let r = &e["run"];
    let detail = if e["service"].is_string() {
        service_detail(&e["detail"])
    } else if r.is_object() {
        let mut d = format!("run {} {}", field(r, "id"), field(r, "state"));
        if let Some(code) = r["exit_code"].as_i64() {
            d.push_str(&format!(" (exit {code})"));
        }
        if let Some(agent) = r["agent"].as_str() {
            d.push_str(&format!(" on {agent}"));
        }
        if let Some(reason) = r["reason"].as_str() {
            d.push_str(&format!(": {reason}"));
        }
        d
    } else {
        String::new()
    };
    format!("{at}  {kind:<17}  {subject}  {detail}").trim_end().to_string()
}

/// `replica 2 on a1 (attempt 3): unhealthy: HTTP 500`, `rel-4 baking (braked)`, `op-2 3/20 healthy`.
fn service_detail(d: &Value) -> String {
    let mut out = Vec::new();
    if let Some(i) = d["index"].as_u64() {
        out.push(format!("replica {i}"));
    }
    for k in ["release", "operation"] {
        if let Some(id) = d[k].as_str() {
            out.push(id.to_string());
        }
    }
    if let Some(s) = d["state"].as_str() {
        out.push(s.to_string());
    }
    if let (Some(h), Some(to)) = (d["healthy"].as_u64(), d["to"].as_u64()) {
        out.push(format!("{h}/{to} healthy"));
    }
    if let Some(n) = d["replicas"].as_u64().filter(|_| d["to"].is_null()) {
        out.push(format!("{n} replicas"));
    }
    if let Some(a) = d["agent"].as_str() {
        out.push(format!("on {a}"));
    }
    if let Some(n) = d["attempt"].as_u64() {
        out.push(format!("(attempt {n})"));
    }
    if d["braked"].as_bool() == Some(true) {
        out.push("(braked)".into());
    }
    let mut line = out.join(" ");
    if let Some(why) = d["reason"].as_str().or(d["error"].as_str()) {
        line.push_str(&format!(": {why}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_events_read_as_one_line_each() {
        let e = |kind: &str, detail: Value| {
            let v = serde_json::json!({"at": "2026-11-28T07:00:01Z", "kind": kind, "service": "web", "detail": detail});
            line(kind, &v)
        };
        assert_eq!(
            e("replica.unhealthy", serde_json::json!({"index": 2, "attempt": 3, "reason": "unhealthy: HTTP 500"})),
            "07:00:01  replica.unhealthy  web  replica 2 (attempt 3): unhealthy: HTTP 500"
        );
        assert_eq!(
            e("release.failed", serde_json::json!({"release": "rel-4", "state": "failed", "braked": false, "reason": "replica 0 failed"})),
            "07:00:01  release.failed     web  rel-4 failed: replica 0 failed"
        );
        assert_eq!(
            e("operation.progress", serde_json::json!({"operation": "op-2", "state": "running", "to": 20, "healthy": 3})),
            "07:00:01  operation.progress  web  op-2 running 3/20 healthy"
        );
        assert_eq!(e("service.scaled", serde_json::json!({"operation": "op-2", "replicas": 20})), "07:00:01  service.scaled     web  op-2 20 replicas");
    }
}
