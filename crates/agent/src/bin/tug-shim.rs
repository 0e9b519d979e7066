//! The shim of durable process runs on its own (`tug-shim [agent shim] <RUN_DIR>`), for this
//! crate's tests; `tug agent shim <RUN_DIR>` runs the same [`tug_agent::runtime::shim::run`].

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1 + tug_agent::runtime::shim::SHIM_ARGS.len()) else {
        eprintln!("usage: tug-shim agent shim <RUN_DIR>");
        return ExitCode::FAILURE;
    };
    match tug_agent::runtime::shim::run(std::path::Path::new(&dir)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
