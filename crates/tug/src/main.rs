//! `tug`: the Tugboat command line. `tug up` runs everything on one machine; the other commands
//! talk to a running server over its REST API.

use clap::{Parser, Subcommand};

mod client;
mod cmd;
mod events;
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
    /// The server the client commands talk to; each of them also takes it after its name.
    #[arg(long, hide = true, value_name = "URL")]
    server: Option<String>,
    /// The API token the client commands send; each of them also takes it after its name.
    #[arg(long, hide = true, value_name = "TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The server a client command talks to. Only the client commands take it: `tug up`, `tug server`
/// and `tug agent run` (which has its own `--server`, the agent endpoint) do not.
#[derive(clap::Args)]
pub struct Conn {
    /// The Tugboat server's API, as `tug up` or `tug server` print it.
    #[arg(long = "server", id = "server", global = true, env = "TUG_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    // Read through the ArgMatches (see `client_server`), so that `tug --server URL job list` works too.
    #[allow(dead_code)]
    server: String,
    /// The API token to send (`tug token create` makes one; a server's first comes from
    /// `tug server --init-token`).
    #[arg(long = "token", id = "token", global = true, env = "TUG_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    // Read through the ArgMatches (see `client_token`), like `server`.
    #[allow(dead_code)]
    token: Option<String>,
    /// Trust this CA (PEM) for an https:// server's certificate, besides the system's roots (the
    /// ca.pem of `tug certs init`).
    #[arg(long = "ca", id = "ca", global = true, env = "TUG_CA", value_name = "FILE")]
    // Read through the ArgMatches (see `client_ca`), like `server`.
    #[allow(dead_code)]
    ca: Option<std::path::PathBuf>,
}

/// `tug job`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct JobCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::job::JobCommand,
}

/// `tug net`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct NetCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::net::NetCommand,
}

/// `tug service`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct ServiceCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::service::ServiceCommand,
}

/// `tug op`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct OpCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::service::OpCommand,
}

/// `tug release`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct ReleaseCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::release::ReleaseCommand,
}

/// `tug token`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct TokenCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::token::TokenCommand,
}

/// `tug audit`: the server to talk to, and the filters.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug audit --since 1h\n  tug audit --job backup --since 2026-11-01T00:00:00Z")]
struct AuditCli {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    args: cmd::token::AuditArgs,
}

/// `tug run`: the server to talk to, and the subcommand.
#[derive(clap::Args)]
struct RunCli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: cmd::runs::RunCommand,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server, a local agent and the embedded store in one process.
    Up(cmd::up::UpArgs),
    /// Run the server and the embedded store; agents on other hosts join with `tug agent run`.
    Server(cmd::server::ServerArgs),
    /// Create, inspect, change and control jobs.
    Job(JobCli),
    /// List the runs of a job, newest first.
    Runs(cmd::runs::RunsArgs),
    /// Services: replicas of a long-running command with a health check.
    Service(ServiceCli),
    /// Follow an asynchronous operation (a service's scale).
    Op(OpCli),
    /// Staged releases of a service: smoke, bake, rollout; brake, resume, retry, revoke.
    Release(ReleaseCli),
    /// Inspect or kill one run.
    Run(RunCli),
    /// Print a run's output; -f follows it until the run ends.
    Logs(cmd::logs::LogsArgs),
    /// Follow what happens to jobs, runs and agents, live.
    Events(cmd::events::EventsArgs),
    /// Run an agent (`tug agent run`), or list, inspect and drain agents.
    #[command(subcommand)]
    Agent(AgentCli),
    /// Container network: address pools (VLAN or VXLAN) and the addresses claimed from them.
    Net(NetCli),
    /// The server group: members, leader, term and epoch (`tug server --store etcd://...`).
    Cluster(cmd::cluster::ClusterArgs),
    /// Make, list and revoke API tokens (admin).
    Token(TokenCli),
    /// Who changed what through the API, oldest first (admin).
    Audit(AuditCli),
    /// Make a CA and certificates for TLS (API, agents with client certificates).
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
    /// Work with schedule expressions.
    #[command(subcommand)]
    Schedule(cmd::schedule::ScheduleCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::CompletionsArgs),
    /// The reference of every command's flags, variables and defaults.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Measure Tugboat on this machine.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

/// `tug agent`: run one, or manage the ones a server knows.
#[derive(Subcommand)]
enum AgentCli {
    /// Run an agent joined to a `tug server`; its --server is the server's agent endpoint
    /// (--agent-listen), not the API.
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
    let server = client_server(&matches);
    if let Some(t) = client_token(&matches) {
        client::use_token(t);
    }
    // reqwest needs a crypto provider installed before any client is built.
    tug_tls::provider();
    if let Some(ca) = client_ca(&matches)
        && let Err(e) = client::use_ca(&ca)
    {
        eprintln!("error: --ca: {}", report(&e));
        return std::process::ExitCode::FAILURE;
    }
    // An agent (and a run's shim) passes messages between the server's stream and its runs. On
    // a multi-threaded runtime the stream's loop (in `block_on`, on this thread) and the runs'
    // tasks (on the workers) woke each other across threads for every message, which cost more
    // CPU than the messages themselves: one thread does this work with a fraction of the
    // wake-ups. Blocking work still goes to the blocking pool.
    let mut builder = match &cli.command {
        Command::Agent(AgentCli::Run(_) | AgentCli::Shim { .. }) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up(a) => cmd::up::run(a, &up_matches).await,
            Command::Job(c) => cmd::job::run(&server, c.cmd).await,
            Command::Service(c) => cmd::service::run(&server, c.cmd).await,
            Command::Op(c) => cmd::service::run_op(&server, c.cmd).await,
            Command::Release(c) => cmd::release::run(&server, c.cmd).await,
            Command::Runs(a) => cmd::runs::list(&server, a).await,
            Command::Run(c) => cmd::runs::run(&server, c.cmd).await,
            Command::Logs(a) => cmd::logs::run(&server, a).await,
            Command::Events(a) => cmd::events::run(&server, a).await,
            Command::Server(a) => cmd::server::run(a).await,
            Command::Agent(AgentCli::Run(a)) => cmd::agent_run::run(a).await,
            Command::Agent(AgentCli::Manage(c)) => cmd::agent::run(&server, c).await,
            Command::Agent(AgentCli::Shim { run_dir }) => cmd::agent::shim(&run_dir).await,
            Command::Net(c) => cmd::net::run(&server, c.cmd).await,
            Command::Cluster(a) => cmd::cluster::run(&server, a).await,
            Command::Token(c) => cmd::token::run(&server, c.cmd).await,
            Command::Audit(c) => cmd::token::audit(&server, c.args).await,
            Command::Schedule(c) => cmd::schedule::run(c),
            Command::Certs(c) => cmd::certs::run(c),
            Command::Bench(c) => cmd::bench::run(c).await,
            Command::Completions(a) => cmd::completions::run(a, Cli::command()),
            Command::Config(c) => cmd::config::run(c, Cli::command()),
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

/// The API a client command talks to: its own `--server`, else one given before the command
/// (`tug --server URL job list`), else `TUG_SERVER`, else the default.
fn client_server(matches: &clap::ArgMatches) -> String {
    use clap::parser::ValueSource;
    let top = matches.try_get_one::<String>("server").ok().flatten().cloned();
    // The innermost command that has the argument holds its value and where it came from.
    let mut inner: Option<(String, Option<ValueSource>)> = None;
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        if let Ok(Some(v)) = sub.try_get_one::<String>("server") {
            inner = Some((v.clone(), sub.value_source("server")));
        }
        m = sub;
    }
    match (inner, top) {
        (Some((v, Some(ValueSource::CommandLine))), _) => v,
        (_, Some(t)) => t,
        (Some((v, _)), None) => v,
        (None, None) => std::env::var("TUG_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.to_string()),
    }
}

/// The token a client command sends: the innermost `--token` given on the command line, else
/// one given before the command's name (`tug --token T job list`), else `TUG_TOKEN`.
fn client_token(matches: &clap::ArgMatches) -> Option<String> {
    use clap::parser::ValueSource;
    let top = matches.try_get_one::<String>("token").ok().flatten().cloned();
    let mut inner: Option<(String, Option<ValueSource>)> = None;
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        if let Ok(Some(v)) = sub.try_get_one::<String>("token") {
            inner = Some((v.clone(), sub.value_source("token")));
        }
        m = sub;
    }
    let found = match (inner, top) {
        (Some((v, Some(ValueSource::CommandLine))), _) => Some(v),
        (_, Some(t)) => Some(t),
        (Some((v, _)), None) => Some(v),
        (None, None) => None,
    };
    found.or_else(|| std::env::var("TUG_TOKEN").ok()).filter(|t| !t.is_empty())
}

/// The CA file a client command trusts: the innermost `--ca` given, else `TUG_CA`.
fn client_ca(matches: &clap::ArgMatches) -> Option<std::path::PathBuf> {
    let mut found = None;
    let mut m = matches;
    let mut parent = "";
    while let Some((name, sub)) = m.subcommand() {
        // `tug agent run --ca` is the agent's own (for the agent endpoint), read by the command.
        if (parent, name) == ("agent", "run") {
            return None;
        }
        if let Ok(Some(v)) = sub.try_get_one::<std::path::PathBuf>("ca") {
            found = Some(v.clone());
        }
        parent = name;
        m = sub;
    }
    found.or_else(|| std::env::var_os("TUG_CA").map(Into::into)).filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty())
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
