//! `tug agent list|show|drain|undrain`: the agents a server knows; and the hidden `tug agent
//! shim`, the supervisor an agent starts each durable process run under.

use anyhow::Context;
use serde_json::Value;

use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// `tug agent` subcommands.
#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// List agents with their state, resources and runs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: crate::Conn,
    },
    /// Show one agent.
    Show {
        /// The agent's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: crate::Conn,
    },
    /// Stop placing new runs on an agent (its running runs go on).
    Drain {
        /// The agent's name.
        name: String,
        #[command(flatten)]
        conn: crate::Conn,
    },
    /// Place runs on a drained agent again.
    Undrain {
        /// The agent's name.
        name: String,
        #[command(flatten)]
        conn: crate::Conn,
    },
}

fn gib(b: &Value) -> String {
    format!("{:.1}", b.as_f64().unwrap_or(0.0) / (1u64 << 30) as f64)
}

fn row(a: &Value) -> Vec<String> {
    vec![
        field(a, "name"),
        field(a, "state"),
        format!("{}/{}", a["cpus"][1], a["cpus"][0]),
        format!("{}/{} GiB", gib(&a["mem"][1]), gib(&a["mem"][0])),
        field(a, "runs"),
        field(a, "warm_containers"),
        format!("{:.0}s ago", a["last_seen_secs"].as_f64().unwrap_or(0.0)),
    ]
}

const HEADER: [&str; 7] = ["NAME", "STATE", "CPUS USED/TOTAL", "MEM USED/TOTAL", "RUNS", "WARM", "LAST SEEN"];

/// `tug agent shim <RUN_DIR>`: supervises one durable run to its end. Its diagnostics go to
/// stderr, which the agent points at the run's checkpoint (`shim.log`).
pub async fn shim(run_dir: &std::path::Path) -> anyhow::Result<()> {
    let filter = std::env::var("TUG_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .try_init();
    tug_agent::runtime::shim::run(run_dir)
        .await
        .with_context(|| format!("supervising the run in {}", run_dir.display()))
}

/// Runs a `tug agent` subcommand.
pub async fn run(server: &str, cmd: AgentCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        AgentCommand::List { json, .. } => {
            let agents = c.get("/agents").await?;
            if json {
                return print_json(&agents);
            }
            let mut t = Table::new(&HEADER);
            for a in agents.as_array().into_iter().flatten() {
                t.row(row(a));
            }
            table::print(&t);
        }
        AgentCommand::Show { name, json, .. } => {
            let a = c.get(&format!("/agents/{}", enc(&name))).await?;
            if json {
                return print_json(&a);
            }
            let mut t = Table::new(&HEADER);
            t.row(row(&a));
            table::print(&t);
            if let Some(attrs) = a["attributes"].as_object() {
                println!("\nattributes:");
                for (k, v) in attrs {
                    println!("  {k} = {}", v.as_str().unwrap_or_default());
                }
            }
        }
        AgentCommand::Drain { name, .. } => {
            c.post(&format!("/agents/{}/drain", enc(&name))).await?;
            println!("draining {name}: it takes no new runs; running runs go on");
        }
        AgentCommand::Undrain { name, .. } => {
            c.post(&format!("/agents/{}/undrain", enc(&name))).await?;
            println!("{name} takes runs again");
        }
    }
    Ok(())
}
