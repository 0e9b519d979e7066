//! Logs of runs on remote agents. A run's log stays in its agent's data dir; the API reads it
//! through the agent's stream: [`RemoteLogs::read`] hands a request to the agent's connection
//! (see `agent_service.rs`), which sends a `LogRequest` and passes the `LogChunk` back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tug_core::run::RunId;

/// How long a log read waits for the agent.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One read of a remote log, answered on `reply`.
#[derive(Debug)]
pub struct LogFetch {
    /// The run.
    pub run_id: RunId,
    /// From this byte.
    pub offset: u64,
    /// At most this many bytes.
    pub max: u32,
    /// The bytes, or why they could not be read.
    pub reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

/// Why a remote log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RemoteLogError {
    /// The agent has no connection to this server now.
    #[error("the log is on agent {0}, which is not connected now; try again when it is back (`tug agent list`)")]
    NotConnected(String),
    /// The agent answered with an error.
    #[error("agent {agent} could not read the log: {message}")]
    Agent {
        /// The agent.
        agent: String,
        /// What it said.
        message: String,
    },
    /// No answer in time.
    #[error("agent {0} did not send the log within 10s")]
    Timeout(String),
}

/// The connected agents' log channels, by agent name.
#[derive(Clone, Default)]
pub struct RemoteLogs {
    agents: Arc<Mutex<HashMap<String, mpsc::Sender<LogFetch>>>>,
}

impl RemoteLogs {
    /// Registers an agent's connection; reads go to the returned receiver until the agent
    /// connects again (its newer connection takes over) or the receiver is dropped.
    pub fn connect(&self, agent: &str) -> mpsc::Receiver<LogFetch> {
        let (tx, rx) = mpsc::channel(64);
        self.lock().insert(agent.to_string(), tx);
        rx
    }

    /// Whether `agent` has ever connected to this server (its runs' logs are there, not here).
    pub fn knows(&self, agent: &str) -> bool {
        self.lock().contains_key(agent)
    }

    /// Reads up to `max` bytes of run `run_id`'s log from `offset`, from `agent`.
    pub async fn read(&self, agent: &str, run_id: RunId, offset: u64, max: u32) -> Result<Vec<u8>, RemoteLogError> {
        let not_connected = || RemoteLogError::NotConnected(agent.to_string());
        let tx = self.lock().get(agent).cloned().ok_or_else(not_connected)?;
        let (reply, answer) = oneshot::channel();
        tx.send(LogFetch { run_id, offset, max, reply }).await.map_err(|_| not_connected())?;
        match tokio::time::timeout(READ_TIMEOUT, answer).await {
            Err(_) => Err(RemoteLogError::Timeout(agent.to_string())),
            Ok(Err(_)) => Err(not_connected()),
            Ok(Ok(Err(message))) => Err(RemoteLogError::Agent { agent: agent.to_string(), message }),
            Ok(Ok(Ok(bytes))) => Ok(bytes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<LogFetch>>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }
}
