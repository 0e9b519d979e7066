//! One module per top-level command.

pub mod agent;
pub mod agent_run;
pub mod bench;
pub mod certs;
pub mod cluster;
pub mod completions;
pub mod config;
pub mod events;
pub mod host_net;
pub mod job;
pub mod logs;
pub mod net;
pub mod release;
pub mod runs;
pub mod schedule;
pub mod security;
pub mod server;
pub mod service;
pub mod token;
pub mod up;

/// Prints JSON, pretty.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON field as display text ("-" when absent).
pub fn field(v: &serde_json::Value, key: &str) -> String {
    match &v[key] {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The default data directory: `$XDG_DATA_HOME/tug`, `~/.local/share/tug`, or `./tug-data`.
pub fn default_data_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("tug");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/tug");
    }
    PathBuf::from("tug-data")
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs to stderr through `tracing`, filtered by `filter` (e.g. `info`, `tug_server=debug`).
pub fn init_logs(filter: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    // Logs to stderr, like the banner; stdout stays for what commands print.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    Ok(())
}

/// Binds the API's address, saying what to do when it is taken.
pub async fn bind_api(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another tug already running? pick another with --listen"))
}
