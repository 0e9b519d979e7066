//! `tug job ...`: add, list, show, run, kill, pause, resume, delete.

use std::path::PathBuf;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;
use tug_core::job::{Command as JobCommandSpec, JobSpec};

use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// `tug job` subcommands.
#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Add a job from a file (TOML or JSON) or from flags and a command.
    #[command(after_help = "Examples:\n  tug job add -f backup.toml\n  tug job add hello --schedule '*/5 * * * * *' -- echo hello\n  tug job add report --schedule '0 9 * * MON-FRI' --tz Europe/Berlin --retries 2 --timeout 10m -- ./report.sh\n  tug job add publish --parents build,test -- ./publish.sh\n  tug job add etl --schedule '@hourly' --cpus 2 --mem 4GiB --constraint rack:EQUALS:r1 -- ./etl.sh")]
    Add(Box<AddArgs>),
    /// List jobs.
    List(ListArgs),
    /// Show one job.
    Show(NameArgs),
    /// Run a job now.
    Run(NameArgs),
    /// Kill a job's active runs.
    Kill(NameArgs),
    /// Stop firing a job (missed fires follow its misfire policy on resume).
    Pause(NameArgs),
    /// Resume a paused job.
    Resume(NameArgs),
    /// Delete a job and its run history.
    Delete(NameArgs),
}

/// Arguments of `tug job add`.
#[derive(clap::Args)]
pub struct AddArgs {
    /// A job file (.toml or .json); `-` reads TOML from stdin.
    #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "schedule", "parents", "cmd"])]
    file: Option<PathBuf>,
    /// The job's name.
    name: Option<String>,
    /// A cron expression (5 or 6 fields, @daily, @every 5m) or ISO 8601 R/start/period.
    #[arg(long)]
    schedule: Option<String>,
    /// Time zone of the schedule (IANA name).
    #[arg(long)]
    tz: Option<String>,
    /// Run after these jobs succeed (comma-separated) instead of on a schedule.
    #[arg(long, value_delimiter = ',')]
    parents: Vec<String>,
    /// Retries after a failure.
    #[arg(long)]
    retries: Option<u32>,
    /// Kill a run after this long (e.g. 30s, 10m).
    #[arg(long)]
    timeout: Option<String>,
    /// allow, forbid or replace.
    #[arg(long)]
    concurrency: Option<String>,
    /// Description shown in listings.
    #[arg(long)]
    description: Option<String>,
    /// CPU cores each run needs on its agent (e.g. 0.5, 2).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory each run needs on its agent (e.g. 256MiB, 2GiB).
    #[arg(long)]
    mem: Option<String>,
    /// A placement constraint on agent attributes, FIELD:OPERATOR[:VALUE], repeatable:
    /// rack:EQUALS:r1, host:LIKE:web-[0-9]+, rack:UNLIKE:r2, hostname:UNIQUE, rack:GROUP_BY.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Print the created job as JSON.
    #[arg(long)]
    json: bool,
    /// The command and its arguments (after `--`); one argument is run by /bin/sh -c.
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// Arguments of `tug job list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// Only jobs whose name, description or owner contains this.
    #[arg(long)]
    q: Option<String>,
    /// Only jobs with this label (`key` or `key=value`).
    #[arg(long)]
    label: Option<String>,
    /// Most jobs to list (all when absent).
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A job name, and `--json`.
#[derive(clap::Args)]
pub struct NameArgs {
    /// The job's name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a `tug job` subcommand.
pub async fn run(server: &str, cmd: JobCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        JobCommand::Add(a) => add(&c, *a).await,
        JobCommand::List(a) => list(&c, a).await,
        JobCommand::Show(a) => {
            let job = c.get(&format!("/jobs/{}", enc(&a.name))).await?;
            if a.json {
                return print_json(&job);
            }
            show(&c, &job).await
        }
        JobCommand::Run(a) => {
            let run = c.post(&format!("/jobs/{}/run", enc(&a.name))).await?;
            if a.json {
                return print_json(&run);
            }
            println!("started run {} of {} ({})", field(&run, "id"), a.name, field(&run, "state"));
            println!("follow it with: tug logs {} -f", field(&run, "id"));
            Ok(())
        }
        JobCommand::Kill(a) => {
            let runs = c.post(&format!("/jobs/{}/kill", enc(&a.name))).await?;
            if a.json {
                return print_json(&runs);
            }
            let ids: Vec<String> = runs.as_array().into_iter().flatten().map(|r| field(r, "id")).collect();
            if ids.is_empty() {
                println!("{} has no active runs", a.name);
            } else {
                println!("stopping runs {} of {}", ids.join(", "), a.name);
            }
            Ok(())
        }
        JobCommand::Pause(a) => toggle(&c, a, "pause", "paused").await,
        JobCommand::Resume(a) => toggle(&c, a, "resume", "resumed").await,
        JobCommand::Delete(a) => {
            c.call(Method::DELETE, &format!("/jobs/{}", enc(&a.name)), None).await?;
            if a.json {
                return print_json(&serde_json::json!({"deleted": a.name}));
            }
            println!("deleted {}", a.name);
            Ok(())
        }
    }
}

async fn toggle(c: &Client, a: NameArgs, verb: &str, done: &str) -> anyhow::Result<()> {
    let job = c.post(&format!("/jobs/{}/{verb}", enc(&a.name))).await?;
    if a.json {
        return print_json(&job);
    }
    println!("{done} {} (next fire: {})", a.name, field(&job, "next_fire"));
    Ok(())
}

async fn add(c: &Client, a: AddArgs) -> anyhow::Result<()> {
    let (content_type, body) = match &a.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the job from stdin")?
            } else {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
            };
            let json = path.extension().is_some_and(|e| e == "json");
            // Parse locally first: errors then name the file.
            let spec = if json { JobSpec::from_json(&text) } else { JobSpec::from_toml(&text) }
                .with_context(|| format!("in {}", path.display()))?;
            ("application/json", serde_json::to_string(&spec)?)
        }
        None => ("application/json", serde_json::to_string(&spec_from_flags(&a)?)?),
    };
    let job = c.call(Method::POST, "/jobs", Some((content_type, body))).await?;
    if a.json {
        return print_json(&job);
    }
    println!("added {} (next fire: {})", job["spec"]["name"].as_str().unwrap_or("?"), field(&job, "next_fire"));
    Ok(())
}

fn spec_from_flags(a: &AddArgs) -> anyhow::Result<JobSpec> {
    let Some(name) = &a.name else {
        bail!("give a job file with -f FILE, or a NAME, a --schedule or --parents, and a command after --");
    };
    if a.cmd.is_empty() {
        bail!("no command: put it after `--`, e.g. tug job add {name} --schedule '@hourly' -- echo hello");
    }
    let command = if a.cmd.len() == 1 { JobCommandSpec::Shell(a.cmd[0].clone()) } else { JobCommandSpec::Argv(a.cmd.clone()) };
    // Build through the JSON form so defaults and validation are the server's.
    let mut v = serde_json::json!({ "name": name, "command": command });
    let obj = v.as_object_mut().expect("object literal");
    if let Some(s) = &a.schedule {
        obj.insert("schedule".into(), s.clone().into());
    }
    if let Some(tz) = &a.tz {
        obj.insert("tz".into(), tz.clone().into());
    }
    if !a.parents.is_empty() {
        obj.insert("parents".into(), a.parents.clone().into());
    }
    if let Some(r) = a.retries {
        obj.insert("retries".into(), r.into());
    }
    if let Some(t) = &a.timeout {
        obj.insert("timeout".into(), t.clone().into());
    }
    if let Some(cp) = &a.concurrency {
        obj.insert("concurrency".into(), cp.clone().into());
    }
    if let Some(d) = &a.description {
        obj.insert("description".into(), d.clone().into());
    }
    let mut resources = serde_json::Map::new();
    if let Some(c) = a.cpus {
        resources.insert("cpus".into(), c.into());
    }
    if let Some(m) = &a.mem {
        resources.insert("mem".into(), m.clone().into());
    }
    if !resources.is_empty() {
        obj.insert("resources".into(), resources.into());
    }
    if !a.constraints.is_empty() {
        let parsed: Vec<Vec<String>> = a.constraints.iter().map(|c| c.splitn(3, ':').map(str::to_string).collect()).collect();
        obj.insert("constraints".into(), serde_json::to_value(parsed)?);
    }
    Ok(JobSpec::from_json(&v.to_string())?)
}

async fn list(c: &Client, a: ListArgs) -> anyhow::Result<()> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("/jobs?limit={}", a.limit.unwrap_or(1000).min(1000));
        if let Some(x) = &a.q {
            q.push_str(&format!("&q={}", enc(x)));
        }
        if let Some(x) = &a.label {
            q.push_str(&format!("&label={}", enc(x)));
        }
        if let Some(x) = &cursor {
            q.push_str(&format!("&cursor={}", enc(x)));
        }
        let page = c.get(&q).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || a.limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    if let Some(l) = a.limit {
        items.truncate(l);
    }
    if a.json {
        return print_json(&items);
    }
    let mut t = Table::new(&["NAME", "SCHEDULE", "STATE", "NEXT FIRE", "LAST SUCCESS", "COMMAND"]);
    for j in &items {
        let spec = &j["spec"];
        t.row(vec![
            field(spec, "name"),
            trigger(spec),
            job_state(spec),
            field(j, "next_fire"),
            field(j, "last_success_at"),
            command(spec),
        ]);
    }
    table::print(&t);
    Ok(())
}

fn trigger(spec: &Value) -> String {
    match spec["schedule"].as_str() {
        Some(s) => match spec["tz"].as_str() {
            Some(tz) if tz != "UTC" => format!("{s} ({tz})"),
            _ => s.to_string(),
        },
        None => format!("after {}", spec["parents"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
    }
}

fn job_state(spec: &Value) -> String {
    if spec["enabled"] == Value::Bool(false) {
        "disabled".into()
    } else if spec["paused"] == Value::Bool(true) {
        "paused".into()
    } else {
        "active".into()
    }
}

fn command(spec: &Value) -> String {
    match &spec["command"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
        _ => "-".into(),
    }
}

/// `cpus=0.1 mem=128MiB`, as the spec has them.
fn resources(spec: &Value) -> String {
    match spec["resources"].as_object() {
        Some(r) if !r.is_empty() => r.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect::<Vec<_>>().join(" "),
        _ => "-".into(),
    }
}

/// `rack:EQUALS:r1, hostname:UNIQUE`.
fn constraints(spec: &Value) -> String {
    let Some(cs) = spec["constraints"].as_array().filter(|a| !a.is_empty()) else { return "-".into() };
    cs.iter()
        .map(|c| c.as_array().map_or_else(|| c.to_string(), |p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(":")))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn show(c: &Client, job: &Value) -> anyhow::Result<()> {
    let spec = &job["spec"];
    let name = field(spec, "name");
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let rows = [
        ("name", name.clone()),
        ("trigger", trigger(spec)),
        ("state", job_state(spec)),
        ("command", command(spec)),
        ("next fire", field(job, "next_fire")),
        ("last success", field(job, "last_success_at")),
        ("last failure", field(job, "last_failure_at")),
        ("concurrency", field(spec, "concurrency")),
        ("misfire", format!("{} (epsilon {})", field(spec, "misfire"), field(spec, "epsilon"))),
        ("retries", spec["retries"]["count"].to_string()),
        ("timeout", field(spec, "timeout")),
        ("resources", resources(spec)),
        ("constraints", constraints(spec)),
        ("version", field(job, "version")),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_string(), v]);
    }
    table::print(&t);
    let runs = c.get(&format!("/jobs/{}/runs?limit=5", enc(&name))).await?;
    let items = runs["items"].as_array().cloned().unwrap_or_default();
    if !items.is_empty() {
        println!("\nrecent runs:");
        super::runs::print_runs(&items);
    }
    Ok(())
}
