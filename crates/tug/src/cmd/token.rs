//! `tug token create|list|revoke` (needs an admin token) and `tug audit`: who changed what.

use serde_json::{Value, json};

use super::{field, print_json};
use crate::client::{Client, enc};
use crate::table::{self, Table};

/// `tug token` subcommands.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once and cannot be shown again.
    #[command(after_help = "Examples:\n  tug token create --role read --name grafana\n  \
        tug token create --role operate --scope label:team=data --ttl 30d")]
    Create {
        /// read (list and show), operate (also run, kill, pause, resume) or admin (everything).
        #[arg(long)]
        role: String,
        /// Only jobs with a label (label:KEY=VALUE) or an owner (owner:NAME).
        #[arg(long)]
        scope: Option<String>,
        /// How long it works, e.g. 12h or 30d (default: until revoked).
        #[arg(long)]
        ttl: Option<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id; it stops working at once.
    Revoke {
        /// The token's id (the part after `tug_`, as `tug token list` shows it).
        id: String,
    },
}

/// Runs a `tug token` subcommand.
pub async fn run(server: &str, cmd: TokenCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match cmd {
        TokenCommand::Create { role, scope, ttl, name, json } => {
            let body = json!({ "role": role, "scope": scope, "ttl": ttl, "name": name });
            let t = c.call(reqwest::Method::POST, "/tokens", Some(("application/json", body.to_string()))).await?;
            if json {
                return print_json(&t);
            }
            println!("{}", t["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} ({}{}): shown once; keep it secret. Use it with TUG_TOKEN=... or --token",
                field(&t, "id"),
                field(&t, "role"),
                t["scope"].as_object().map(|_| format!(", scope {}", scope_text(&t["scope"]))).unwrap_or_default()
            );
        }
        TokenCommand::List { json } => {
            let tokens = c.get("/tokens").await?;
            if json {
                return print_json(&tokens);
            }
            let mut t = Table::new(&["ID", "NAME", "ROLE", "SCOPE", "CREATED", "EXPIRES", "REVOKED"]);
            for tk in tokens.as_array().into_iter().flatten() {
                t.row(vec![
                    field(tk, "id"),
                    field(tk, "name"),
                    field(tk, "role"),
                    scope_text(&tk["scope"]),
                    field(tk, "created_at"),
                    field(tk, "expires_at"),
                    field(tk, "revoked_at"),
                ]);
            }
            table::print(&t);
        }
        TokenCommand::Revoke { id } => {
            c.delete(&format!("/tokens/{}", enc(&id))).await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}

/// A scope as `label:k=v` / `owner:x`, or `-`.
fn scope_text(s: &Value) -> String {
    if let Some(l) = s.get("label") {
        return format!("label:{}={}", field(l, "key"), field(l, "value"));
    }
    if let Some(o) = s.get("owner").and_then(Value::as_str) {
        return format!("owner:{o}");
    }
    "-".into()
}

/// Arguments of `tug audit`.
#[derive(clap::Args)]
pub struct AuditArgs {
    /// Entries since an instant (2026-11-27T10:00:00Z) or for an age (1h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only entries about this job.
    #[arg(long)]
    job: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the audit log, oldest first.
pub async fn audit(server: &str, a: AuditArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let mut q = format!("/audit?limit={}", a.limit.min(1000));
    if let Some(s) = &a.since {
        q.push_str(&format!("&since={}", enc(s)));
    }
    if let Some(j) = &a.job {
        q.push_str(&format!("&job={}", enc(j)));
    }
    let page = c.get(&q).await?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if a.json {
        return print_json(&items);
    }
    let mut t = Table::new(&["AT", "ACTOR", "FROM", "METHOD", "PATH", "JOB", "STATUS"]);
    for e in &items {
        t.row(vec![
            field(e, "at"),
            field(e, "actor"),
            field(e, "remote"),
            field(e, "method"),
            field(e, "path"),
            field(e, "job"),
            field(e, "status"),
        ]);
    }
    table::print(&t);
    Ok(())
}
