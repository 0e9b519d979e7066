//! What a job's container looks like: the spec hash that decides when a warm container must be
//! replaced, Tugboat's labels, container names, and the argv/env of a run.

use std::collections::HashMap;
use std::path::Path;

use tug_core::job::DockerSpec;
use tug_core::protocol::{Launch, Task};

use super::error::ExecutorCheckError;

/// Label keys on every container Tugboat creates.
pub mod label {
    /// The job's name.
    pub const JOB: &str = "tugboat.job";
    /// Hash of the container settings ([`super::spec_hash`]).
    pub const SPEC: &str = "tugboat.spec";
    /// The agent that owns it.
    pub const AGENT: &str = "tugboat.agent";
    /// `warm` or `per-run`.
    pub const MODE: &str = "tugboat.mode";
    /// `executor` (dwait is PID 1) or `exec` (runs go through docker exec).
    pub const PATH: &str = "tugboat.path";
    /// Creation time, Unix milliseconds (for `max_age` after adoption).
    pub const CREATED: &str = "tugboat.created";
    /// Host directory holding the executor's socket.
    pub const DIR: &str = "tugboat.dir";
    /// A networked container's instance (its address's claim name), so a restarted agent that
    /// adopts it still tears its network down with it.
    pub const NET_INSTANCE: &str = "tugboat.net.instance";
    /// A networked container's pool.
    pub const NET_POOL: &str = "tugboat.net.pool";
    /// A checkpointed per-run container's attempt, `RUN-ATTEMPT` (its checkpoint's name), by
    /// which a restarted agent finds it again.
    pub const RUN: &str = "tugboat.run";
    /// The checkpoint directory of a checkpointed per-run container's agent (two agents of the
    /// same name on one Docker host keep apart by it).
    pub const CHECKPOINTS: &str = "tugboat.checkpoints";
}

/// A stable hash (FNV-1a, 64 bits) of everything that is fixed when a container is created:
/// image, entrypoint, volumes, network and resource limits. Runs' commands, env, workdir and user
/// are per run and not part of it.
pub fn spec_hash(task: &Task, default_network: &str) -> String {
    let d = task.docker.as_ref();
    let mut key = serde_json::json!({
        "image": d.map(|d| &d.image),
        "entrypoint": d.and_then(|d| d.entrypoint.as_ref()),
        "volumes": d.map(|d| &d.volumes),
        "network": d.and_then(|d| d.network.clone()).unwrap_or_else(|| default_network.to_string()),
        "resources": task.resources,
    });
    if let Some(net) = &task.network {
        key["pool"] = serde_json::json!(net.pool);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A container name: `tug-JOB-NONCE`, the job part reduced to what Docker allows.
pub fn container_name(job: &str, nonce: &str) -> String {
    let clean: String = job
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' })
        .take(40)
        .collect();
    format!("tug-{clean}-{nonce}")
}

/// A short unique suffix.
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let x = (t ^ (u64::from(std::process::id()) << 32)).wrapping_add(N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    format!("{:08x}", (x ^ (x >> 29)) as u32)
}

/// The argv of a run: the job's entrypoint override, then its command.
pub fn argv(task: &Task) -> Vec<String> {
    let mut argv = task.docker.as_ref().and_then(|d| d.entrypoint.clone()).unwrap_or_default();
    argv.extend(task.command.argv());
    argv
}

/// The run's environment: the job's, then Tugboat's (which the job cannot override).
pub fn env(launch: &Launch) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = launch.task.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.retain(|(k, _)| !k.starts_with("TUG_"));
    env.push(("TUG_JOB".into(), launch.job.clone()));
    env.push(("TUG_RUN_ID".into(), launch.run_id.to_string()));
    env.push(("TUG_ATTEMPT".into(), launch.attempt.to_string()));
    env.push(("TUG_SCHEDULED_AT".into(), launch.scheduled_at.to_string()));
    env
}

/// Host settings shared by warm and per-run containers: binds, limits, network.
pub fn host_config(task: &Task, default_network: &str, extra_binds: Vec<String>) -> bollard::models::HostConfig {
    let d: Option<&DockerSpec> = task.docker.as_ref();
    let mut binds = extra_binds;
    binds.extend(d.map(|d| d.volumes.clone()).unwrap_or_default());
    let mem = task.resources.mem.map(|m| m.0 as i64);
    bollard::models::HostConfig {
        binds: Some(binds),
        memory: mem,
        // No swap beyond the limit: past `mem` the run is OOM-killed, as the spec promises.
        memory_swap: mem,
        nano_cpus: task.resources.cpus.map(|c| (c * 1e9) as i64),
        network_mode: Some(d.and_then(|d| d.network.clone()).unwrap_or_else(|| default_network.to_string())),
        ..Default::default()
    }
}

/// Tugboat's labels for a container of `job`.
pub fn labels(job: &str, hash: &str, agent: &str, mode: &str, path: &str, dir: Option<&Path>) -> HashMap<String, String> {
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let mut l = HashMap::from([
        (label::JOB.to_string(), job.to_string()),
        (label::SPEC.to_string(), hash.to_string()),
        (label::AGENT.to_string(), agent.to_string()),
        (label::MODE.to_string(), mode.to_string()),
        (label::PATH.to_string(), path.to_string()),
        (label::CREATED.to_string(), now_ms.to_string()),
    ]);
    if let Some(dir) = dir {
        l.insert(label::DIR.to_string(), dir.display().to_string());
    }
    l
}

/// Checks that `path` is an executable ELF file without a program interpreter (statically
/// linked, so it runs in any image); why not otherwise.
pub fn check_static(path: &Path) -> Result<(), ExecutorCheckError> {
    let bytes = std::fs::read(path).map_err(|source| ExecutorCheckError::Unreadable { path: path.to_owned(), source })?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err(ExecutorCheckError::NotElf(path.to_owned()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff.saturating_add(i * phentsize);
        if o.saturating_add(4) > bytes.len() {
            return Err(ExecutorCheckError::Truncated(path.to_owned()));
        }
        // PT_INTERP: the binary needs a dynamic loader that an arbitrary image may not have.
        if u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) == 3 {
            return Err(ExecutorCheckError::Dynamic(path.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod executor_check {
    use super::*;

    /// Each reason a file cannot be the executor is its own variant, with a message that says
    /// which file and what to do.
    #[test]
    fn a_file_that_cannot_be_the_executor_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = check_static(&missing).unwrap_err();
        assert!(matches!(e, ExecutorCheckError::Unreadable { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("cannot read the executor {}", missing.display())), "{e}");

        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hello, this is not an ELF binary at all; it is a shell script\n").unwrap();
        let e = check_static(&script).unwrap_err();
        assert!(matches!(e, ExecutorCheckError::NotElf(_)), "{e:?}");

        // A 64-bit ELF header whose program headers lie past the end of the file.
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[0x20..0x28].copy_from_slice(&4096u64.to_le_bytes());
        elf[0x36] = 56;
        elf[0x38] = 1;
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &elf).unwrap();
        assert!(matches!(check_static(&cut), Err(ExecutorCheckError::Truncated(_))));

        // This test binary itself is linked dynamically (it has a program interpreter).
        let me = std::env::current_exe().unwrap();
        let e = check_static(&me).unwrap_err();
        assert!(matches!(e, ExecutorCheckError::Dynamic(_)), "{e:?}");
        assert!(e.to_string().contains("build it static"), "{e}");
    }
}
