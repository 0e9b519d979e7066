//! A remote agent against a fake server: status updates the server did not acknowledge are
//! resent, in order, on the next connection; every Register lists the attempts the agent holds,
//! and an ack of a final update removes the attempt's checkpoint.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tug_agent::AgentConfig;
use tug_agent::remote::{self, RemoteConfig};
use tug_agent::runtime::noop::NoopRuntime;
use tug_core::job::{Command, RuntimeKind};
use tug_core::placement::Capacity;
use tug_core::protocol::{Launch, StatusUpdate, Task, ToAgent};
use tug_core::run::RunState;
use tug_proto::{AgentMessage, AgentService, AgentServiceServer, ServerMessage, agent_message, server_message};
use tug_logs::LogFiles;

/// Session 1: registers the agent, launches one run, takes its status updates without acking
/// them and hangs up once it has finished. Later sessions ack everything.
/// With `batches`, it says so in `Registered` and acks with `Ack.seqs`, as a current server does;
/// without, it is an older server that takes and acks one update per message.
struct Fake {
    sessions: Arc<AtomicUsize>,
    seen: mpsc::UnboundedSender<(usize, StatusUpdate)>,
    batches: bool,
}

fn reply(m: server_message::Msg) -> Result<ServerMessage, Status> {
    Ok(ServerMessage { msg: Some(m) })
}

#[tonic::async_trait]
impl AgentService for Fake {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

    async fn enroll(&self, _: Request<tug_proto::EnrollRequest>) -> Result<Response<tug_proto::EnrollReply>, Status> {
        Err(Status::unimplemented("no certificates here"))
    }

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let n = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.unwrap();
        assert!(matches!(first.msg, Some(agent_message::Msg::Register(ref r)) if r.agent == "remote-1" && r.join_token == "t"));
        let (tx, rx) = mpsc::channel(64);
        let batches = self.batches;
        tx.send(reply(server_message::Msg::Registered(tug_proto::Registered { epoch: 1, batches }))).await.unwrap();
        if n == 1 {
            let launch = ToAgent::Launch(Box::new(Launch {
                run_id: 7,
                job: "j".into(),
                scheduled_at: Timestamp::from_second(1_700_000_000).unwrap(),
                attempt: 1,
                epoch: 1,
                task: Task {
                    runtime: RuntimeKind::Process,
                    docker: None,
                    resources: Default::default(),
                    command: Command::Shell("true".into()),
                    env: BTreeMap::new(),
                    workdir: None,
                    user: None,
                    timeout: None,
                    network: None,
                    stop_signal: None,
                    stop_grace: None,
                },
                health: None,
            }));
            // A current server sends what it has queued for an agent as one list.
            let m = if batches {
                server_message::Msg::ToAgents(serde_json::to_vec(&[launch]).unwrap())
            } else {
                server_message::Msg::ToAgent(serde_json::to_vec(&launch).unwrap())
            };
            tx.send(reply(m)).await.unwrap();
        }
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let updates: Vec<StatusUpdate> = match m.msg {
                    Some(agent_message::Msg::StatusUpdate(bytes)) if !batches => vec![serde_json::from_slice(&bytes).unwrap()],
                    Some(agent_message::Msg::StatusUpdates(bytes)) if batches => serde_json::from_slice(&bytes).unwrap(),
                    Some(agent_message::Msg::StatusUpdate(_) | agent_message::Msg::StatusUpdates(_)) => {
                        panic!("the agent sent updates in a form this server did not offer")
                    }
                    _ => continue,
                };
                let seqs: Vec<u64> = updates.iter().map(|u| u.seq).collect();
                let done = updates.iter().any(|u| u.state == RunState::Succeeded);
                for u in updates {
                    let _ = seen.send((n, u));
                }
                if n == 1 && done {
                    return; // hang up without acking anything
                }
                if n > 1 {
                    let ack = if batches { tug_proto::Ack { seq: 0, seqs } } else { tug_proto::Ack { seq: seqs[0], seqs: Vec::new() } };
                    let _ = tx.send(reply(server_message::Msg::Ack(ack))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test]
async fn unacknowledged_updates_are_resent_after_a_reconnect() {
    resent_after_a_reconnect(true).await;
}

#[tokio::test]
async fn an_older_server_gets_and_acks_one_update_per_message() {
    resent_after_a_reconnect(false).await;
}

async fn resent_after_a_reconnect(batches: bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = Fake { sessions: Arc::new(AtomicUsize::new(0)), seen: seen_tx, batches };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let remote = RemoteConfig {
        server: format!("http://{addr}"),
        join_token: "t".into(),
        resources: Capacity { cpus: 1.0, mem: 1 << 30, disk: 1 << 30 },
        attributes: BTreeMap::new(),
        tls: None,
        enroll: None,
    };
    let config = AgentConfig { name: "remote-1".into(), ..AgentConfig::default() };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(remote::run(remote, config, Arc::new(NoopRuntime), LogFiles::new(dir.path()), async {
        let _ = stop_rx.await;
    }));

    let mut first = Vec::new();
    let mut second = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((n, u)) = seen.recv().await {
            if n == 1 {
                first.push(u.seq);
            } else {
                second.push(u.seq);
                if second.len() == first.len() {
                    break;
                }
            }
        }
    })
    .await
    .expect("the agent reconnected and resent its updates");
    assert!(!first.is_empty());
    assert_eq!(first, second, "every unacknowledged update is resent, in order");

    stop_tx.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), agent).await.expect("the agent stops");
    assert!(ended.unwrap().is_ok());
}

/// Records each session's `Register.held` and the status updates; acks them from session 2 on.
struct Holding {
    sessions: Arc<AtomicUsize>,
    seen: mpsc::UnboundedSender<(usize, Vec<tug_proto::HeldRun>, Option<StatusUpdate>)>,
}

#[tonic::async_trait]
impl AgentService for Holding {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

    async fn enroll(&self, _: Request<tug_proto::EnrollRequest>) -> Result<Response<tug_proto::EnrollReply>, Status> {
        Err(Status::unimplemented("no certificates here"))
    }

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let n = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inbound = request.into_inner();
        let Some(AgentMessage { msg: Some(agent_message::Msg::Register(register)) }) = inbound.message().await? else {
            return Err(Status::invalid_argument("expected Register first"));
        };
        let _ = self.seen.send((n, register.held, None));
        let (tx, rx) = mpsc::channel(64);
        tx.send(reply(server_message::Msg::Registered(tug_proto::Registered { epoch: 3, batches: false }))).await.unwrap();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let Some(agent_message::Msg::StatusUpdate(bytes)) = m.msg else { continue };
                let u: StatusUpdate = serde_json::from_slice(&bytes).unwrap();
                let seq = u.seq;
                let _ = seen.send((n, Vec::new(), Some(u)));
                if n == 1 {
                    return; // hang up without acking
                }
                let _ = tx.send(reply(server_message::Msg::Ack(tug_proto::Ack { seq, seqs: Vec::new() }))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test]
async fn every_register_lists_held_runs_and_an_ack_removes_the_checkpoint() {
    use tug_agent::checkpoint::{Checkpoint, LaunchRecord};
    use tug_agent::runtime::Outcome;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = Holding { sessions: Arc::new(AtomicUsize::new(0)), seen: seen_tx };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let durability = tug_agent::Durability {
        dir: dir.path().join("runs"),
        shim: std::path::PathBuf::from(env!("CARGO_BIN_EXE_tug-shim")),
        detach_on_stop: true,
    };
    // A run that ended while no agent ran: its checkpoint holds the outcome.
    let launch = Launch {
        run_id: 11,
        job: "j".into(),
        scheduled_at: Timestamp::from_second(1_700_000_000).unwrap(),
        attempt: 3,
        epoch: 1,
        task: Task {
            runtime: RuntimeKind::Process,
            docker: None,
            resources: Default::default(),
            command: Command::Shell("exit 4".into()),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            timeout: None,
            network: None,
            stop_signal: None,
            stop_grace: None,
        },
        health: None,
    };
    let ckpt = Checkpoint::new(&durability.dir, 11, 3);
    let record = LaunchRecord {
        launch,
        log_dir: dir.path().join("logs"),
        log_limit: 1 << 20,
        grace: Duration::from_secs(1),
        launched_at: Timestamp::now(),
    };
    ckpt.write_launch(&record).await.unwrap();
    let outcome = Outcome { state: RunState::Failed, exit_code: Some(4), signal: None, reason: Some("exit code 4".into()) };
    ckpt.write_outcome(&outcome).await.unwrap();

    let remote = RemoteConfig {
        server: format!("http://{addr}"),
        join_token: String::new(),
        resources: Capacity { cpus: 1.0, mem: 1 << 30, disk: 1 << 30 },
        attributes: BTreeMap::new(),
        tls: None,
        enroll: None,
    };
    let config = AgentConfig { name: "remote-2".into(), durable: Some(durability.clone()), ..AgentConfig::default() };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let runtime = Arc::new(tug_agent::runtime::shim::ShimRuntime::new(&durability));
    let agent = tokio::spawn(remote::run(remote, config, runtime, LogFiles::new(dir.path().join("logs")), async {
        let _ = stop_rx.await;
    }));

    let held = vec![tug_proto::HeldRun { run_id: 11, attempt: 3, finished: true, replica: String::new() }];
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = seen.recv().await {
            let second_update = e.0 == 2 && e.2.is_some();
            events.push(e);
            if second_update {
                break;
            }
        }
    })
    .await
    .expect("two sessions, each with the final update");
    let registers: Vec<_> = events.iter().filter(|e| e.2.is_none()).map(|e| (e.0, e.1.clone())).collect();
    assert_eq!(registers, vec![(1, held.clone()), (2, held)], "unacknowledged: still held on the second Register");
    let updates: Vec<_> = events.iter().filter_map(|e| e.2.clone()).collect();
    assert_eq!(updates.len(), 2);
    for u in &updates {
        assert_eq!((u.run_id, u.attempt, u.state, u.exit_code), (11, 3, RunState::Failed, Some(4)));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ckpt.dir().exists() {
        assert!(tokio::time::Instant::now() < deadline, "the ack removes the checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), agent).await.expect("the agent stops");
    assert!(ended.unwrap().is_ok());
}
