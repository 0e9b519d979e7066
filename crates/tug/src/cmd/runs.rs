//! `tug runs JOB` and `tug run show|kill ID`.

use serde_json::Value;

use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// Arguments of `tug runs`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug runs backup\n  tug runs backup --state failed --limit 5 --json\n  tug runs backup --watch")]
pub struct RunsArgs {
    /// The job.
    job: String,
    /// Only runs in this state (pending, running, succeeded, failed, killed, timed_out, lost, skipped).
    #[arg(long)]
    state: Option<String>,
    /// Most runs to list.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Keep the list current as runs start and end (from the event stream), until Ctrl-C.
    #[arg(long, short = 'w', conflicts_with = "json")]
    watch: bool,
    #[command(flatten)]
    conn: crate::Conn,
}

/// `tug run` subcommands.
#[derive(clap::Subcommand)]
pub enum RunCommand {
    /// Show one run and its attempts.
    Show {
        /// The run id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a run (SIGTERM to its process group, then SIGKILL after the grace period).
    Kill {
        /// The run id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Lists a job's runs.
pub async fn list(server: &str, a: RunsArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let mut q = format!("/jobs/{}/runs?limit={}", enc(&a.job), a.limit.min(1000));
    if let Some(s) = &a.state {
        q.push_str(&format!("&state={}", enc(s)));
    }
    if a.watch {
        return watch(server, &c, &q, &a.job).await;
    }
    let page = c.get(&q).await?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if a.json {
        return print_json(&items);
    }
    if items.is_empty() {
        match &a.state {
            Some(st) => println!("{} has no {st} runs", a.job),
            None => println!("{} has no runs yet", a.job),
        }
        return Ok(());
    }
    print_runs(&items);
    Ok(())
}

/// Redraws the runs whenever one of the job's runs changes; ticks every second while a run
/// waits for a retry (its countdown) or runs (its duration), every 10 s otherwise.
async fn watch(server: &str, c: &Client, query: &str, job: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut follower = crate::events::Follower::new(Client::new(server), format!("job={}&kind=run,job.deleted", enc(job)));
    loop {
        let page = c.get(query).await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&format!("runs of {job}, live (Ctrl-C to stop); {}\n", jiff::Timestamp::now().strftime("%H:%M:%S")));
        if items.is_empty() {
            out.push_str("no runs yet\n");
        } else {
            out.push_str(&runs_table(&items).render());
        }
        if !tty {
            out.push('\n');
        }
        print!("{out}");
        use std::io::Write;
        std::io::stdout().flush()?;
        let busy = items.iter().any(|r| matches!(r["state"].as_str(), Some("pending" | "starting" | "running")));
        let tick = std::time::Duration::from_secs(if busy { 1 } else { 10 });
        tokio::select! {
            e = follower.next() => {
                if e?.kind == "job.deleted" {
                    anyhow::bail!("job {job:?} was deleted");
                }
            }
            () = tokio::time::sleep(tick) => {}
        }
    }
}

/// Prints runs as a table.
pub fn print_runs(items: &[Value]) {
    table::print(&runs_table(items));
}

fn runs_table(items: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "SCHEDULED", "TRIGGER", "STATE", "ATTEMPT", "AGENT", "DURATION", "REASON"]);
    for r in items {
        t.row(vec![
            field(r, "id"),
            field(r, "scheduled_at"),
            field(r, "trigger"),
            field(r, "state"),
            field(r, "attempt"),
            field(r, "agent"),
            duration(r),
            match late_report(r) {
                Some(late) => format!("{}; {late}", field(r, "reason")),
                None => field(r, "reason"),
            },
        ]);
    }
    t
}

/// A run's late report in words: `late report: attempt 1 succeeded (exit code 0)`.
pub fn late_report(r: &Value) -> Option<String> {
    let l = r.get("late_report").filter(|l| l.is_object())?;
    let how = l["reason"].as_str().map(|s| format!(" ({s})")).unwrap_or_default();
    Some(format!("late report: attempt {} {}{how}", field(l, "attempt"), field(l, "state")))
}

/// How long the run took, or what it is waiting for: `retry in 40s` for a run waiting for its
/// next attempt (its last attempt's start is still recorded, so it is not `running`).
pub fn duration(r: &Value) -> String {
    let parse = |k: &str| r[k].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
    if r["state"] == "pending" {
        return match parse("retry_at") {
            Some(at) => {
                let secs = at.duration_since(jiff::Timestamp::now()).as_secs();
                if secs > 0 { format!("retry in {}", human_secs(secs as u64)) } else { "retrying".into() }
            }
            None => "-".into(),
        };
    }
    match (parse("started_at"), parse("finished_at")) {
        (Some(s), Some(f)) => {
            let ms = f.duration_since(s).as_millis();
            if ms < 10_000 { format!("{ms}ms") } else { format!("{}s", ms / 1000) }
        }
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

/// `40s`, `3m20s`, `2h5m`.
fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Runs a `tug run` subcommand.
pub async fn run(server: &str, cmd: RunCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        RunCommand::Show { id, json } => {
            let run = c.get(&format!("/runs/{id}")).await?;
            if json {
                return print_json(&run);
            }
            let mut t = Table::new(&["FIELD", "VALUE"]);
            for k in ["id", "job", "scheduled_at", "trigger", "state", "attempt", "agent", "started_at", "finished_at", "exit_code", "signal", "reason", "retry_at"] {
                t.row(vec![k.replace('_', " "), field(&run, k)]);
            }
            if let Some(late) = late_report(&run) {
                t.row(vec!["late report".into(), format!("{} at {}", late.trim_start_matches("late report: "), field(&run["late_report"], "at"))]);
            }
            table::print(&t);
            let attempts = run["attempts"].as_array().cloned().unwrap_or_default();
            if !attempts.is_empty() {
                println!("\nattempts:");
                let mut t = Table::new(&["ATTEMPT", "STATE", "STARTED", "FINISHED", "REASON"]);
                for a in &attempts {
                    t.row(vec![field(a, "attempt"), field(a, "state"), field(a, "started_at"), field(a, "finished_at"), field(a, "reason")]);
                }
                table::print(&t);
            }
            Ok(())
        }
        RunCommand::Kill { id, json } => {
            let run = c.post(&format!("/runs/{id}/kill")).await?;
            if json {
                return print_json(&run);
            }
            println!("stopping run {id} of {} (was {})", field(&run, "job"), field(&run, "state"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_report_is_shown_beside_the_reason() {
        let run = serde_json::json!({"id": 7, "state": "lost", "reason": "agent a1 stopped responding",
            "late_report": {"attempt": 1, "state": "succeeded", "at": "2026-11-28T01:00:00Z", "exit_code": 0, "reason": null}});
        assert_eq!(late_report(&run).as_deref(), Some("late report: attempt 1 succeeded"));
        let with_reason = serde_json::json!({"late_report": {"attempt": 2, "state": "failed", "reason": "exit code 3"}});
        assert_eq!(late_report(&with_reason).as_deref(), Some("late report: attempt 2 failed (exit code 3)"));
        assert_eq!(late_report(&serde_json::json!({"id": 8})), None);
    }
}
