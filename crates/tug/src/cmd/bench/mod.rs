//! `tug bench`: measurements printed as tables (or `--json`), never run as CI tests. One file per
//! benchmark; what they share is in `common.rs`.
//!
//! - `fire`: N jobs firing every second through the real scheduler and SQLite store.
//! - `launch`: one trivial docker job launched three ways (executor, exec, container per run).
//! - `net`: containers (dwait in namespaces) asking dresponse for their network at once.
//! - `failover`: three servers on etcd; the leader killed again and again, failover times.
//! - `agents`: a real `tug server` and N `tug agent run --noop` processes, launches end to end.
//! - `scale`: a service scaled to many replicas over N no-op agents through the scale API.
//! - `ui`: web UI page render times with many jobs stored; the event stream to many subscribers.

mod agents;
mod common;
mod failover;
mod fire;
mod launch;
mod net;
mod scale;
mod ui;

pub use agents::AgentsArgs;
pub use failover::FailoverArgs;
pub use fire::FireArgs;
pub use launch::LaunchArgs;
pub use net::NetArgs;
pub use scale::ScaleArgs;
pub use ui::UiArgs;

/// `tug bench` subcommands.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fire N jobs every second through the real scheduler and a store (SQLite by default) with a
    /// no-op runtime.
    #[command(after_help = "Examples:\n  tug bench fire --jobs 10000 --seconds 10\n  tug bench fire --jobs 100000 --seconds 10 --burst --json\n  tug bench fire --jobs 100000 --seconds 10 --store memory\n  tug bench fire --jobs 1000000 --period 60s --runs-in-store 10000000 --history-reads --recovery\n\nBy default fire instants are spread evenly over each second (steady load); --burst puts every\njob on the same instant, the top-of-the-minute herd. --store memory runs the same scheduler over\nthe in-memory store: nothing is durable, so it is the ceiling the durable stores compare against.")]
    Fire(FireArgs),
    /// Launch one trivial docker job three ways: warm through the in-container executor, warm
    /// through docker exec, and a container per run.
    #[command(after_help = "Examples:\n  tug bench launch --runs 1000\n  tug bench launch --runs 10000 --exec-runs 100 --per-run-runs 20 --json\n\nNeeds a Docker daemon, the static dwait (TUG_DWAIT or next to tug) and a local image with\n`true` (default tugboat-test-busybox:1, built by scripts/test). \"fire\" is the moment the launch is\nhanded to the runtime; \"started\" when the process runs; \"finished\" when its outcome is known.")]
    Launch(LaunchArgs),
    /// Start a real `tug server` and N `tug agent run --noop` processes on 127.0.0.1, load J
    /// jobs firing every second through the API, and measure launches end to end.
    #[command(after_help = "Examples:\n  tug bench agents\n  tug bench agents --agents 50 --jobs 5000 --seconds 20 --json\n  tug bench agents --agents 50 --jobs 10000 --spread\n\nEvery job is `* * * * * *` (all on the same instant of each second; with --spread, each at its own\noffset into the second) and asks for 0.01 cpus, so\nall fit. No-op agents answer every launch at once: what is measured is the server, the store,\nthe agent protocol and the processes' scheduling on this machine.")]
    Agents(AgentsArgs),
    /// Kill the leader of a group of three servers on etcd again and again while jobs fire every
    /// second: failover times, and the fault tests' checks (no run key twice, no second lost).
    #[command(after_help = "Examples:\n  tug bench failover --kills 10\n  tug bench failover --kills 100 --jobs 50 --json\n\nNeeds the etcd binary (Debian etcd-server). A failover is timed from the kill to the moment a\nnew leader answers as leader.")]
    Failover(FailoverArgs),
    /// Plumb N containers into a VXLAN pool at once (the real dwait and dresponse, a host as a
    /// network namespace) and measure network-ready time and containers plumbed per second,
    /// beside the time Docker's bridge network takes.
    #[command(after_help = "Examples:
  tug bench net --containers 100
  tug bench net --containers 500 --docker 0 --json

Needs root, the static dwait (TUG_DWAIT or next to tug) and, for the Docker comparison, a
local image with `sleep` (default tugboat-test-busybox:1). Addresses are chosen in-process, as
the server chooses them; a real agent adds one round trip on its stream.")]
    Net(NetArgs),
    /// Time the web UI's pages with many jobs in the store (first page, a search, a deep page, a
    /// filter, a job), then the event stream's throughput to many subscribers while jobs fire.
    #[command(after_help = "Examples:\n  tug bench ui\n  tug bench ui --jobs 10000 --requests 50 --subscribers 10 --json\n\nRequests are sent one at a time from this process to the server in it; the no-op runtime\nfinishes every run at once.")]
    Ui(UiArgs),
    /// Start a real `tug server` and N `tug agent run --noop` processes, scale one service from 0
    /// to R replicas and back through the scale API, and time the operation: all placed, started,
    /// healthy.
    #[command(after_help = "Examples:\n  tug bench scale\n  tug bench scale --agents 50 --replicas 1000 --json\n\nNo-op agents hold each replica until it is stopped; the service has no health check, so a\nrunning replica counts as healthy: what is measured is the scheduler, placement and the agent\nprotocol.")]
    Scale(ScaleArgs),
}


/// Runs a benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fire(a) => fire::run(a).await,
        BenchCommand::Launch(a) => launch::run(a).await,
        BenchCommand::Agents(a) => agents::run(a).await,
        BenchCommand::Failover(a) => failover::run(a).await,
        BenchCommand::Net(a) => net::run(a).await,
        BenchCommand::Ui(a) => ui::run(a).await,
        BenchCommand::Scale(a) => scale::run(a).await,
    }
}
