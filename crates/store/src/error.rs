//! Why a store operation failed: [`StoreError`], one variant per thing a caller can do about it
//! (the API maps each [`ErrorKind`] to a status: 404, 409, 400, 507, 503, 500).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tug_core::run::RunId;

/// The underlying cause of a backend failure (a SQLite or I/O error). Shared, so one failed write
/// can be reported to every caller that waited on it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No job with that name.
    #[error("job {0:?} not found")]
    JobNotFound(String),
    /// No run with that id.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// A job with that name already exists.
    #[error("job {0:?} already exists; use update (PUT) to change it")]
    JobExists(String),
    /// The job was changed by someone else since it was read.
    #[error("job {name:?} was changed concurrently (expected version {expected}, found {found}); read it again")]
    VersionConflict {
        /// The job.
        name: String,
        /// The version the writer read.
        expected: u64,
        /// The version in the store.
        found: u64,
    },
    /// No service with that name.
    #[error("service {0:?} not found; see `tug service list`")]
    ServiceNotFound(String),
    /// A service with that name already exists.
    #[error("service {0:?} already exists; use update (PUT) to change it")]
    ServiceExists(String),
    /// No address pool with that name.
    #[error("network pool {0:?} not found; see `tug net pool list`")]
    PoolNotFound(String),
    /// An address pool with that name already exists.
    #[error("network pool {0:?} already exists; delete it first to change it")]
    PoolExists(String),
    /// A pool cannot be deleted while addresses of it are claimed.
    #[error("network pool {pool:?} has {claims} claimed address(es); delete the jobs and services using it first")]
    PoolInUse {
        /// The pool.
        pool: String,
        /// How many addresses are claimed.
        claims: usize,
    },
    /// Another claim of the pool holds that address.
    #[error("address {ip} of network pool {pool:?} is already claimed by {holder:?}")]
    AddressTaken {
        /// The pool.
        pool: String,
        /// The address asked for.
        ip: String,
        /// The claim that holds it.
        holder: String,
    },
    /// No API token with that id.
    #[error("no token with id {0:?}; `tug token list` shows them")]
    TokenNotFound(String),
    /// A token with that id exists already.
    #[error("a token with id {0:?} exists already")]
    TokenExists(String),
    /// A pagination cursor that this store did not hand out.
    #[error("invalid cursor {0:?}: pass the `next_cursor` of a previous page")]
    BadCursor(String),
    /// No space is left where the store keeps its data; nothing was written.
    #[error("{what}: {}", full_message(dir))]
    StorageFull {
        /// What the store was doing.
        what: String,
        /// The directory whose file system is full (empty when the store is not on disk).
        dir: PathBuf,
        /// The error the backend reported.
        #[source]
        source: Cause,
    },
    /// The store is busy (locked by another process) or cannot be reached now; retrying may work.
    #[error("{what}: the store is busy or unavailable ({source}); retry shortly")]
    Unavailable {
        /// What the store was doing.
        what: String,
        /// The error the backend reported.
        #[source]
        source: Cause,
    },
    /// The stored data is damaged, or the file is not a Tugboat database.
    #[error(
        "{what}: the database is damaged or is not a Tugboat database ({source}); stop tug, restore the \
         database from a backup (or move it aside to start empty) and start again"
    )]
    Corrupt {
        /// What the store was doing.
        what: String,
        /// The error the backend reported.
        #[source]
        source: Cause,
    },
    /// The database was written by a newer Tugboat, whose schema this one does not know.
    #[error(
        "the database {} has schema version {found} but this tug only knows up to {known}; upgrade tug or \
         point it at another database",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// The database's file system cannot hold a SQLite write-ahead log (some network file systems).
    #[error(
        "the database {} is on a file system without WAL support (journal_mode is {mode}); put it on a local disk",
        path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite fell back to.
        mode: String,
    },
    /// The store holds data of another data version than this build reads and writes (two
    /// servers of different releases on one etcd).
    #[error(
        "{store} holds data version {found}, but this tug reads and writes data version {known}; run servers of \
         one release against it, or point this one at another key prefix"
    )]
    DataVersion {
        /// Where the data is (the endpoints and key prefix).
        store: String,
        /// The version found there.
        found: String,
        /// The version this build knows.
        known: u32,
    },
    /// A write of a server that is no longer the leader: another server took over, and this
    /// write was refused so that two leaders never both write.
    #[error("{what}: refused because this server is no longer the leader (fenced); the new leader carries on")]
    Fenced {
        /// What the write was.
        what: String,
    },
    /// The store's worker has stopped: the server is shutting down, or an operation panicked.
    #[error("the store has stopped ({0}); if the server is not shutting down, see its log and restart it")]
    Stopped(&'static str),
    /// Any other backend failure.
    #[error("{what}: {source}")]
    Backend {
        /// What the store was doing.
        what: String,
        /// The error the backend reported.
        #[source]
        source: Cause,
    },
}

/// What a caller can do about a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job, run, service or pool does not exist.
    NotFound,
    /// The write conflicts with what is stored (a taken name, a stale version).
    Conflict,
    /// The request itself is wrong (a cursor this store did not hand out).
    Invalid,
    /// The disk is full: free space, then retry.
    StorageFull,
    /// Busy or stopped: retry later.
    Unavailable,
    /// The data is damaged: restore it.
    Corrupt,
    /// Anything else.
    Other,
}

impl StoreError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::JobNotFound(_)
            | StoreError::RunNotFound(_)
            | StoreError::PoolNotFound(_)
            | StoreError::ServiceNotFound(_)
            | StoreError::TokenNotFound(_) => ErrorKind::NotFound,
            StoreError::JobExists(_)
            | StoreError::VersionConflict { .. }
            | StoreError::PoolExists(_)
            | StoreError::PoolInUse { .. }
            | StoreError::AddressTaken { .. }
            | StoreError::ServiceExists(_)
            | StoreError::TokenExists(_) => ErrorKind::Conflict,
            StoreError::BadCursor(_) => ErrorKind::Invalid,
            StoreError::StorageFull { .. } => ErrorKind::StorageFull,
            StoreError::Unavailable { .. } | StoreError::Stopped(_) | StoreError::Fenced { .. } => {
                ErrorKind::Unavailable
            }
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
            StoreError::NewerSchema { .. }
            | StoreError::NoWal { .. }
            | StoreError::DataVersion { .. }
            | StoreError::Backend { .. } => ErrorKind::Other,
        }
    }

    /// The backend's error, for downcasting (`std::error::Error::source` gives the shared
    /// [`Cause`] around it); `None` for errors of the store's own.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            StoreError::StorageFull { source, .. }
            | StoreError::Unavailable { source, .. }
            | StoreError::Corrupt { source, .. }
            | StoreError::Backend { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }

    /// An I/O failure while doing `what` in `dir`: [`StoreError::StorageFull`] when the disk is
    /// full (`ENOSPC`), [`StoreError::Backend`] otherwise.
    pub fn io(what: impl Into<String>, dir: &Path, e: std::io::Error) -> StoreError {
        let what = what.into();
        if e.kind() == std::io::ErrorKind::StorageFull {
            StoreError::StorageFull { what, dir: dir.to_owned(), source: Arc::new(e) }
        } else {
            StoreError::Backend { what, source: Arc::new(e) }
        }
    }
}

fn full_message(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        "no space left for the store; free memory or disk space and retry".to_string()
    } else {
        format!(
            "no space left on the file system holding {}; free space there (a lower keep_runs keeps fewer \
             finished runs) and retry",
            dir.display()
        )
    }
}
