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

/// Prints the log. A log longer than one read returns is read on from where the server says.
pub async fn run(server: &str, a: LogsArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let mut offset = 0u64;
    loop {
        let path = format!("/runs/{}/log?follow={}&offset={offset}", a.run, a.follow);
        let resp = c.send(Method::GET, &path, None).await?;
        let next = resp.headers().get("x-tug-log-next-offset").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body = resp.bytes_stream();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk?)?;
            out.flush()?;
        }
        match next {
            Some(n) if n > offset => offset = n,
            _ => return Ok(()),
        }
    }
}
