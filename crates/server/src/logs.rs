//! Run logs as the server sees them: one interface, [`RunLogs`], for every reader (the API's
//! `/runs/{id}/log`, follow included; webhook payloads' log tail) and for removal (retention by
//! count, job deletion).
//!
//! A run's log lives with the agent that ran it (`tug_logs`, written by the agent). The source is
//! chosen by the run's agent:
//!
//! | the run's agent                                  | reads                        | removals                     |
//! |--------------------------------------------------|------------------------------|------------------------------|
//! | shares this process's data dir ([`RunLogs::share_dir`]) | the files                  | the files                    |
//! | connected over its stream ([`RunLogs::connect`]) | `LogRequest` → `LogChunk`     | `RemoveLogs`                 |
//! | neither (not connected now)                      | fail: "not connected"         | kept, sent when it connects  |
//! | none (the run never started)                     | no log                       | nothing to do                |
//!
//! Removing is idempotent (a log already gone is fine) and never waits on an agent. Removals kept
//! for an agent that is away are bounded and live in memory: beyond the bound, or when this server
//! restarts first, the agent's own age-based sweep (`tug agent run --log-retention`) removes
//! those files later. A run's attempts on earlier agents (a run lost with its agent and retried
//! elsewhere) leave their part of the log there, for that sweep too: the store records only the
//! last attempt's agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tug_core::run::RunId;
use tug_logs::LogFiles;
use tug_proto::{LogChunk, server_message};
use tug_store::RemovedRun;

/// How long a read waits for the agent's answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Removals kept per agent that is not connected; beyond this its age-based sweep takes over.
const MAX_KEPT_REMOVALS: usize = 100_000;
/// The most bytes one read asks an agent for (the agent caps its answers at 1 MiB too).
const MAX_READ: usize = 1 << 20;

/// Why a run's log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The run's agent is not connected to this server now.
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
    /// The agent did not answer in time.
    #[error("agent {0} did not send the log within 10s; it may be overloaded or its link slow")]
    Timeout(String),
    /// The log file in a shared data dir could not be read.
    #[error("reading the log file {path} failed: {source}; check the file's permissions and the disk")]
    Local {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The end of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    /// The text (lossy UTF-8), starting at a character boundary.
    pub text: String,
    /// Whether the log had more before it.
    pub truncated: bool,
}

/// Where each agent's run logs are read from. Cheap to clone; every clone sees the same agents.
#[derive(Clone, Default)]
pub struct RunLogs {
    sources: Arc<Mutex<Sources>>,
}

#[derive(Default)]
struct Sources {
    /// Agents whose log dir this process can read.
    dirs: HashMap<String, LogFiles>,
    /// Connected agents' streams (a closed sender: the connection ended).
    streams: HashMap<String, mpsc::Sender<Command>>,
    /// Removals waiting for their agent to connect.
    kept: HashMap<String, Vec<RunId>>,
}

/// A request to a connected agent's session.
enum Command {
    Read { run_id: RunId, offset: u64, max: u32, tail: bool, reply: oneshot::Sender<Result<LogChunk, LogError>> },
    Remove(Vec<RunId>),
}

/// Part of a log: its bytes and where they start.
struct Chunk {
    offset: u64,
    data: Vec<u8>,
}

impl RunLogs {
    /// Agent `agent` writes its logs under `files`, which this process can read (an agent in the
    /// same process, or on the same host with the same data dir). Its runs' logs are read and
    /// removed there, whether or not it is connected.
    pub fn share_dir(&self, agent: &str, files: LogFiles) {
        self.lock().dirs.insert(agent.to_string(), files);
    }

    /// Agent `agent` connected: reads and removals of its logs go to the returned [`AgentLogs`]
    /// (which its session pumps) until it connects again or that is dropped. Removals kept while
    /// it was away come first.
    pub fn connect(&self, agent: &str) -> AgentLogs {
        let (tx, rx) = mpsc::channel(64);
        let mut s = self.lock();
        s.streams.insert(agent.to_string(), tx);
        let backlog = s.kept.remove(agent).unwrap_or_default();
        AgentLogs { logs: self.clone(), agent: agent.to_string(), commands: rx, waiting: HashMap::new(), next_request: 0, backlog }
    }

    /// Up to `max` bytes of run `run_id`'s log from `offset`, from where `agent` keeps it; empty
    /// when there is nothing (yet) or the run never started (`agent` is `None`).
    pub async fn read(&self, run_id: RunId, agent: Option<&str>, offset: u64, max: usize) -> Result<Vec<u8>, LogError> {
        Ok(self.fetch(run_id, agent, Some(offset), max).await?.map(|c| c.data).unwrap_or_default())
    }

    /// The last `max` bytes of run `run_id`'s log, starting at a character boundary; `None` when
    /// the run has no log.
    pub async fn tail(&self, run_id: RunId, agent: Option<&str>, max: usize) -> Result<Option<LogTail>, LogError> {
        let Some(Chunk { offset, data }) = self.fetch(run_id, agent, None, max).await? else { return Ok(None) };
        let truncated = offset > 0;
        // A cut inside a multi-byte character leaves continuation bytes at the start.
        let start = if truncated { data.iter().take(3).take_while(|b| (**b & 0xC0) == 0x80).count() } else { 0 };
        Ok(Some(LogTail { text: String::from_utf8_lossy(&data[start..]).into_owned(), truncated }))
    }

    /// Removes the logs of these runs wherever their agents keep them; see the module doc for
    /// agents that are not connected. Failures are logged, never returned: a log left behind is
    /// swept by age later.
    pub async fn remove(&self, runs: &[RemovedRun]) {
        let mut by_agent: HashMap<&str, Vec<RunId>> = HashMap::new();
        for r in runs {
            if let Some(a) = &r.agent {
                by_agent.entry(a.as_str()).or_default().push(r.id);
            }
        }
        for (agent, ids) in by_agent {
            let dir = self.lock().dirs.get(agent).cloned();
            match dir {
                // Failures are logged by `remove`.
                Some(files) => {
                    let _ = files.remove(&ids).await;
                }
                None => self.send_removal(agent, ids),
            }
        }
    }

    /// Sends removals to a connected agent (with any kept for it), or keeps them until it connects.
    fn send_removal(&self, agent: &str, mut ids: Vec<RunId>) {
        let mut s = self.lock();
        if let Some(kept) = s.kept.remove(agent) {
            ids.splice(0..0, kept);
        }
        let ids = match s.streams.get(agent) {
            Some(tx) => match tx.try_send(Command::Remove(ids)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(Command::Remove(ids)))
                | Err(mpsc::error::TrySendError::Closed(Command::Remove(ids))) => ids,
                Err(_) => unreachable!("a removal comes back as a removal"),
            },
            None => ids,
        };
        if ids.len() > MAX_KEPT_REMOVALS {
            tracing::warn!(
                agent, dropped = ids.len() - MAX_KEPT_REMOVALS,
                "too many log removals waiting for an agent that is away; its log retention sweep will remove the rest",
            );
        }
        let keep_from = ids.len().saturating_sub(MAX_KEPT_REMOVALS);
        s.kept.insert(agent.to_string(), ids[keep_from..].to_vec());
    }

    /// Reads part of a log: from `offset`, or the tail when `offset` is `None`. `None`: no log.
    async fn fetch(&self, run_id: RunId, agent: Option<&str>, offset: Option<u64>, max: usize) -> Result<Option<Chunk>, LogError> {
        let Some(agent) = agent else { return Ok(None) };
        let max = max.min(MAX_READ);
        let (dir, stream) = {
            let s = self.lock();
            (s.dirs.get(agent).cloned(), s.streams.get(agent).cloned())
        };
        if let Some(files) = dir {
            let read = match offset {
                Some(offset) => files.read(run_id, offset, max).await.map(|data| Chunk { offset, data }),
                None => files.tail(run_id, max).await.map(|(offset, data)| Chunk { offset, data }),
            };
            return match read {
                Ok(c) => Ok(Some(c)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(LogError::Local { path: files.path(run_id), source }),
            };
        }
        let not_connected = || LogError::NotConnected(agent.to_string());
        let tx = stream.ok_or_else(not_connected)?;
        let (reply, answer) = oneshot::channel();
        let read = Command::Read { run_id, offset: offset.unwrap_or(0), max: max as u32, tail: offset.is_none(), reply };
        tx.send(read).await.map_err(|_| not_connected())?;
        match tokio::time::timeout(READ_TIMEOUT, answer).await {
            Err(_) => Err(LogError::Timeout(agent.to_string())),
            Ok(Err(_)) => Err(not_connected()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(c))) if c.missing => Ok(None),
            Ok(Ok(Ok(c))) => Ok(Some(Chunk { offset: c.offset, data: c.data })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connected agent's end of [`RunLogs`]: its session sends what [`AgentLogs::next`] yields
/// down the stream and hands the agent's `LogChunk`s to [`AgentLogs::answer`].
pub struct AgentLogs {
    logs: RunLogs,
    agent: String,
    commands: mpsc::Receiver<Command>,
    /// Reads waiting for the agent's answer, by request number.
    waiting: HashMap<u64, oneshot::Sender<Result<LogChunk, LogError>>>,
    next_request: u64,
    /// Removals kept while the agent was away.
    backlog: Vec<RunId>,
}

impl AgentLogs {
    /// The next message for the agent; `None` once a newer connection of the agent took over.
    /// Cancel-safe, for `select!`.
    pub async fn next(&mut self) -> Option<server_message::Msg> {
        if !self.backlog.is_empty() {
            let run_ids = std::mem::take(&mut self.backlog);
            return Some(server_message::Msg::RemoveLogs(tug_proto::RemoveLogs { run_ids }));
        }
        Some(match self.commands.recv().await? {
            Command::Read { run_id, offset, max, tail, reply } => {
                self.next_request += 1;
                self.waiting.insert(self.next_request, reply);
                server_message::Msg::LogRequest(tug_proto::LogRequest { request: self.next_request, run_id, offset, max, tail })
            }
            Command::Remove(run_ids) => server_message::Msg::RemoveLogs(tug_proto::RemoveLogs { run_ids }),
        })
    }

    /// The agent's answer to one of the reads.
    pub fn answer(&mut self, chunk: LogChunk) {
        if let Some(reply) = self.waiting.remove(&chunk.request) {
            let answer = if chunk.error.is_empty() {
                Ok(chunk)
            } else {
                Err(LogError::Agent { agent: self.agent.clone(), message: chunk.error })
            };
            let _ = reply.send(answer);
        }
    }
}

impl Drop for AgentLogs {
    /// Removals this connection did not send go to the agent's next connection.
    fn drop(&mut self) {
        self.commands.close();
        let mut ids = std::mem::take(&mut self.backlog);
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Remove(more) = cmd {
                ids.extend(more);
            }
        }
        if !ids.is_empty() {
            self.logs.send_removal(&self.agent, ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(ids: &[RunId], agent: &str) -> Vec<RemovedRun> {
        ids.iter().map(|&id| RemovedRun { id, agent: Some(agent.to_string()) }).collect()
    }

    /// Answers the session's reads like an agent would, from `files`, until the session ends.
    fn serve(mut session: AgentLogs, files: LogFiles) -> mpsc::UnboundedReceiver<Vec<RunId>> {
        let (removals, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = session.next().await {
                match m {
                    server_message::Msg::LogRequest(r) => {
                        let read = if r.tail {
                            files.tail(r.run_id, r.max as usize).await
                        } else {
                            files.read(r.run_id, r.offset, r.max as usize).await.map(|d| (r.offset, d))
                        };
                        let chunk = match read {
                            Ok((offset, data)) => LogChunk { request: r.request, data, offset, ..Default::default() },
                            Err(_) => LogChunk { request: r.request, missing: true, ..Default::default() },
                        };
                        session.answer(chunk);
                    }
                    server_message::Msg::RemoveLogs(r) => {
                        files.remove(&r.run_ids).await.unwrap();
                        let _ = removals.send(r.run_ids);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        seen
    }

    async fn write(files: &LogFiles, run: RunId, text: &[u8]) {
        let mut w = files.writer(run, 1 << 20).await.unwrap();
        w.write(text).await.unwrap();
        w.finish().await.unwrap();
    }

    #[tokio::test]
    async fn reads_come_from_the_shared_dir_or_the_agents_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (here, there) = (LogFiles::new(dir.path().join("here")), LogFiles::new(dir.path().join("there")));
        write(&here, 1, b"local\n").await;
        write(&there, 2, b"remote\n").await;
        let logs = RunLogs::default();
        logs.share_dir("local", here);
        let _removals = serve(logs.connect("far"), there);
        assert_eq!(logs.read(1, Some("local"), 0, 100).await.unwrap(), b"local\n");
        assert_eq!(logs.read(2, Some("far"), 2, 100).await.unwrap(), b"mote\n");
        assert_eq!(logs.read(3, Some("far"), 0, 100).await.unwrap(), b"", "no log yet reads as empty");
        assert_eq!(logs.read(2, None, 0, 100).await.unwrap(), b"", "a run that never started has no log");
        let err = logs.read(2, Some("gone"), 0, 100).await.unwrap_err();
        assert_eq!(err.to_string(), "the log is on agent gone, which is not connected now; try again when it is back (`tug agent list`)");
    }

    #[tokio::test]
    async fn tails_start_on_a_character_from_either_source() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles::new(dir.path());
        // "é" is two bytes: a 5-byte tail of "aé\né\n" would begin inside the first "é".
        write(&files, 7, b"a\xc3\xa9\n\xc3\xa9\n").await;
        let shared = RunLogs::default();
        shared.share_dir("a", files.clone());
        let streamed = RunLogs::default();
        let _removals = serve(streamed.connect("a"), files);
        for logs in [shared, streamed] {
            let t = logs.tail(7, Some("a"), 5).await.unwrap().unwrap();
            assert_eq!(t, LogTail { text: "\n\u{e9}\n".into(), truncated: true });
            let t = logs.tail(7, Some("a"), 100).await.unwrap().unwrap();
            assert_eq!(t, LogTail { text: "a\u{e9}\n\u{e9}\n".into(), truncated: false });
            assert_eq!(logs.tail(8, Some("a"), 100).await.unwrap(), None, "no log: no tail");
        }
    }

    #[tokio::test]
    async fn removals_wait_for_an_agent_that_is_away() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles::new(dir.path());
        for run in 1..=4 {
            write(&files, run, b"x\n").await;
        }
        let logs = RunLogs::default();
        // Never connected, then connected and gone again: both keep the removals.
        logs.remove(&removed(&[1], "a")).await;
        let session = logs.connect("a");
        drop(session);
        logs.remove(&removed(&[2, 3], "a")).await;
        assert!(files.len(1).await.is_ok(), "nothing removed while the agent is away");
        let mut seen = serve(logs.connect("a"), files.clone());
        assert_eq!(seen.recv().await.unwrap(), vec![1, 2, 3], "kept removals go first, once");
        logs.remove(&removed(&[4, 99], "a")).await;
        assert_eq!(seen.recv().await.unwrap(), vec![4, 99], "a connected agent gets them at once");
        for run in 1..=4 {
            assert_eq!(files.len(run).await.unwrap_err().kind(), std::io::ErrorKind::NotFound);
        }
    }

    #[tokio::test]
    async fn removals_in_a_shared_dir_are_direct_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles::new(dir.path());
        write(&files, 5, b"x\n").await;
        let logs = RunLogs::default();
        logs.share_dir("local", files.clone());
        let runs = [removed(&[5, 6], "local"), vec![RemovedRun { id: 5, agent: None }]].concat();
        logs.remove(&runs).await;
        logs.remove(&runs).await;
        assert_eq!(files.len(5).await.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn kept_removals_are_bounded() {
        let logs = RunLogs::default();
        let many: Vec<RunId> = (0..MAX_KEPT_REMOVALS as u64 + 10).collect();
        logs.remove(&removed(&many, "a")).await;
        let mut session = logs.connect("a");
        let Some(server_message::Msg::RemoveLogs(r)) = session.next().await else { panic!("the backlog first") };
        assert_eq!(r.run_ids.len(), MAX_KEPT_REMOVALS);
        assert_eq!(r.run_ids[0], 10, "the newest are kept");
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_does_not_answer_times_out() {
        let logs = RunLogs::default();
        let mut session = logs.connect("slow");
        let reader = tokio::spawn({
            let logs = logs.clone();
            async move { logs.read(1, Some("slow"), 0, 10).await }
        });
        assert!(matches!(session.next().await, Some(server_message::Msg::LogRequest(_))));
        let err = reader.await.unwrap().unwrap_err();
        assert!(matches!(err, LogError::Timeout(ref a) if a == "slow"), "{err}");
        // An error answer says what the agent said.
        let reader = tokio::spawn({
            let logs = logs.clone();
            async move { logs.read(1, Some("slow"), 0, 10).await }
        });
        let Some(server_message::Msg::LogRequest(r)) = session.next().await else { panic!("a read") };
        session.answer(LogChunk { request: r.request, error: "disk on fire".into(), ..Default::default() });
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "agent slow could not read the log: disk on fire");
    }
}
