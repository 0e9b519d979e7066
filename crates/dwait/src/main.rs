//! `dwait`: the entrypoint (PID 1) of Tugboat's warm containers.

fn main() {}
