//! `dwait`: Tugboat's in-container executor. It runs as PID 1 of a warm container, listens on a
//! unix socket in a directory the agent bind-mounts, and runs each run the agent hands it.
//!
//! - [`net`]: waiting for the network: the question to `dresponse` and its answer.
//! - [`protocol`]: the frames both sides exchange over one connection per run.
//! - The binary (`main.rs`) is the server; the agent's docker runtime is the client.

pub mod net;
pub mod protocol;
