//! `tug net pool add|list|show|delete` and `tug net addr list`: the container network's address
//! pools and the addresses claimed from them.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// `tug net` subcommands.
#[derive(clap::Subcommand)]
pub enum NetCommand {
    /// Address pools: a CIDR on a VLAN or VXLAN segment.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Addresses claimed by instances.
    #[command(subcommand)]
    Addr(AddrCommand),
}

/// `tug net pool` subcommands.
#[derive(clap::Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    #[command(after_help = "Examples:\n  tug net pool add blue --cidr 10.77.0.0/24 --vlan 77 --gateway 10.77.0.1 --reserve 10.77.0.2-10.77.0.9\n  tug net pool add green --cidr 10.78.0.0/24 --vxlan 5078 --gateway 10.78.0.1 --select team=web")]
    Add(PoolAddArgs),
    /// List pools with how many addresses each hands out and has claimed.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one pool and its claimed addresses.
    Show {
        /// The pool's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a pool none of whose addresses is claimed.
    Delete {
        /// The pool's name.
        name: String,
    },
}

/// `tug net pool add`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("segment").required(true).args(["vlan", "vxlan"]))]
pub struct PoolAddArgs {
    /// The pool's name; jobs name it as `network = { pool = "NAME" }`.
    name: String,
    /// The addresses it hands out, e.g. 10.77.0.0/24.
    #[arg(long)]
    cidr: String,
    /// Join its containers on this VLAN (1-4094).
    #[arg(long)]
    vlan: Option<u64>,
    /// Join its containers on this VXLAN network (VNI 1-16777215).
    #[arg(long)]
    vxlan: Option<u64>,
    /// The containers' default route, inside the CIDR.
    #[arg(long)]
    gateway: String,
    /// Addresses never handed out: FIRST-LAST or one address (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    reserve: Vec<String>,
    /// Labels selecting the jobs and services that draw from it: key=value (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    select: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `tug net addr` subcommands.
#[derive(clap::Subcommand)]
pub enum AddrCommand {
    /// List claimed addresses: instance, IP, MAC and the agent that has it plumbed.
    List {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

const POOL_HEADER: [&str; 6] = ["NAME", "CIDR", "SEGMENT", "GATEWAY", "CLAIMED/USABLE", "SELECT"];

fn pool_row(p: &Value) -> Vec<String> {
    let select = p["select"].as_object().map_or_else(
        || "-".to_owned(),
        |m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","),
    );
    vec![
        field(p, "name"),
        field(p, "cidr"),
        format!("{} {}", field(&p["segment"], "kind"), field(&p["segment"], "id")),
        field(p, "gateway"),
        format!("{}/{}", field(p, "claimed"), field(p, "usable")),
        select,
    ]
}

fn addr_table(addrs: &Value) -> Table {
    let mut t = Table::new(&["POOL", "INSTANCE", "IP", "MAC", "AGENT"]);
    for a in addrs.as_array().into_iter().flatten() {
        t.row(vec![field(a, "pool"), field(a, "name"), field(a, "ip"), field(a, "mac"), field(a, "agent")]);
    }
    t
}

/// The body of `POST /net/pools` from the flags.
fn pool_body(a: &PoolAddArgs) -> anyhow::Result<Value> {
    let segment = match (a.vlan, a.vxlan) {
        (Some(id), None) => json!({"kind": "vlan", "id": id}),
        (None, Some(vni)) => json!({"kind": "vxlan", "id": vni}),
        _ => bail!("give one of --vlan ID or --vxlan VNI"),
    };
    let mut select = BTreeMap::new();
    for kv in &a.select {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--select {kv:?}: write key=value, e.g. --select team=web"))?;
        select.insert(k.to_owned(), v.to_owned());
    }
    Ok(json!({
        "name": a.name, "cidr": a.cidr, "segment": segment, "gateway": a.gateway,
        "reserve": a.reserve, "select": select,
    }))
}

/// Runs a `tug net` subcommand.
pub async fn run(server: &str, cmd: NetCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        NetCommand::Pool(PoolCommand::Add(a)) => {
            let body = pool_body(&a)?;
            let p = c.call(Method::POST, "/net/pools", Some(("application/json", body.to_string()))).await?;
            if a.json {
                return print_json(&p);
            }
            println!("added pool {} ({}, {} addresses to hand out)", a.name, field(&p, "cidr"), field(&p, "usable"));
        }
        NetCommand::Pool(PoolCommand::List { json }) => {
            let pools = c.get("/net/pools").await?;
            if json {
                return print_json(&pools);
            }
            let mut t = Table::new(&POOL_HEADER);
            for p in pools.as_array().into_iter().flatten() {
                t.row(pool_row(p));
            }
            table::print(&t);
        }
        NetCommand::Pool(PoolCommand::Show { name, json }) => {
            let p = c.get(&format!("/net/pools/{}", enc(&name))).await?;
            let addrs = c.get(&format!("/net/addresses?pool={}", enc(&name))).await?;
            if json {
                return print_json(&json!({"pool": p, "addresses": addrs}));
            }
            let mut t = Table::new(&POOL_HEADER);
            t.row(pool_row(&p));
            table::print(&t);
            if let Some(r) = p["reserve"].as_array() {
                let r: Vec<&str> = r.iter().filter_map(Value::as_str).collect();
                println!("reserved: {}", r.join(", "));
            }
            println!("\naddresses:");
            table::print(&addr_table(&addrs));
        }
        NetCommand::Pool(PoolCommand::Delete { name }) => {
            c.call(Method::DELETE, &format!("/net/pools/{}", enc(&name)), None).await?;
            println!("deleted pool {name}");
        }
        NetCommand::Addr(AddrCommand::List { pool, json }) => {
            let path = match &pool {
                Some(p) => format!("/net/addresses?pool={}", enc(p)),
                None => "/net/addresses".to_owned(),
            };
            let addrs = c.get(&path).await?;
            if json {
                return print_json(&addrs);
            }
            table::print(&addr_table(&addrs));
        }
    }
    Ok(())
}
