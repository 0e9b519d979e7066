//! A durable run's checkpoint: one directory per attempt, `<dir>/<run>-<attempt>/`, that lets a
//! process run outlive the agent that started it and lets the next agent find out how it ended.
//!
//! ```text
//! launch.json   the agent, before anything starts: the launch, log dir and limit, grace, start time
//! shim.json     the shim, once it listens for stop requests: its pid and process start time,
//!               then also the command's pid
//! kill          the agent, to stop the run: the reason (JSON), followed by SIGTERM to the shim
//! outcome.json  the shim (or the agent, when the shim could not say): how the attempt ended
//! shim.log      the shim's own diagnostics
//! ```
//!
//! A docker run in a warm container has `launch.json`, `executor.json` (the container, its
//! executor's socket, the run's key there, where its output starts in the run log) and, once it
//! ended, `outcome.json`, all written by the agent. A docker run in a container of its own has
//! `container.json` instead (the container's name, where its output starts in the run log),
//! written before the container is created; the container carries the checkpoint's name in its
//! `tugboat.run` label, by which the next agent finds it again.
//!
//! Files are replaced atomically (write a temporary file, fsync it, rename, fsync the directory),
//! so a reader sees a whole file or none, also after a power loss: a checkpoint the agent acted on
//! is on disk. The agent removes the directory once the server has the attempt's final update.
//!
//! Docker runs through `docker exec` are not checkpointed: they end with their agent.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde::de::DeserializeOwned;
use tug_core::protocol::{KillReason, Launch};
use tug_core::run::RunId;

use crate::runtime::Outcome;

/// What the agent records before it starts an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// The launch.
    pub launch: Launch,
    /// The run log directory ([`tug_logs::LogFiles`]).
    pub log_dir: PathBuf,
    /// The most bytes of output kept in the run log.
    pub log_limit: u64,
    /// Time between SIGTERM and SIGKILL when the attempt is stopped.
    pub grace: Duration,
    /// When the agent started the attempt; its timeout counts from here.
    pub launched_at: Timestamp,
}

impl LaunchRecord {
    /// Time left before the attempt's timeout at `now` (`None`: no timeout).
    pub fn time_left(&self, now: Timestamp) -> Option<Duration> {
        let timeout = self.launch.task.timeout?.as_std();
        let elapsed = Duration::try_from(now.duration_since(self.launched_at)).unwrap_or_default();
        Some(timeout.saturating_sub(elapsed))
    }
}

/// The shim of a running attempt, as it recorded itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    /// The shim's pid.
    pub pid: u32,
    /// The shim's start time (field 22 of `/proc/<pid>/stat`), which tells it apart from a later
    /// process that got the same pid.
    pub start_time: u64,
    /// The command's pid, once it has started.
    pub child_pid: Option<u32>,
}

impl ShimRecord {
    /// Whether this shim is still running: a live process with its pid and start time.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// A docker run handed to the executor (dwait) in a warm container, as a detachable run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    /// The container's id.
    pub container: String,
    /// The executor's socket on the host.
    pub socket: PathBuf,
    /// The run's key in the container.
    pub key: String,
    /// Where this attempt's output starts in the run log.
    pub log_offset: u64,
}

/// A docker run in a container of its own (`mode = "per_run"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container's name (it carries the checkpoint's name in its `tugboat.run` label).
    pub container: String,
    /// Where this attempt's output starts in the run log.
    pub log_offset: u64,
}

/// How a docker run that outlives its agent is found again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// Handed to the executor of a warm container.
    Executor(ExecutorRecord),
    /// Running in a container of its own.
    Container(ContainerRecord),
}

/// A checkpoint file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not what this version of Tugboat writes.
    #[error("{} is damaged or from an incompatible version ({source}); remove the directory to forget the run", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One attempt's checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    dir: PathBuf,
}

const LAUNCH: &str = "launch.json";
const SHIM: &str = "shim.json";
const KILL: &str = "kill";
const OUTCOME: &str = "outcome.json";
const EXECUTOR: &str = "executor.json";
const CONTAINER: &str = "container.json";
const SHIM_LOG: &str = "shim.log";

impl Checkpoint {
    /// The checkpoint of `(run_id, attempt)` under `root`.
    pub fn new(root: &Path, run_id: RunId, attempt: u32) -> Checkpoint {
        Checkpoint { dir: root.join(format!("{run_id}-{attempt}")) }
    }

    /// The checkpoint in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Checkpoint {
        Checkpoint { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run and attempt a checkpoint directory's name stands for (`"42-1"`).
    pub fn parse_name(name: &str) -> Option<(RunId, u32)> {
        let (run, attempt) = name.split_once('-')?;
        Some((run.parse().ok()?, attempt.parse().ok()?))
    }

    /// Where the shim's diagnostics go.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join(SHIM_LOG)
    }

    /// Creates the directory and records the launch.
    pub async fn write_launch(&self, record: &LaunchRecord) -> Result<(), CheckpointError> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(|source| CheckpointError::Io { path: self.dir.clone(), source })?;
        // The new directory's own entry, so that it survives a crash with its files.
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent).await.map_err(|source| CheckpointError::Io { path: parent.to_path_buf(), source })?;
        }
        self.write(LAUNCH, record).await
    }

    /// The recorded launch.
    pub async fn read_launch(&self) -> Result<LaunchRecord, CheckpointError> {
        self.read(LAUNCH).await?.ok_or_else(|| CheckpointError::Io {
            path: self.dir.join(LAUNCH),
            source: io::Error::new(io::ErrorKind::NotFound, "no launch recorded"),
        })
    }

    /// Records the shim.
    pub async fn write_shim(&self, record: &ShimRecord) -> Result<(), CheckpointError> {
        self.write(SHIM, record).await
    }

    /// The recorded shim, if it has recorded itself.
    pub async fn read_shim(&self) -> Result<Option<ShimRecord>, CheckpointError> {
        self.read(SHIM).await
    }

    /// Records the executor a docker run was handed to.
    pub async fn write_executor(&self, record: &ExecutorRecord) -> Result<(), CheckpointError> {
        self.write(EXECUTOR, record).await
    }

    /// The executor a docker run was handed to, if it is one.
    pub async fn read_executor(&self) -> Result<Option<ExecutorRecord>, CheckpointError> {
        self.read(EXECUTOR).await
    }

    /// Records the container a docker run of its own is (to be) created as.
    pub async fn write_container(&self, record: &ContainerRecord) -> Result<(), CheckpointError> {
        self.write(CONTAINER, record).await
    }

    /// How a docker run that may have outlived its agent is found again: its executor, or its
    /// own container; `None` for other runs.
    pub async fn read_detached(&self) -> Result<Option<Detached>, CheckpointError> {
        if let Some(exec) = self.read_executor().await? {
            return Ok(Some(Detached::Executor(exec)));
        }
        Ok(self.read(CONTAINER).await?.map(Detached::Container))
    }

    /// Records why the attempt must stop.
    pub async fn write_kill(&self, reason: KillReason) -> Result<(), CheckpointError> {
        self.write(KILL, &reason).await
    }

    /// Why the attempt must stop, if that was asked.
    pub async fn read_kill(&self) -> Result<Option<KillReason>, CheckpointError> {
        self.read(KILL).await
    }

    /// Records how the attempt ended.
    pub async fn write_outcome(&self, outcome: &Outcome) -> Result<(), CheckpointError> {
        self.write(OUTCOME, outcome).await
    }

    /// How the attempt ended, once it has.
    pub async fn read_outcome(&self) -> Result<Option<Outcome>, CheckpointError> {
        self.read(OUTCOME).await
    }

    /// Removes the checkpoint. Blocking, but only a handful of small files.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), CheckpointError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec(value).map_err(|source| CheckpointError::Corrupt { path: path.clone(), source })?;
        let io = |source| CheckpointError::Io { path: path.clone(), source };
        {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
            f.write_all(&bytes).await.map_err(io)?;
            f.sync_all().await.map_err(io)?;
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        sync_dir(&self.dir).await.map_err(io)
    }

    async fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, CheckpointError> {
        let path = self.dir.join(name);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| CheckpointError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io { path, source }),
        }
    }
}

/// Makes a directory's entries (a file renamed into it, a directory made in it) durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// A live process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`);
/// `None` when there is no such process or it has exited (a zombie).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may itself contain spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    if matches!(fields.first(), Some(&("Z" | "X"))) {
        return None;
    }
    fields.get(19)?.parse().ok()
}
