//! Generates the agent protocol's Rust code. protoc comes from `protoc-bin-vendored`, so a plain
//! `cargo build` needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &["proto/agent.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/agent.proto");
    Ok(())
}
