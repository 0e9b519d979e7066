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
    /// Change a job from a file (TOML or JSON), showing what changed. A file that does not say
    /// `paused` keeps the job paused or not as it is.
    #[command(after_help = "Examples:\n  tug job update backup -f backup.toml\n  tug job update backup -f - < backup.toml")]
    Update(UpdateArgs),
    /// Change a job in $VISUAL or $EDITOR (as TOML), showing what changed.
    #[command(after_help = "Examples:\n  tug job edit backup\n  EDITOR=nano tug job edit backup")]
    Edit(NameArgs),
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

/// Arguments of `tug job update`.
#[derive(clap::Args)]
pub struct UpdateArgs {
    /// The job's name (the file must name the same job).
    name: String,
    /// The job file (.toml or .json); `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Read stdin as JSON rather than TOML.
    #[arg(long)]
    json_input: bool,
    /// Print the updated job as JSON.
    #[arg(long)]
    json: bool,
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
        JobCommand::Update(a) => {
            let text = read_file(&a.file)?;
            let json = a.json_input || a.file.extension().is_some_and(|e| e == "json");
            update(&c, &a.name, &text, json, None, a.json).await.with_context(|| format!("in {}", a.file.display()))
        }
        JobCommand::Edit(a) => edit(&c, &a.name, a.json).await,
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

/// A job or service file's text; `-` is stdin.
pub(super) fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the document from stdin")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

async fn add(c: &Client, a: AddArgs) -> anyhow::Result<()> {
    let (content_type, body) = match &a.file {
        Some(path) => {
            let text = read_file(path)?;
            let json = path.extension().is_some_and(|e| e == "json");
            // Parse locally first: errors then name the file.
            let spec = if json { JobSpec::from_json(&text) } else { JobSpec::from_toml(&text) }
                .with_context(|| format!("in {}", path.display()))?;
            ("application/json", serde_json::to_string(&spec)?)
        }
        None => ("application/json", serde_json::to_string(&spec_from_flags(&a)?)?),
    };
    let job = c.call(Method::POST, "/jobs", Some((content_type, body))).await.map_err(|e| {
        if e.to_string().contains("already exists") {
            anyhow::anyhow!("{e:#}\nto change it: tug job update NAME -f FILE, or tug job edit NAME")
        } else {
            e
        }
    })?;
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

/// Every field of a job, in the order a reader wants them; optional fields only when set.
/// Environment values may be secret: only their names are shown.
fn show_rows(job: &Value) -> Vec<(String, String)> {
    let spec = &job["spec"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    };
    let pairs = |v: &Value| v.as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(", "));
    let mut rows: Vec<(String, String)> = vec![("name".into(), field(spec, "name"))];
    let opt = |rows: &mut Vec<(String, String)>, k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            rows.push((k.to_string(), v));
        }
    };
    opt(&mut rows, "description", spec["description"].as_str().map(str::to_string));
    opt(&mut rows, "owner", spec["owner"].as_str().map(str::to_string));
    opt(&mut rows, "labels", pairs(&spec["labels"]));
    rows.push(("trigger".into(), trigger(spec)));
    rows.push(("state".into(), job_state(spec)));
    rows.push(("command".into(), command(spec)));
    opt(&mut rows, "env", spec["env"].as_object().map(|m| format!("{} (values hidden)", m.keys().cloned().collect::<Vec<_>>().join(", "))));
    opt(&mut rows, "workdir", spec["workdir"].as_str().map(str::to_string));
    opt(&mut rows, "user", spec["user"].as_str().map(str::to_string));
    rows.push(("runtime".into(), field(spec, "runtime")));
    if let Some(d) = spec["docker"].as_object() {
        for (k, v) in d {
            if !v.is_null() {
                rows.push((format!("docker.{k}"), text(v)));
            }
        }
    }
    rows.push(("next fire".into(), field(job, "next_fire")));
    rows.push(("last success".into(), field(job, "last_success_at")));
    rows.push(("last failure".into(), field(job, "last_failure_at")));
    rows.push(("concurrency".into(), field(spec, "concurrency")));
    rows.push(("misfire".into(), format!("{} (epsilon {})", field(spec, "misfire"), field(spec, "epsilon"))));
    let r = &spec["retries"];
    let retries = match r["count"].as_u64() {
        Some(0) | None => "0".to_string(),
        Some(n) => format!("{n} (backoff {} to {})", field(r, "initial_delay"), field(r, "max_delay")),
    };
    rows.push(("retries".into(), retries));
    rows.push(("timeout".into(), field(spec, "timeout")));
    rows.push(("resources".into(), resources(spec)));
    rows.push(("constraints".into(), constraints(spec)));
    rows.push(("placement".into(), field(spec, "placement")));
    opt(&mut rows, "keep runs", spec["keep_runs"].as_u64().map(|n| n.to_string()));
    opt(
        &mut rows,
        "webhooks",
        spec["webhooks"].as_array().map(|hs| {
            hs.iter().map(|h| format!("{} on {}", field(h, "url"), text(&h["on"]))).collect::<Vec<_>>().join("; ")
        }),
    );
    rows.push(("version".into(), field(job, "version")));
    rows
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
    for (k, v) in show_rows(job) {
        t.row(vec![k, v]);
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

/// Sends a job document as the job's new spec and prints what changed. `version` makes it a
/// compare-and-set.
async fn update(c: &Client, name: &str, text: &str, json: bool, version: Option<u64>, print: bool) -> anyhow::Result<()> {
    // Parse locally first: errors then point at the document, not at HTTP.
    let spec = if json { JobSpec::from_json(text) } else { JobSpec::from_toml(text) }?;
    if spec.name != name {
        bail!("the file names job {:?}, not {name:?}; renaming is not supported", spec.name);
    }
    let before = c.get(&format!("/jobs/{}", enc(name))).await?;
    // The document as written, so that the server can tell a `paused` it leaves out.
    let body = if json { text.to_string() } else { serde_json::to_string(&toml::from_str::<serde_json::Value>(text)?)? };
    let mut path = format!("/jobs/{}", enc(name));
    if let Some(v) = version {
        path.push_str(&format!("?version={v}"));
    }
    let after = c.call(Method::PUT, &path, Some(("application/json", body))).await?;
    if print {
        return print_json(&after);
    }
    let changes = spec_changes(&before["spec"], &after["spec"]);
    if changes.is_empty() {
        println!("{name} is unchanged");
    } else {
        let when = if after["spec"]["paused"] == Value::Bool(true) { "paused".to_string() } else { format!("next fire: {}", field(&after, "next_fire")) };
        println!("updated {name} ({when}):");
        for line in changes {
            println!("  {line}");
        }
    }
    Ok(())
}

/// `tug job edit`: the job as TOML in an editor, sent back when it changed. A document the
/// server refuses is kept, and the error says where.
async fn edit(c: &Client, name: &str, print: bool) -> anyhow::Result<()> {
    let job = c.get(&format!("/jobs/{}", enc(name))).await?;
    let spec: JobSpec = serde_json::from_value(job["spec"].clone()).context("reading the job from the server")?;
    let version = job["version"].as_u64();
    let original = format!(
        "# Edit job {name} and save; an unchanged file changes nothing.\n# Environment values are shown: they are the job's own.\n{}",
        toml::to_string(&spec).context("writing the job as TOML")?
    );
    let dir = std::env::temp_dir().join(format!("tug-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &original).with_context(|| format!("writing {}", path.display()))?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    // Through the shell, so that EDITOR may carry arguments (`code --wait`).
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .with_context(|| format!("starting the editor {editor:?} (set VISUAL or EDITOR)"))?;
    if !status.success() {
        bail!("the editor {editor:?} exited with {status}; nothing changed (the file is {})", path.display());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if text == original {
        let _ = std::fs::remove_dir_all(&dir);
        println!("{name} is unchanged");
        return Ok(());
    }
    match update(c, name, &text, false, version, print).await {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "{e:#}\nnothing changed; your edit is kept in {}: fix it and run tug job update {name} -f {}",
            path.display(),
            path.display()
        )),
    }
}

/// One line per top-level field that differs: `schedule: "@hourly" → "@daily"`. Environment
/// values may be secret, so `env` names the variables only.
fn spec_changes(before: &Value, after: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (b, a) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "(none)".to_string(),
        Some(v) => {
            let t = v.to_string();
            if t.chars().count() > 80 { format!("{}…", t.chars().take(79).collect::<String>()) } else { t }
        }
    };
    let mut out = Vec::new();
    for k in keys {
        let (old, new) = (b.get(k), a.get(k));
        if old == new {
            continue;
        }
        if k == "env" {
            let names = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
            let (o, n) = (names(old), names(new));
            let mut parts = Vec::new();
            for (var, val) in &n {
                match o.get(var) {
                    None => parts.push(format!("{var} added")),
                    Some(v) if v != val => parts.push(format!("{var} changed")),
                    _ => {}
                }
            }
            parts.extend(o.keys().filter(|var| !n.contains_key(*var)).map(|var| format!("{var} removed")));
            out.push(format!("env: {}", parts.join(", ")));
        } else {
            out.push(format!("{k}: {} → {}", show(old), show(new)));
        }
    }
    out
}
