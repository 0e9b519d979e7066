//! `tug logs RUN_ID [-f]`: a run's output, streamed while it runs with `-f`.

use std::io::Write;

use futures::StreamExt;
use reqwest::Method;

use crate::client::Client;

/// Arguments of `tug logs`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug logs 42\n  tug logs 42 -f")]
pub struct LogsArgs {
    /// The run id (see `tug runs JOB`).
    run: u64,
    /// Keep printing output until the run ends.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    conn: crate::Conn,
}

/// Prints the log.
pub async fn run(server: &str, a: LogsArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let path = format!("/runs/{}/log?follow={}", a.run, a.follow);
    let resp = c.send(Method::GET, &path, None).await?;
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(())
}
