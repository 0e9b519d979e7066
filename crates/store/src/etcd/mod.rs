//! The [`Store`] on etcd, for a group of servers: every server reads the same data, and the
//! leader's writes are transactions that can be fenced (see [`EtcdStore::fence`]).
//!
//! - `keys.rs`: the key layout (a table of every key and who writes it).
//! - `jobs.rs`: jobs, their derived fields and run totals.
//! - `runs.rs`: the fire batch (the hot path), run updates, listings, pruning, deletion.
//! - `net.rs`: address pools and claims.
//! - `access.rs`: API tokens and the audit log.
//!
//! Writes are optimistic transactions: read, then write only if what was read is unchanged
//! (each `stat` and counter key's `mod_revision`), else read again. The fire path and run
//! changes skip the read when `cache.rs` holds what this server last wrote (the same compares
//! catch any other writer). A write returns once etcd has committed it to a quorum: durable.
//! Values are JSON and small; run output stays on the agents.
//!
//! etcd caps the operations of one transaction (`--max-txn-ops`, 128 by default). A tick's
//! fires go in one transaction when they fit (3 puts and a compare a run); bigger batches are
//! split, each part atomic. Start etcd with a higher `--max-txn-ops` and say so in the store
//! URL (`?max-txn-ops=N`) for fewer, larger transactions.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KeyValue, KvClient, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Result, StoreError};

mod access;
mod cache;
mod jobs;
mod keys;
mod net;
mod progress;
mod runs;
mod services;
mod store;

pub use keys::DATA_VERSION;
use keys::{Keys, prefix_end};

/// etcd's default `--max-txn-ops`.
const DEFAULT_MAX_TXN_OPS: usize = 128;

/// How many keys one range read returns at most; longer ranges are read page by page.
const SCAN_PAGE: i64 = 1000;

/// How long a call is retried while its member is unreachable or without a leader (a member
/// lost, an etcd leader election).
const RETRY_FOR: Duration = Duration::from_secs(5);

/// How often an optimistic write is retried when another writer got there first.
const MAX_CONFLICTS: usize = 1000;

/// Where the store is: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?max-txn-ops=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// The key prefix, `/tug` by default.
    pub prefix: String,
    /// The most operations one transaction may hold (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// How long to keep trying to reach etcd at start-up before giving up.
    pub connect_for: Duration,
}

/// Why a store URL is not a valid etcd store; each message names the part and shows a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdUrlError {
    /// The URL does not start with `etcd://`.
    #[error("invalid etcd store {url:?}: it must start with etcd:// ({EXAMPLE})")]
    Scheme {
        /// The URL given.
        url: String,
    },
    /// An endpoint is not `HOST:PORT` with a port from 1 to 65535.
    #[error("invalid etcd endpoint {endpoint:?} in {url:?}: give HOST:PORT ({EXAMPLE})")]
    Endpoint {
        /// The endpoint as written.
        endpoint: String,
        /// The URL given.
        url: String,
    },
    /// The key prefix has characters other than letters, digits, `/`, `_`, `.` and `-`, or an
    /// empty segment.
    #[error("invalid key prefix {prefix:?} in {url:?}: use letters, digits, '/', '_', '.', '-'")]
    Prefix {
        /// The prefix as written.
        prefix: String,
        /// The URL given.
        url: String,
    },
    /// `max-txn-ops` is not a number of at least 16.
    #[error("invalid max-txn-ops {value:?} in {url:?}: a number of at least 16, etcd's --max-txn-ops")]
    MaxTxnOps {
        /// The value as written.
        value: String,
        /// The URL given.
        url: String,
    },
    /// A query option other than `max-txn-ops`.
    #[error("unknown option {option:?} in {url:?}: the only one is max-txn-ops=N")]
    UnknownOption {
        /// The option as written.
        option: String,
        /// The URL given.
        url: String,
    },
}

/// A valid store URL, shown in [`EtcdUrlError`]s.
const EXAMPLE: &str = "e.g. etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379";

impl EtcdConfig {
    /// Parses a store URL, `etcd://h1:2379,h2:2379,h3:2379[/prefix][?max-txn-ops=N]`.
    pub fn parse(url: &str) -> std::result::Result<EtcdConfig, EtcdUrlError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| EtcdUrlError::Scheme { url: url.to_owned() })?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let valid = host.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(EtcdUrlError::Endpoint { endpoint: host.to_owned(), url: url.to_owned() });
            }
            endpoints.push(host.to_owned());
        }
        let prefix = match path.trim_end_matches('/') {
            "" => "/tug".to_owned(),
            p if p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b)) && !p.contains("//") => p.to_owned(),
            p => return Err(EtcdUrlError::Prefix { prefix: p.to_owned(), url: url.to_owned() }),
        };
        let mut max_txn_ops = DEFAULT_MAX_TXN_OPS;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("max-txn-ops", n)) => {
                    max_txn_ops = n
                        .parse()
                        .ok()
                        .filter(|n| *n >= 16)
                        .ok_or_else(|| EtcdUrlError::MaxTxnOps { value: n.to_owned(), url: url.to_owned() })?;
                }
                _ => return Err(EtcdUrlError::UnknownOption { option: pair.to_owned(), url: url.to_owned() }),
            }
        }
        Ok(EtcdConfig { endpoints, prefix, max_txn_ops, connect_for: Duration::from_secs(30) })
    }
}

impl fmt::Display for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd at {} (keys under {})", self.endpoints.join(", "), self.prefix)
    }
}

/// A leader's fence: its election key and that key's create revision. Every write compares it,
/// so once another server has won the election, this one's writes fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader's key in the election.
    pub key: Vec<u8>,
    /// Its create revision.
    pub revision: i64,
}

/// The [`Store`](crate::Store) on etcd. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    keys: Keys,
    config: EtcdConfig,
    fence: Arc<Mutex<Option<Fence>>>,
    /// Writes refused by the fence.
    fenced: Arc<AtomicU64>,
    /// The hot keys as last read or written, for writes without a read first.
    cache: Arc<Mutex<cache::Cache>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore").field("config", &self.config).finish()
    }
}

/// A backend failure while doing `what`: unavailable when etcd cannot be reached (retrying may
/// work), else a plain backend error.
fn backend(what: impl Into<String>, e: etcd_client::Error) -> StoreError {
    let what = what.into();
    let unreachable = match &e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        _ => false,
    };
    if unreachable {
        StoreError::Unavailable { what, source: Arc::new(e) }
    } else {
        StoreError::Backend { what, source: Arc::new(e) }
    }
}

/// Whether a failed call may be sent again: always when it never reached etcd, or etcd had no
/// leader to propose it to; any other unavailability only for reads (a write may have been
/// applied before the answer was lost).
fn retryable(e: &etcd_client::Error, read: bool) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            read || s.message().contains("connect") || s.message().contains("no leader")
        }
        _ => false,
    }
}

/// A value that does not decode: damaged data, or another program's keys under our prefix.
fn corrupt(what: &str, key: &[u8], e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt { what: format!("{what}: key {}", String::from_utf8_lossy(key)), source: Arc::new(e) }
}

/// Decodes a JSON value.
fn decode<T: DeserializeOwned>(what: &str, kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|e| corrupt(what, kv.key(), e))
}

/// Encodes a JSON value.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store values serialize")
}

/// A decimal value (counters, job names as values).
fn decode_num(what: &str, kv: &KeyValue) -> Result<u64> {
    std::str::from_utf8(kv.value())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(what, kv.key(), std::io::Error::other("not a decimal number")))
}

/// A UTF-8 value.
fn decode_str(what: &str, kv: &KeyValue) -> Result<String> {
    String::from_utf8(kv.value().to_vec()).map_err(|e| corrupt(what, kv.key(), e))
}

/// The key-values of a transaction's get responses, one list per get, in order.
fn ranges(responses: Vec<TxnOpResponse>) -> Vec<Vec<KeyValue>> {
    responses
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        })
        .collect()
}

/// `mod_revision` of what was read (0: absent), for a compare that it is unchanged.
fn unchanged(key: impl Into<Vec<u8>>, kv: Option<&KeyValue>) -> Compare {
    unchanged_since(key, kv.map_or(0, KeyValue::mod_revision))
}

/// That `key` was last written at `revision` (0: it does not exist).
fn unchanged_since(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, revision)
}

/// That `key` does not exist.
fn absent(key: impl Into<Vec<u8>>) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// That `key` exists.
fn present(key: impl Into<Vec<u8>>) -> Compare {
    Compare::create_revision(key, CompareOp::Greater, 0)
}

impl EtcdStore {
    /// Connects, retrying with backoff for `config.connect_for`, then checks (or, on an empty
    /// prefix, writes) the data version. The error names the endpoints.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        let deadline = tokio::time::Instant::now() + config.connect_for;
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::try_connect(&config).await {
                Ok(store) => return Ok(store),
                Err(e @ StoreError::Unavailable { .. }) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(endpoints = %config.endpoints.join(","), error = %e, retry_in = ?delay, "etcd not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                Err(StoreError::Unavailable { source, .. }) => {
                    return Err(StoreError::Unavailable {
                        what: format!(
                            "cannot reach etcd at {} (tried for {:?}); check that the members run and listen there \
                             (etcd --listen-client-urls), or fix --store",
                            config.endpoints.join(", "),
                            config.connect_for
                        ),
                        source,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_connect(config: &EtcdConfig) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let what = || format!("connecting to etcd at {}", config.endpoints.join(", "));
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(|e| backend(what(), e))?;
        let store = EtcdStore {
            kv: client.kv_client(),
            client,
            keys: Keys::new(&config.prefix),
            config: config.clone(),
            fence: Arc::new(Mutex::new(None)),
            fenced: Arc::new(AtomicU64::new(0)),
            cache: Arc::new(Mutex::new(cache::Cache::default())),
        };
        store.check_version().await?;
        Ok(store)
    }

    /// Writes the data version into an empty prefix, or refuses data of another version.
    async fn check_version(&self) -> Result<()> {
        let key = self.keys.version();
        let put = Txn::new().when([absent(key.clone())]).and_then([TxnOp::put(key.clone(), DATA_VERSION.to_string(), None)]).or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.kv_txn("checking the data version", put).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let found = ranges(resp.op_responses()).into_iter().flatten().next();
        let found = found.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).unwrap_or_default();
        if found == DATA_VERSION.to_string() {
            Ok(())
        } else {
            Err(StoreError::DataVersion { store: self.config.to_string(), found, known: DATA_VERSION })
        }
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The etcd client, for the leader election on the same connection.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The last leader epoch handed out (0: none yet).
    pub async fn epoch(&self) -> Result<u64> {
        let what = "reading the leader epoch";
        match self.get(what, self.keys.epoch()).await? {
            Some(kv) => decode_num(what, &kv),
            None => Ok(0),
        }
    }

    /// The group's proxy secret: `candidate` if none is stored yet (it is stored then), else the
    /// stored one, so every member ends up with the same.
    pub async fn proxy_secret(&self, candidate: &str) -> Result<String> {
        let key = self.keys.proxy_secret();
        let put = Txn::new()
            .when([absent(key.clone())])
            .and_then([TxnOp::put(key.clone(), candidate, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.kv_txn("storing the group's proxy secret", put).await?;
        if resp.succeeded() {
            return Ok(candidate.to_owned());
        }
        let found = ranges(resp.op_responses()).into_iter().flatten().next();
        Ok(found.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).unwrap_or_else(|| candidate.to_owned()))
    }

    /// The key prefix the election's keys go under.
    pub fn election_prefix(&self) -> String {
        self.keys.leader()
    }

    /// Makes every later write conditional on `fence` (`None`: unconditional). A leader sets its
    /// own; a write after another server took over fails with [`StoreError::Fenced`].
    pub fn fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fence;
    }

    /// How many writes the fence has refused.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    fn current_fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A range read, retried while the member asked cannot be reached (the client spreads calls
    /// over the endpoints, and one may be down) or has no leader, for up to [`RETRY_FOR`].
    async fn kv_get(&self, what: &str, key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Result<GetResponse> {
        let key = key.into();
        let mut delay = Duration::from_millis(20);
        let give_up = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            match self.kv.clone().get(key.clone(), options.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(e) if retryable(&e, true) && tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(backend(what, e)),
            }
        }
    }

    /// A transaction, retried only when it surely was not applied: the member could not be
    /// reached, or had no leader to propose it to.
    async fn kv_txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        let mut delay = Duration::from_millis(20);
        let give_up = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            match self.kv.clone().txn(txn.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(e) if retryable(&e, false) && tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(backend(what, e)),
            }
        }
    }

    /// Reads keys and ranges at one revision: each op a `TxnOp::get`.
    async fn read(&self, what: &str, gets: Vec<TxnOp>) -> Result<Vec<Vec<KeyValue>>> {
        let mut out = Vec::with_capacity(gets.len());
        let mut gets = gets.into_iter().peekable();
        while gets.peek().is_some() {
            let chunk: Vec<TxnOp> = gets.by_ref().take(self.config.max_txn_ops).collect();
            let resp = self.kv_txn(what, Txn::new().and_then(chunk)).await?;
            out.extend(ranges(resp.op_responses()));
        }
        Ok(out)
    }

    /// One key.
    async fn get(&self, what: &str, key: String) -> Result<Option<KeyValue>> {
        let mut resp = self.kv_get(what, key, None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Visits the keys in `[start, end)`, ascending (or descending), `page` keys a read, all at
    /// the revision of the first read, until `visit` says it has enough (returns `false`).
    async fn walk(
        &self,
        what: &str,
        (mut start, mut end): (Vec<u8>, Vec<u8>),
        descend: bool,
        page: i64,
        mut visit: impl FnMut(KeyValue) -> Result<bool>,
    ) -> Result<()> {
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page).with_revision(revision);
            if descend {
                options = options.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            let mut resp = self.kv_get(what, start.clone(), Some(options)).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { return Ok(()) };
            if descend {
                end = last.key().to_vec();
            } else {
                start = last.key().to_vec();
                start.push(0);
            }
            for kv in kvs {
                if !visit(kv)? {
                    return Ok(());
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Every key in `[start, end)`, ascending.
    async fn scan(&self, what: &str, start: Vec<u8>, end: Vec<u8>) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        self.walk(what, (start, end), false, SCAN_PAGE, |kv| {
            out.push(kv);
            Ok(true)
        })
        .await?;
        Ok(out)
    }

    /// Every key under `prefix`.
    async fn scan_prefix(&self, what: &str, prefix: &str) -> Result<Vec<KeyValue>> {
        self.scan(what, prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes())).await
    }

    /// Runs `ops` if every compare holds (plus the fence); returns whether it did. A failed fence
    /// is [`StoreError::Fenced`].
    async fn write(&self, what: &str, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool> {
        Ok(self.write_at(what, compares, ops).await?.is_some())
    }

    /// [`write`](Self::write), returning the revision it wrote at (every key it put has that
    /// `mod_revision`), `None` if a compare failed.
    async fn write_at(&self, what: &str, mut compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<i64>> {
        let fence = self.current_fence();
        let mut or_else = Vec::new();
        if let Some(f) = &fence {
            compares.push(Compare::create_revision(f.key.clone(), CompareOp::Equal, f.revision));
            or_else.push(TxnOp::get(f.key.clone(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(or_else);
        let resp = self.kv_txn(what, txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            return Ok(Some(revision));
        }
        if let Some(f) = fence {
            let holder = ranges(resp.op_responses()).into_iter().flatten().next();
            if holder.is_none_or(|kv| kv.create_revision() != f.revision) {
                self.fenced.fetch_add(1, Ordering::Relaxed);
                tracing::error!(what, term = f.revision, "write refused: this server is no longer the leader (fenced)");
                return Err(StoreError::Fenced { what: what.to_owned() });
            }
        }
        Ok(None)
    }

    /// The cache of hot keys (never held across an await).
    fn cache(&self) -> std::sync::MutexGuard<'_, cache::Cache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `ops` unconditionally (but for the fence), in transactions of at most the allowed
    /// size. For deletions of what is already unreachable, and other idempotent writes.
    async fn write_all(&self, what: &str, ops: Vec<TxnOp>) -> Result<()> {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<TxnOp> = ops.by_ref().take(self.config.max_txn_ops).collect();
            self.write(what, Vec::new(), chunk).await?;
        }
        Ok(())
    }

    /// Too many conflicting writers: give up this call.
    fn contended(what: &str) -> StoreError {
        StoreError::Unavailable {
            what: what.to_owned(),
            source: Arc::new(std::io::Error::other(format!("{MAX_CONFLICTS} conflicting writes in a row"))),
        }
    }

    /// Takes the next value of the counter at `key` (one more than the last; the first is 1).
    async fn next_counter(&self, what: &str, key: String) -> Result<u64> {
        for _ in 0..MAX_CONFLICTS {
            let kv = self.get(what, key.clone()).await?;
            let next = match &kv {
                Some(kv) => decode_num(what, kv)? + 1,
                None => 1,
            };
            let put = TxnOp::put(key.clone(), next.to_string(), None);
            if self.write(what, vec![unchanged(key.clone(), kv.as_ref())], vec![put]).await? {
                return Ok(next);
            }
        }
        Err(Self::contended(what))
    }
}
