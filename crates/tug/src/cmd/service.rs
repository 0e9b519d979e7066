//! `tug service add|update|list|show|scale|restart|logs|delete`: services, N replicas of a long-running command
//! with a health check; `tug op show|watch`: how a scale is doing.

use std::path::PathBuf;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use tug_core::ServiceSpec;
use tug_core::job::Command as CommandSpec;

use super::job::read_file;
use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// `tug service` subcommands.
#[derive(clap::Subcommand)]
pub enum ServiceCommand {
    /// Add a service from a file (TOML or JSON), or from flags and a command.
    #[command(after_help = "Examples:\n  tug service add -f web.toml\n  tug service add web --replicas 3 --http 8080/healthz -- busybox httpd -f -p 8080\n  tug service add cache --replicas 2 --tcp 6379 -- redis-server")]
    Add(Box<AddArgs>),
    /// Change a service from a file (TOML or JSON). Its replica count, scaling rules, labels,
    /// restart policy and stop settings apply at once; a change of what its replicas run (command,
    /// environment, image, resources, health check, network, placement) rolls out to them: a
    /// batch at a time, each replaced replica healthy before the next batch, as a release
    /// (brake, resume or revoke it with `tug release`).
    #[command(after_help = "Examples:\n  tug service update web -f web.toml\n  tug service update web -f web.toml --batch 1 --wait\n  tug service update web -f web.toml --batch 50% --health-timeout 2m")]
    Update {
        /// The service's name (the file must name the same service).
        name: String,
        /// The service file (.toml or .json); `-` reads TOML from stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replicas replaced at once when what they run changes: a count or a percentage.
        #[arg(long, value_name = "N|P%")]
        batch: Option<String>,
        /// How long a replaced replica has to become healthy (default 1m).
        #[arg(long, value_name = "DURATION")]
        health_timeout: Option<String>,
        /// Follow the rollout until it ends (exits non-zero if it fails).
        #[arg(long)]
        wait: bool,
        /// Print the service (and its rollout) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List services.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one service.
    Show(NameArgs),
    /// Set a service's replica count. Returns at once with an operation id; --wait follows it
    /// with a progress bar until every replica is healthy.
    #[command(after_help = "Examples:\n  tug service scale web 20 --wait\n  tug service scale web 2\n  tug op watch op-7")]
    Scale {
        /// The service's name.
        name: String,
        /// Replicas wanted.
        #[arg(allow_negative_numbers = true)]
        replicas: i64,
        /// Follow the operation until it ends.
        #[arg(long)]
        wait: bool,
        /// Print the operation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace every replica of a service on its current spec: a batch at a time, each replaced
    /// replica healthy before the next batch, as a release (brake, resume or revoke it with
    /// `tug release`). Returns at once with the release's id; --wait follows it.
    #[command(after_help = "Examples:\n  tug service restart web\n  tug service restart web --batch 20% --wait\n  tug service restart web --batch 1 --health-timeout 2m")]
    Restart {
        /// The service's name.
        name: String,
        /// Replicas replaced at once: a count or a percentage (default 25%).
        #[arg(long, value_name = "N|P%")]
        batch: Option<String>,
        /// How long a replaced replica has to become healthy (default 1m).
        #[arg(long, value_name = "DURATION")]
        health_timeout: Option<String>,
        /// Follow the restart until it ends (exits non-zero if it fails).
        #[arg(long)]
        wait: bool,
        /// Print the release as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a service; its replicas stop.
    Delete(NameArgs),
    /// Print the output of a service's replicas (every attempt of each), each line prefixed with
    /// its replica's index; --index prints one replica's, as is. With -f, keep printing what they
    /// write until they are gone.
    #[command(after_help = "Examples:\n  tug service logs web\n  tug service logs web --index 2\n  tug service logs web -f")]
    Logs {
        /// The service's name.
        name: String,
        /// Only this replica.
        #[arg(long)]
        index: Option<u32>,
        /// Keep printing the replicas' output as they write it (across their restarts) until they
        /// are scaled in or the service is deleted.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `tug op` subcommands.
#[derive(clap::Subcommand)]
pub enum OpCommand {
    /// Show a scale operation: placed, started, healthy and failed replicas, per agent.
    Show {
        /// The operation's id (op-N).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a scale operation with a progress bar until it ends.
    Watch {
        /// The operation's id (op-N).
        id: String,
    },
}

/// Arguments of `tug service add`.
#[derive(clap::Args)]
pub struct AddArgs {
    /// A service file (.toml or .json); `-` reads TOML from stdin.
    #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "cmd", "replicas"])]
    file: Option<PathBuf>,
    /// The service's name.
    name: Option<String>,
    /// How many replicas to run.
    #[arg(long, allow_negative_numbers = true)]
    replicas: Option<i64>,
    /// An HTTP health check: PORT or PORT/PATH (e.g. 8080/healthz).
    #[arg(long, conflicts_with = "tcp")]
    http: Option<String>,
    /// A TCP health check on this port.
    #[arg(long)]
    tcp: Option<i64>,
    /// Run each replica in this docker image (under dwait) instead of as a process.
    #[arg(long)]
    image: Option<String>,
    /// Print the created service as JSON.
    #[arg(long)]
    json: bool,
    /// The command and its arguments (after `--`); one argument is run by /bin/sh -c.
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// A service name, and `--json`.
#[derive(clap::Args)]
pub struct NameArgs {
    /// The service's name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a `tug service` subcommand.
pub async fn run(server: &str, cmd: ServiceCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        ServiceCommand::Add(a) => add(&c, *a).await,
        ServiceCommand::Update { name, file, batch, health_timeout, wait, json } => update(&c, &name, &file, batch, health_timeout, wait, json).await,
        ServiceCommand::Restart { name, batch, health_timeout, wait, json } => restart_replicas(&c, &name, batch, health_timeout, wait, json).await,
        ServiceCommand::List { json } => {
            let list = c.get("/services").await?;
            if json {
                return print_json(&list);
            }
            let mut t = Table::new(&HEADER);
            for s in list.as_array().into_iter().flatten() {
                t.row(row(s));
            }
            table::print(&t);
            Ok(())
        }
        ServiceCommand::Show(a) => {
            let s = c.get(&format!("/services/{}", enc(&a.name))).await?;
            if a.json {
                return print_json(&s);
            }
            let mut t = Table::new(&HEADER);
            t.row(row(&s));
            table::print(&t);
            let mut r = Table::new(&["INDEX", "STATE", "AGENT", "RUN", "ATTEMPT", "RESTARTS", "LAST PROBLEM"]);
            for x in s["status"]["list"].as_array().into_iter().flatten() {
                r.row(vec![field(x, "index"), field(x, "state"), field(x, "agent"), field(x, "run_id"), field(x, "attempt"), field(x, "restarts"), field(x, "reason")]);
            }
            println!();
            table::print(&r);
            println!();
            let spec = &s["spec"];
            println!("placement: {}   restart: {}   stop: {} after {}", field(spec, "placement"), restart(spec), field(spec, "stop_signal"), field(spec, "stop_grace"));
            if let Some(pool) = spec["network"]["pool"].as_str() {
                println!("network: an address per replica from pool {pool}");
            }
            println!("version {}, created {}, updated {}", field(&s, "version"), field(&s, "created_at"), field(&s, "updated_at"));
            Ok(())
        }
        ServiceCommand::Scale { name, replicas, wait, json } => {
            let body = json!({ "replicas": replicas }).to_string();
            let op = c.call(Method::POST, &format!("/services/{}/scale", enc(&name)), Some(("application/json", body))).await?;
            if json && !wait {
                return print_json(&op);
            }
            let id = field(&op, "id");
            if !wait {
                println!("scaling {name} from {} to {} replicas: operation {id}", field(&op, "from"), field(&op, "to"));
                println!("follow it with: tug op watch {id}");
                return Ok(());
            }
            let done = watch(&c, &id, json).await?;
            if json {
                return print_json(&done);
            }
            Ok(())
        }
        ServiceCommand::Logs { name, index, follow } => logs(&c, &name, index, follow).await,
        ServiceCommand::Delete(a) => {
            c.call(Method::DELETE, &format!("/services/{}", enc(&a.name)), None).await?;
            if a.json {
                return print_json(&json!({"deleted": a.name}));
            }
            println!("deleted service {}", a.name);
            Ok(())
        }
    }
}

const HEADER: [&str; 7] = ["NAME", "REPLICAS", "HEALTHY", "RUNTIME", "HEALTH", "PLACEMENT", "COMMAND"];

fn row(s: &Value) -> Vec<String> {
    let spec = &s["spec"];
    let runtime = match spec["docker"]["image"].as_str() {
        Some(image) => format!("docker {image}"),
        None => field(spec, "runtime"),
    };
    let command = match &spec["command"] {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
        v => v.as_str().unwrap_or_default().to_owned(),
    };
    let healthy = format!("{}/{}", field(&s["status"], "healthy"), field(&s["status"], "replicas"));
    vec![field(spec, "name"), field(spec, "replicas"), healthy, runtime, health(&spec["health"]), field(spec, "placement"), command]
}

/// A health check in a few words: `http :8080/healthz every 10s`.
fn health(h: &Value) -> String {
    let every = format!("every {}", h["interval"].as_str().unwrap_or("?"));
    match h["kind"].as_str() {
        Some("http") => format!("http :{}{} {every}", field(h, "port"), h["path"].as_str().unwrap_or("/")),
        Some("tcp") => format!("tcp :{} {every}", field(h, "port")),
        Some("exec") => format!("exec {every}"),
        _ => "-".into(),
    }
}

fn restart(spec: &Value) -> String {
    let r = &spec["restart"];
    format!("backoff {}..{}", field(r, "initial_delay"), field(r, "max_delay"))
}

async fn add(c: &Client, a: AddArgs) -> anyhow::Result<()> {
    let spec = match &a.file {
        Some(path) => {
            let text = read_file(path)?;
            let json = path.extension().is_some_and(|e| e == "json");
            // Parse and validate locally first: errors then name the file.
            let spec = if json { ServiceSpec::from_json(&text) } else { ServiceSpec::from_toml(&text) }
                .with_context(|| format!("in {}", path.display()))?;
            spec.validate().with_context(|| format!("in {}", path.display()))?.spec
        }
        None => spec_from_flags(&a)?,
    };
    let s = c.call(Method::POST, "/services", Some(("application/json", serde_json::to_string(&spec)?))).await?;
    if a.json {
        return print_json(&s);
    }
    println!("added service {} ({} replicas)", field(&s["spec"], "name"), field(&s["spec"], "replicas"));
    Ok(())
}

async fn update(
    c: &Client,
    name: &str,
    path: &std::path::Path,
    batch: Option<String>,
    health_timeout: Option<String>,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let text = read_file(path)?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let spec = if is_json { ServiceSpec::from_json(&text) } else { ServiceSpec::from_toml(&text) }.with_context(|| format!("in {}", path.display()))?;
    let spec = spec.validate().with_context(|| format!("in {}", path.display()))?.spec;
    if spec.name != name {
        bail!("{} names service {:?}, not {name:?}; a service cannot be renamed", path.display(), spec.name);
    }
    let url = format!("/services/{}{}", enc(name), rollout_query(batch.as_deref(), health_timeout.as_deref()));
    let s = c.call(Method::PUT, &url, Some(("application/json", serde_json::to_string(&spec)?))).await?;
    let release = s["release"].as_object().map(|_| field(&s["release"], "id"));
    match (&release, wait) {
        (Some(id), true) => {
            if !json {
                println!("updated {name}: its replicas move to the new spec through release {id}");
            }
            let done = super::release::watch(c, id, json).await?;
            if json {
                print_json(&done)?;
            }
            super::release::outcome(&done)
        }
        _ if json => print_json(&s),
        (Some(id), false) => {
            println!("updated {name}: its replicas move to the new spec through release {id} ({})", super::release::plan(&s["release"]));
            println!("follow it with: tug release watch {id}");
            Ok(())
        }
        (None, _) => {
            println!("updated {name} (version {}): nothing its replicas run changed, so none is replaced", field(&s, "version"));
            Ok(())
        }
    }
}

async fn restart_replicas(
    c: &Client,
    name: &str,
    batch: Option<String>,
    health_timeout: Option<String>,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let url = format!("/services/{}/restart{}", enc(name), rollout_query(batch.as_deref(), health_timeout.as_deref()));
    let r = c.call(Method::POST, &url, None).await?;
    let id = field(&r, "id");
    if wait {
        if !json {
            println!("restarting {name}: its replicas are replaced through release {id}");
        }
        let done = super::release::watch(c, &id, json).await?;
        if json {
            print_json(&done)?;
        }
        return super::release::outcome(&done);
    }
    if json {
        return print_json(&r);
    }
    println!("restarting {name}: its replicas are replaced through release {id}, batch {}", field(&r["plan"], "batch"));
    println!("follow it with: tug release watch {id}");
    Ok(())
}

/// `?batch=&health_timeout=` for a rollout, or nothing.
fn rollout_query(batch: Option<&str>, health_timeout: Option<&str>) -> String {
    let mut q = Vec::new();
    if let Some(b) = batch {
        q.push(format!("batch={}", enc(b)));
    }
    if let Some(t) = health_timeout {
        q.push(format!("health_timeout={}", enc(t)));
    }
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

fn spec_from_flags(a: &AddArgs) -> anyhow::Result<ServiceSpec> {
    let Some(name) = &a.name else {
        bail!("give a service file with -f FILE, or a NAME, --replicas N and a command after --");
    };
    let Some(replicas) = a.replicas else {
        bail!("give --replicas N, e.g. tug service add {name} --replicas 3 -- COMMAND");
    };
    if a.cmd.is_empty() {
        bail!("no command: put it after `--`, e.g. tug service add {name} --replicas 3 -- busybox httpd -f -p 8080");
    }
    let command = if a.cmd.len() == 1 { CommandSpec::Shell(a.cmd[0].clone()) } else { CommandSpec::Argv(a.cmd.clone()) };
    // Build through the JSON form so defaults and validation are the server's.
    let mut v = json!({ "name": name, "replicas": replicas, "command": command });
    if let Some(http) = &a.http {
        let (port, path) = match http.split_once('/') {
            Some((port, path)) => (port, format!("/{path}")),
            None => (http.as_str(), "/".to_owned()),
        };
        let port: i64 = port.parse().with_context(|| format!("--http {http:?}: write PORT or PORT/PATH, e.g. 8080/healthz"))?;
        v["health"] = json!({"kind": "http", "port": port, "path": path});
    }
    if let Some(port) = a.tcp {
        v["health"] = json!({"kind": "tcp", "port": port});
    }
    if let Some(image) = &a.image {
        v["runtime"] = "docker".into();
        v["docker"] = json!({"image": image});
    }
    let spec = ServiceSpec::from_json(&v.to_string())?;
    Ok(spec.validate()?.spec)
}

/// Prints one replica's log, or every replica's with each line prefixed `[INDEX] `; following,
/// all of them at once as they write.
async fn logs(c: &Client, name: &str, index: Option<u32>, follow: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let indices: Vec<u32> = match index {
        Some(i) => vec![i],
        None => {
            let s = c.get(&format!("/services/{}", enc(name))).await?;
            s["status"]["list"].as_array().into_iter().flatten().filter_map(|r| r["index"].as_u64()).map(|i| i as u32).collect()
        }
    };
    let mut streams = Vec::new();
    for i in indices {
        let resp = c.send(Method::GET, &format!("/services/{}/replicas/{i}/log?follow={follow}", enc(name)), None).await?;
        let prefix = index.is_none().then(|| format!("[{i}] "));
        streams.push(Box::pin(lines(resp.bytes_stream(), prefix)));
    }
    // Following: every replica's lines as they come, each whole; else one replica after another.
    let mut all: std::pin::Pin<Box<dyn futures::Stream<Item = anyhow::Result<Vec<u8>>>>> = if follow {
        Box::pin(futures::stream::select_all(streams))
    } else {
        Box::pin(futures::stream::iter(streams).flatten())
    };
    let mut out = std::io::stdout().lock();
    while let Some(line) = all.next().await {
        out.write_all(&line?)?;
        out.flush()?;
    }
    Ok(())
}

/// A log's bytes as whole lines (the last one as it ends), each with `prefix`; without a prefix,
/// the bytes as they come.
fn lines(
    body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    prefix: Option<String>,
) -> impl futures::Stream<Item = anyhow::Result<Vec<u8>>> {
    futures::stream::unfold((body, Vec::<u8>::new(), prefix, false), |(mut body, mut buf, prefix, mut done)| async move {
        use futures::StreamExt;
        loop {
            if let Some(p) = &prefix
                && let Some(nl) = buf.iter().position(|b| *b == b'\n')
            {
                let mut line = p.clone().into_bytes();
                line.extend(buf.drain(..=nl));
                return Some((Ok(line), (body, buf, prefix, done)));
            }
            if done {
                if buf.is_empty() {
                    return None;
                }
                let mut line = prefix.clone().unwrap_or_default().into_bytes();
                line.append(&mut buf);
                if prefix.is_some() {
                    line.push(b'\n');
                }
                return Some((Ok(line), (body, buf, prefix, done)));
            }
            match body.next().await {
                Some(Ok(chunk)) if prefix.is_none() => return Some((Ok(chunk.to_vec()), (body, buf, prefix, done))),
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(e.into()), (body, buf, prefix, true))),
                None => done = true,
            }
        }
    })
}

/// Runs a `tug op` subcommand.
pub async fn run_op(server: &str, cmd: OpCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        OpCommand::Show { id, json } => {
            let op = c.get(&format!("/operations/{}", enc(&id))).await?;
            if json {
                return print_json(&op);
            }
            println!("{}", op_line(&op));
            if let Some(p) = op["error"].as_str().or(op["problem"].as_str()) {
                println!("problem: {p}");
            }
            print_agents(&op);
            Ok(())
        }
        OpCommand::Watch { id } => watch(&c, &id, false).await.map(|_| ()),
    }
}

/// One line for an operation: a bar of healthy replicas out of the target, and the counts.
fn op_line(op: &Value) -> String {
    let to = op["to"].as_u64().unwrap_or(0);
    let healthy = op["healthy"].as_u64().unwrap_or(0);
    const WIDTH: u64 = 30;
    let filled = if to == 0 { WIDTH } else { (healthy.min(to) * WIDTH) / to };
    let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '-' }).collect();
    format!(
        "{} {} {} {}->{} [{bar}] healthy {healthy}/{to}  placed {}  started {}  failed {}  unplaced {}  replicas {}  {:.1}s",
        field(op, "id"),
        field(op, "service"),
        field(op, "state"),
        field(op, "from"),
        field(op, "to"),
        field(op, "placed"),
        field(op, "started"),
        field(op, "failed"),
        field(op, "unplaced"),
        field(op, "replicas"),
        op["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0
    )
}

fn print_agents(op: &Value) {
    let mut t = Table::new(&["AGENT", "PLACED", "STARTED", "HEALTHY"]);
    for (agent, p) in op["agents"].as_object().into_iter().flatten() {
        t.row(vec![agent.clone(), field(p, "placed"), field(p, "running"), field(p, "healthy")]);
    }
    table::print(&t);
}

/// Redraws an operation's line until it ends (`quiet`: prints nothing); fails if it was
/// superseded.
async fn watch(c: &Client, id: &str, quiet: bool) -> anyhow::Result<Value> {
    use std::io::Write;
    let tty = !quiet && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let op = c.get(&format!("/operations/{}", enc(id))).await?;
        let line = op_line(&op);
        let state = field(&op, "state");
        if tty {
            print!("\r\x1b[2K{line}");
            std::io::stdout().flush()?;
        }
        if state != "running" {
            if tty {
                println!();
            } else if !quiet {
                println!("{line}");
            }
            if !quiet {
                print_agents(&op);
            }
            if state == "superseded" {
                bail!("operation {id} was superseded by a newer scale of {}", field(&op, "service"));
            }
            if state == "failed" {
                bail!("operation {id} failed: {}", field(&op, "error"));
            }
            return Ok(op);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
