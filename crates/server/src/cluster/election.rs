//! The leader election: a lease kept alive (and the step-down timer that says it is lost), and
//! etcd's election API on `P/leader`.
//!
//! A lease of TTL `T` is renewed every `T/3`. If no renewal has been confirmed for `2T/3`, the
//! lease counts as lost here, before etcd can expire it (at `T`) and let another member win:
//! the leader stops firing while its key still exists, so two members never fire at once.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, LeaderKey, ResignOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tug_store::etcd::{EtcdStore, Fence};

use super::{Member, MemberStatus};

/// Why the election failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// etcd could not be reached or refused the call.
    #[error("{what}: {source}; check that etcd is reachable")]
    Etcd {
        /// What the election was doing.
        what: String,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The lease was lost before the campaign was won.
    #[error("the lease was lost while campaigning")]
    LeaseLost,
    /// Reading the store failed.
    #[error(transparent)]
    Store(tug_store::StoreError),
}

fn etcd(what: &str) -> impl FnOnce(etcd_client::Error) -> ElectionError + '_ {
    move |source| ElectionError::Etcd { what: what.to_owned(), source }
}

/// A member's election: its own etcd connection (campaigns block for as long as another member
/// leads, longer than the store's request timeout).
pub struct Election {
    client: Client,
    name: String,
    ttl: Duration,
    me: Member,
}

/// A lease kept alive in the background. `lost` turns true once renewals have failed for the
/// step-down time; dropping the lease stops the keep-alive (etcd expires it after the TTL).
pub struct Lease {
    /// The lease id.
    pub id: i64,
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Completes once the lease counts as lost.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Whether the lease counts as lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A won campaign: the leader key, and the fence for the store.
pub struct Won {
    /// The key.
    pub key: LeaderKey,
    /// The store's fence: the key and its create revision (the term).
    pub fence: Fence,
}

impl Election {
    /// An election among the members of `store`'s group, as `me`, on leases of `ttl`.
    pub async fn new(store: &EtcdStore, me: Member, ttl: Duration) -> Result<Election, ElectionError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let client = Client::connect(&store.config().endpoints, Some(options)).await.map_err(etcd("connecting to etcd"))?;
        Ok(Election { client, name: store.election_prefix(), ttl, me })
    }

    /// This member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Grants a lease and keeps it alive until it is lost or dropped.
    pub async fn lease(&self) -> Result<Lease, ElectionError> {
        let secs = self.ttl.as_secs().max(1) as i64;
        let grant = self.client.lease_client().grant(secs, None).await.map_err(etcd("granting a lease"))?;
        let id = grant.id();
        // etcd may grant more than asked (it has a minimum); time the renewals by what it granted.
        let ttl = Duration::from_secs(grant.ttl().max(1) as u64).max(self.ttl);
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(self.client.clone(), id, ttl, tx));
        Ok(Lease { id, lost, task })
    }

    /// Campaigns on `lease` until this member leads; gives up if the lease is lost first.
    pub async fn campaign(&self, lease: &Lease) -> Result<Won, ElectionError> {
        let value = serde_json::to_vec(&self.me).expect("a member serializes");
        let mut election = self.client.election_client();
        let resp = tokio::select! {
            r = election.campaign(self.name.clone(), value, lease.id) => r.map_err(etcd("campaigning"))?,
            () = lease.lost() => return Err(ElectionError::LeaseLost),
        };
        let key = resp.leader().cloned().ok_or_else(|| ElectionError::Etcd {
            what: "campaigning".into(),
            source: etcd_client::Error::ElectError("etcd answered a campaign without a leader key".into()),
        })?;
        let fence = Fence { key: key.key().to_vec(), revision: key.rev() };
        Ok(Won { key, fence })
    }

    /// Announces `me` anew (after winning, with the instant it started leading).
    pub async fn proclaim(&self, won: &Won, me: &Member) -> Result<(), ElectionError> {
        let value = serde_json::to_vec(me).expect("a member serializes");
        let options = etcd_client::ProclaimOptions::new().with_leader(won.key.clone());
        self.client.election_client().proclaim(value, Some(options)).await.map_err(etcd("announcing the leader"))?;
        Ok(())
    }

    /// Gives up leading, so another member wins at once rather than after the TTL.
    pub async fn resign(&self, won: Won) {
        let options = ResignOptions::new().with_leader(won.key);
        if let Err(e) = self.client.election_client().resign(Some(options)).await {
            tracing::warn!(error = %e, "could not resign the leadership; another server takes over when the lease expires");
        }
    }

    /// The leader's announcement, if there is a leader.
    pub async fn leader(&self) -> Result<Option<Member>, ElectionError> {
        Ok(self.members().await?.into_iter().find(|m| m.leader).map(|m| m.member))
    }

    /// Every member, oldest key (the leader) first.
    pub async fn members(&self) -> Result<Vec<MemberStatus>, ElectionError> {
        let prefix = format!("{}/", self.name);
        let options = GetOptions::new().with_prefix();
        let mut resp = self.client.kv_client().get(prefix, Some(options)).await.map_err(etcd("listing the members"))?;
        let mut kvs = resp.take_kvs();
        kvs.sort_by_key(|kv| kv.create_revision());
        let mut members = Vec::with_capacity(kvs.len());
        for (i, kv) in kvs.iter().enumerate() {
            let Ok(member) = serde_json::from_slice::<Member>(kv.value()) else { continue };
            let ttl = match kv.lease() {
                0 => None,
                lease => self.client.lease_client().time_to_live(lease, None).await.ok().map(|r| r.ttl()),
            };
            members.push(MemberStatus { member, leader: i == 0, revision: kv.create_revision(), lease_ttl_left: ttl });
        }
        Ok(members)
    }
}

/// Renews lease `id` every `ttl/3`; sets `lost` once no renewal has been confirmed for
/// `2*ttl/3`, or etcd says the lease is gone.
async fn keep_alive(client: Client, id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 3;
    let step_down = ttl * 2 / 3;
    let mut renewed = Instant::now();
    'open: loop {
        let opened = tokio::time::timeout(every, client.lease_client().keep_alive(id)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => {
                renewed = Instant::now();
                pair
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                tracing::error!(lease = id, why, "the lease is gone; this server steps down");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "cannot renew the lease; retrying");
                if renewed.elapsed() >= step_down {
                    break 'open;
                }
                tokio::time::sleep(every / 4).await;
                continue;
            }
            Err(_) => {
                if renewed.elapsed() >= step_down {
                    break 'open;
                }
                continue;
            }
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if keeper.keep_alive().await.is_err() {
                        continue 'open;
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(r)) if r.ttl() > 0 => renewed = Instant::now(),
                    Ok(Some(_)) => {
                        tracing::error!(lease = id, "etcd says the lease has expired; this server steps down");
                        let _ = lost.send(true);
                        return;
                    }
                    Ok(None) | Err(_) => continue 'open,
                },
                () = tokio::time::sleep_until(renewed + step_down) => break 'open,
            }
        }
    }
    tracing::error!(lease = id, not_renewed_for = ?step_down, "the lease could not be renewed; this server steps down before it expires");
    let _ = lost.send(true);
}
