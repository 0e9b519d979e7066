//! `tug release start|list|show|watch|brake|resume|retry|revoke`: staged releases of a service
//! (smoke, bake, rollout), followed with a progress bar.

use std::path::PathBuf;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use tug_core::ServiceSpec;

use super::job::read_file;
use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// `tug release` subcommands.
#[derive(clap::Subcommand)]
pub enum ReleaseCommand {
    /// Start a staged release of a service: a new image, command, env or whole spec. Returns at
    /// once with the release's id; --wait follows it until it ends, fails or is braked.
    #[command(after_help = "Examples:\n  tug release start web --image registry/web:2 --smoke 1 --bake 10m --batch 25%\n  tug release start web --env VERSION=2 --wait\n  tug release start web -f web.toml --batch 2")]
    Start(Box<StartArgs>),
    /// A service's releases, newest first.
    List {
        /// The service's name.
        service: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a release: its stage, progress and history.
    Show(IdArgs),
    /// Follow a release with a progress bar until it ends, fails or is braked.
    Watch {
        /// The release's id (rel-N).
        id: String,
        /// Print the release as JSON when it stops.
        #[arg(long)]
        json: bool,
    },
    /// Brake a release: no more replicas are replaced until it is resumed.
    Brake(IdArgs),
    /// Resume a braked release.
    Resume(IdArgs),
    /// Run a failed release's stage again, replacing the replicas that failed.
    Retry(IdArgs),
    /// Revoke a release: every replaced replica goes back to the previous spec, a batch at a time.
    Revoke(IdArgs),
}

/// Arguments of `tug release start`.
#[derive(clap::Args)]
pub struct StartArgs {
    /// The service's name.
    service: String,
    /// The whole new spec, from a service file (.toml or .json); its replica count is ignored.
    #[arg(short = 'f', long = "file", conflicts_with_all = ["image", "env", "cmd"])]
    file: Option<PathBuf>,
    /// A new docker image.
    #[arg(long)]
    image: Option<String>,
    /// An environment variable to set, NAME=VALUE (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Replicas replaced one by one first (default 1).
    #[arg(long, allow_negative_numbers = true)]
    smoke: Option<i64>,
    /// How long the smoke replicas must stay healthy before the rollout (default 1m).
    #[arg(long)]
    bake: Option<String>,
    /// Replicas replaced at once in the rollout: a count or a percentage (default 25%).
    #[arg(long)]
    batch: Option<String>,
    /// How long a replaced replica has to become healthy (default 1m).
    #[arg(long)]
    health_timeout: Option<String>,
    /// The load balancer's hook told (POST, JSON: replica, agent, address, port) before each
    /// replica is stopped; the replica is stopped once it answers 2xx.
    #[arg(long, value_name = "URL")]
    pull_out: Option<String>,
    /// The load balancer's hook told once a replaced replica is healthy, to put it back in.
    #[arg(long, value_name = "URL")]
    pull_in: Option<String>,
    /// Follow the release until it ends, fails or is braked.
    #[arg(long)]
    wait: bool,
    /// Print the release as JSON.
    #[arg(long)]
    json: bool,
    /// A new command and its arguments (after `--`); one argument is run by /bin/sh -c.
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// A release id, and `--json`.
#[derive(clap::Args)]
pub struct IdArgs {
    /// The release's id (rel-N).
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a `tug release` subcommand.
pub async fn run(server: &str, cmd: ReleaseCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        ReleaseCommand::Start(a) => start(&c, *a).await,
        ReleaseCommand::List { service, json } => {
            let list = c.get(&format!("/services/{}/releases", enc(&service))).await?;
            if json {
                return print_json(&list);
            }
            let mut t = Table::new(&["ID", "STATE", "DONE", "REPLICAS", "PLAN", "STARTED", "FAILURE"]);
            for r in list.as_array().into_iter().flatten() {
                t.row(vec![field(r, "id"), state(r), field(r, "on_release"), field(r, "replicas"), plan(r), field(r, "started_at"), field(r, "failure")]);
            }
            table::print(&t);
            Ok(())
        }
        ReleaseCommand::Show(a) => {
            let r = c.get(&format!("/releases/{}", enc(&a.id))).await?;
            if a.json {
                return print_json(&r);
            }
            show(&r);
            Ok(())
        }
        ReleaseCommand::Watch { id, json } => {
            let r = watch(&c, &id, json).await?;
            if json {
                print_json(&r)?;
            }
            outcome(&r)
        }
        ReleaseCommand::Brake(a) => act(&c, a, "brake").await,
        ReleaseCommand::Resume(a) => act(&c, a, "resume").await,
        ReleaseCommand::Retry(a) => act(&c, a, "retry").await,
        ReleaseCommand::Revoke(a) => act(&c, a, "revoke").await,
    }
}

async fn start(c: &Client, a: StartArgs) -> anyhow::Result<()> {
    let mut body = json!({});
    if let Some(path) = &a.file {
        let text = read_file(path)?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        // Parse locally first: errors then name the file.
        let spec = if is_json { ServiceSpec::from_json(&text) } else { ServiceSpec::from_toml(&text) }
            .with_context(|| format!("in {}", path.display()))?;
        body["spec"] = serde_json::to_value(spec)?;
    }
    if let Some(image) = &a.image {
        body["image"] = image.clone().into();
    }
    if !a.cmd.is_empty() {
        body["command"] = if a.cmd.len() == 1 { a.cmd[0].clone().into() } else { json!(a.cmd) };
    }
    if !a.env.is_empty() {
        let mut env = serde_json::Map::new();
        for kv in &a.env {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--env {kv:?}: write NAME=VALUE, e.g. --env VERSION=2");
            };
            env.insert(k.to_owned(), v.into());
        }
        body["env"] = env.into();
    }
    if let Some(n) = a.smoke {
        body["smoke"] = n.into();
    }
    for (key, v) in
        [("bake", &a.bake), ("batch", &a.batch), ("health_timeout", &a.health_timeout), ("pull_out", &a.pull_out), ("pull_in", &a.pull_in)]
    {
        if let Some(v) = v {
            body[key] = v.clone().into();
        }
    }
    let r = c.call(Method::POST, &format!("/services/{}/releases", enc(&a.service)), Some(("application/json", body.to_string()))).await?;
    if !a.wait {
        if a.json {
            return print_json(&r);
        }
        let id = field(&r, "id");
        println!("releasing {}: release {id} ({})", a.service, plan(&r));
        println!("follow it with: tug release watch {id}");
        return Ok(());
    }
    let done = watch(c, &field(&r, "id"), a.json).await?;
    if a.json {
        print_json(&done)?;
    }
    outcome(&done)
}

async fn act(c: &Client, a: IdArgs, action: &str) -> anyhow::Result<()> {
    let r = c.call(Method::POST, &format!("/releases/{}/{action}", enc(&a.id)), None).await?;
    if a.json {
        return print_json(&r);
    }
    let verb = match action {
        "brake" => "braked",
        "resume" => "resumed",
        "retry" => "retrying",
        _ => "revoking",
    };
    println!("{verb} release {} of {}: {}", a.id, field(&r, "service"), state(&r));
    Ok(())
}

/// `smoke 1, bake 10m, batch 25%`.
pub(super) fn plan(r: &Value) -> String {
    let p = &r["plan"];
    format!("smoke {}, bake {}, batch {}", field(p, "smoke"), field(p, "bake"), field(p, "batch"))
}

/// The state, with `(braked)` when braked.
fn state(r: &Value) -> String {
    let s = field(r, "state");
    if r["braked"] == true { format!("{s} (braked)") } else { s }
}

/// One line: a bar of replicas on the new spec, the stage and what is in progress.
fn line(r: &Value) -> String {
    let total = r["replicas"].as_u64().unwrap_or(0);
    let on = r["on_release"].as_u64().unwrap_or(0);
    const WIDTH: u64 = 30;
    let filled = (on.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '-' }).collect();
    let mut s = format!("{} {} {} [{bar}] new spec {on}/{total}", field(r, "id"), field(r, "service"), state(r));
    if let Some(list) = r["in_progress"].as_array().filter(|l| !l.is_empty()) {
        let list: Vec<String> = list.iter().map(|v| v.to_string()).collect();
        s += &format!("  replacing {}", list.join(","));
    }
    if let Some(ms) = r["bake_left_ms"].as_u64() {
        s += &format!("  bake left {:.0}s", ms as f64 / 1000.0);
    }
    s += &format!("  {:.1}s", r["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0);
    s
}

fn show(r: &Value) {
    println!("{}", line(r));
    println!("plan: {}   health timeout: {}", plan(r), field(&r["plan"], "health_timeout"));
    if let Some(f) = r["failure"].as_str() {
        println!("failure: {f}");
    }
    println!();
    let mut t = Table::new(&["AT", "WHAT"]);
    for e in r["history"].as_array().into_iter().flatten() {
        t.row(vec![field(e, "at"), field(e, "what")]);
    }
    table::print(&t);
}

/// What the command's exit says: a failed release fails the command.
pub(super) fn outcome(r: &Value) -> anyhow::Result<()> {
    match r["state"].as_str() {
        Some("failed") => bail!(
            "release {} failed: {}; retry it (tug release retry {}) or revoke it (tug release revoke {})",
            field(r, "id"),
            field(r, "failure"),
            field(r, "id"),
            field(r, "id")
        ),
        _ => Ok(()),
    }
}

/// Redraws a release's line until it ends, fails or is braked (`quiet`: prints nothing).
pub(super) async fn watch(c: &Client, id: &str, quiet: bool) -> anyhow::Result<Value> {
    use std::io::Write;
    let tty = !quiet && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last = String::new();
    loop {
        let r = c.get(&format!("/releases/{}", enc(id))).await?;
        let l = line(&r);
        let stopped = r["braked"] == true || matches!(r["state"].as_str(), Some("succeeded" | "failed" | "revoked"));
        if tty {
            print!("\r\x1b[2K{l}");
            std::io::stdout().flush()?;
        }
        if stopped {
            if tty {
                println!();
            } else if !quiet {
                println!("{l}");
            }
            if !quiet {
                if let Some(f) = r["failure"].as_str() {
                    println!("failure: {f}");
                }
                if r["braked"] == true {
                    println!("braked: resume it with tug release resume {id}");
                }
            }
            return Ok(r);
        }
        // Without a terminal, print each new stage once instead of redrawing.
        let stage = state(&r);
        if !tty && !quiet && stage != last {
            println!("{l}");
        }
        last = stage;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
