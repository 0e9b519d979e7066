//! `tug cluster`: the server group: its members, which one leads, its term and epoch, and how
//! long it has led. A server on its own shows as a group of one.

use serde_json::Value;

use super::{field, print_json};
use crate::client::Client;
use crate::table::{self, Table};

/// Arguments of `tug cluster`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug cluster\n  tug cluster --json --server http://10.0.0.2:4400")]
pub struct ClusterArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: crate::Conn,
}

fn secs(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |s| format!("{s:.1}s"))
}

/// Prints the group.
pub async fn run(server: &str, args: ClusterArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let status = c.get("/cluster").await?;
    if args.json {
        return print_json(&status);
    }
    println!(
        "leader: {}  term: {}  epoch: {}  leading for: {}  lease TTL: {}",
        field(&status, "leader"),
        field(&status, "term"),
        field(&status, "epoch"),
        secs(&status["leader_for_secs"]),
        secs(&status["lease_ttl_secs"]),
    );
    println!("store: {}  answered by: {} ({})", field(&status, "store"), field(&status, "this"), field(&status, "role"));
    if status["fenced_writes"].as_u64().unwrap_or(0) > 0 {
        println!("writes refused after losing the lead (fenced): {}", status["fenced_writes"]);
    }
    println!();
    let mut t = Table::new(&["NAME", "ROLE", "API", "AGENTS", "REVISION", "LEASE LEFT"]);
    for m in status["members"].as_array().into_iter().flatten() {
        t.row(vec![
            field(m, "name"),
            if m["leader"].as_bool() == Some(true) { "leader".into() } else { "follower".into() },
            field(m, "api"),
            field(m, "agent"),
            field(m, "revision"),
            m["lease_ttl_left"].as_i64().map_or_else(|| "-".into(), |s| format!("{s}s")),
        ]);
    }
    table::print(&t);
    Ok(())
}
