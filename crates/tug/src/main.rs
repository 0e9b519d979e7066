//! `tug`: the Tugboat command line. `tug up` runs everything on one machine; the other commands
//! talk to a running server over its REST API.

use clap::{Parser, Subcommand};

mod client;
mod cmd;
mod table;

const DEFAULT_SERVER: &str = "http://127.0.0.1:4400";

/// Tugboat schedules cron jobs and runs them fast.
#[derive(Parser)]
#[command(
    name = "tug",
    version,
    about = "Tugboat: a scheduler for cron jobs and services",
    after_help = "Examples:\n  tug up                                   start server, agent and store on this machine\n  tug job add hello --schedule '*/5 * * * * *' -- echo hello\n  tug job list\n  tug runs hello\n  tug logs 42 -f\n  tug net pool add blue --cidr 10.77.0.0/24 --vlan 77 --gateway 10.77.0.1\n  tug schedule next '0 9 * * MON-FRI' --tz Europe/Berlin --count 3"
)]
struct Cli {
    /// The Tugboat server to talk to.
    #[arg(long, global = true, env = "TUG_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// The API token to send (`tug token create` makes one; the server's first comes from
    /// `tug server --init-token`).
    #[arg(long, global = true, env = "TUG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server, a local agent and the embedded store in one process.
    Up(cmd::up::UpArgs),
    /// Run the server and the embedded store; agents on other hosts join with `tug agent run`.
    Server(cmd::server::ServerArgs),
    /// Create, inspect and control jobs.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// List the runs of a job, newest first.
    Runs(cmd::runs::RunsArgs),
    /// Inspect or kill one run.
    #[command(subcommand)]
    Run(cmd::runs::RunCommand),
    /// Print a run's output; -f follows it until the run ends.
    Logs(cmd::logs::LogsArgs),
    /// Run an agent (`tug agent run`), or list, inspect and drain agents.
    #[command(subcommand)]
    Agent(AgentCli),
    /// Container network: address pools (VLAN or VXLAN) and the addresses claimed from them.
    #[command(subcommand)]
    Net(cmd::net::NetCommand),
    /// Make, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Who changed what through the API, oldest first (admin).
    Audit(cmd::token::AuditArgs),
    /// Work with schedule expressions.
    #[command(subcommand)]
    Schedule(cmd::schedule::ScheduleCommand),
    /// Measure Tugboat on this machine.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

/// `tug agent`: run one, or manage the ones a server knows.
#[derive(Subcommand)]
enum AgentCli {
    /// Run an agent joined to a `tug server`; --server is the server's agent address
    /// (default http://127.0.0.1:4401).
    Run(cmd::agent_run::AgentRunArgs),
    #[command(flatten)]
    Manage(cmd::agent::AgentCommand),
    /// Supervise one durable process run; started by the agent, not by hand.
    #[command(hide = true)]
    Shim {
        /// The run's checkpoint directory.
        run_dir: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let up_matches = matches.subcommand_matches("up").cloned().unwrap_or_default();
    let server_given = matches.value_source("server").is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    if let Some(t) = cli.token.clone().filter(|t| !t.is_empty()) {
        client::use_token(t);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up(a) => cmd::up::run(a, &up_matches).await,
            Command::Job(c) => cmd::job::run(&cli.server, c).await,
            Command::Runs(a) => cmd::runs::list(&cli.server, a).await,
            Command::Run(c) => cmd::runs::run(&cli.server, c).await,
            Command::Logs(a) => cmd::logs::run(&cli.server, a).await,
            Command::Server(a) => cmd::server::run(a).await,
            Command::Agent(AgentCli::Run(a)) => {
                let server = if server_given { cli.server.as_str() } else { cmd::agent_run::DEFAULT_AGENT_SERVER };
                cmd::agent_run::run(server, a).await
            }
            Command::Agent(AgentCli::Manage(c)) => cmd::agent::run(&cli.server, c).await,
            Command::Agent(AgentCli::Shim { run_dir }) => cmd::agent::shim(&run_dir).await,
            Command::Net(c) => cmd::net::run(&cli.server, c).await,
            Command::Token(c) => cmd::token::run(&cli.server, c).await,
            Command::Audit(a) => cmd::token::audit(&cli.server, a).await,
            Command::Schedule(c) => cmd::schedule::run(c),
            Command::Bench(c) => cmd::bench::run(c).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text (or its last part)
/// its effect already quotes: library errors say their cause in their own message, and keep it as
/// their source too.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let last = text.rsplit(": ").next().unwrap_or(&text);
        if out.contains(&text) || out.contains(last) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
