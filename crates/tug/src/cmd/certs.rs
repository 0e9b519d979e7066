//! `tug certs init|agent|revoke`: a CA and certificates for a test or small install, so that the
//! API, the agent stream (with client certificates) and the CLI can use TLS without another tool;
//! and the revocation list of agents' certificates that must no longer join.

use std::path::PathBuf;

use anyhow::bail;
use tug_tls::certs::{self, Validity};

/// `tug certs` subcommands.
#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Make a CA, a server certificate (for localhost, 127.0.0.1, ::1 and each --name) and a
    /// client certificate per --agent in DIR. Refuses to overwrite files.
    #[command(after_help = "Examples:\n  tug certs init certs --name tug.example.com --name 10.0.0.1 --agent host1 --agent host2")]
    Init {
        /// The directory to write to (made if missing).
        dir: PathBuf,
        /// A DNS name or IP address clients and agents reach the server by (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// An agent to make a client certificate for, by its --name (repeatable).
        #[arg(long = "agent", value_name = "NAME")]
        agents: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Sign a client certificate for one more agent with the CA in DIR (made by `tug certs init`).
    #[command(after_help = "Examples:\n  tug certs agent certs host3")]
    Agent {
        /// The directory holding ca.pem and ca-key.pem.
        dir: PathBuf,
        /// The agent's name (its --name).
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke agent NAME's certificates (agent-NAME.pem in DIR, and those the server signed for it
    /// with --agent-ca-key, listed in DIR/issued.txt): writes DIR/crl.pem, the list the server
    /// takes with --agent-crl (or finds beside its --agent-ca-key) and reloads when it changes,
    /// cutting the agent off; records them in DIR/revoked.txt. A revoked name gets no new
    /// certificate from the server.
    #[command(after_help = "Examples:\n  tug certs revoke certs host2\n  tug server ... --agent-ca certs/ca.pem --agent-crl certs/crl.pem")]
    Revoke {
        /// The directory holding ca.pem, ca-key.pem and the agent's certificate.
        dir: PathBuf,
        /// The agent's name (its --name).
        name: String,
    },
}

fn check_name(name: &str, what: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
    if !ok {
        bail!("invalid {what} {name:?}: use letters, digits, '-' and '.' (a DNS name or an IP address)");
    }
    Ok(())
}

fn check_days(days: u32) -> anyhow::Result<()> {
    if days == 0 || days > 3650 {
        bail!("invalid --days {days}: give 1 to 3650");
    }
    Ok(())
}

/// Runs a `tug certs` subcommand.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, names, agents, days } => {
            check_days(days)?;
            for n in &names {
                check_name(n, "--name")?;
            }
            for a in &agents {
                check_name(a, "--agent")?;
            }
            let files = certs::init(&dir, &names, &agents, Validity::days(days))?;
            for f in &files {
                println!("{}", f.display());
            }
            let d = dir.display();
            eprintln!(
                "Next:\n  tug server --tls-cert {d}/server.pem --tls-key {d}/server-key.pem --agent-ca {d}/ca.pem ...\n  \
                 tug agent run --server https://SERVER:4401 --ca {d}/ca.pem --name NAME --cert {d}/agent-NAME.pem --key {d}/agent-NAME-key.pem\n  \
                 tug job list --server https://SERVER:4400 --ca {d}/ca.pem\nKeep {d}/ca-key.pem off the hosts; `tug certs agent {d} NAME` signs more agents with it. \
                 Or let the server sign them: add --agent-ca-key {d}/ca-key.pem --join-token-file join.token, and agents \
                 need only --ca {d}/ca.pem and the join token."
            );
            Ok(())
        }
        CertsCommand::Revoke { dir, name } => {
            check_name(&name, "agent name")?;
            let (crl, again) = certs::revoke_agent(&dir, &name)?;
            println!("{}", crl.display());
            let already = if again { " (it was revoked already)" } else { "" };
            eprintln!(
                "agent {name}'s certificate is revoked{already}: a server started with --agent-crl {} (or with its \
                 --agent-ca-key in {}) takes it within a second and cuts the agent off",
                crl.display(),
                dir.display()
            );
            Ok(())
        }
        CertsCommand::Agent { dir, name, days } => {
            check_days(days)?;
            check_name(&name, "agent name")?;
            for f in certs::issue_agent(&dir, &name, Validity::days(days))? {
                println!("{}", f.display());
            }
            Ok(())
        }
    }
}
