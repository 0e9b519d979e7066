//! The etcd store: the conformance checks on a real etcd (each test starts its own member), plus
//! what is particular to etcd (the data version, unreachable endpoints, a member lost, batches
//! larger than one transaction, fencing).

#[macro_use]
mod conformance;

use std::time::Duration;

use tug_core::run::{RunState, Trigger};
use tug_store::etcd::{EtcdConfig, EtcdStore, EtcdUrlError, Fence};
use tug_store::testing::EtcdCluster;
use tug_store::{ErrorKind, FireBatch, RunQuery, Store, StoreError};

use conformance::{commit, finished, fire, spec, t};

/// A store on a fresh one-member cluster, which lives as long as the store.
struct Fixture {
    store: EtcdStore,
    _cluster: EtcdCluster,
}

impl std::ops::Deref for Fixture {
    type Target = EtcdStore;
    fn deref(&self) -> &EtcdStore {
        &self.store
    }
}

async fn fixture() -> Fixture {
    let cluster = EtcdCluster::start(1);
    let store = EtcdStore::connect(cluster.config("tug")).await.unwrap();
    Fixture { store, _cluster: cluster }
}

conformance_tests!(fixture().await);

#[tokio::test]
async fn all_checks_share_one_store() {
    let f = fixture().await;
    conformance::all(&*f).await;
}

/// Two prefixes on one cluster are two stores: nothing of one shows in the other.
#[tokio::test]
async fn prefixes_keep_installations_apart() {
    let cluster = EtcdCluster::start(1);
    let a = EtcdStore::connect(cluster.config("a")).await.unwrap();
    let b = EtcdStore::connect(cluster.config("a-b")).await.unwrap();
    a.create_job(&spec("apart"), t(0)).await.unwrap();
    assert!(matches!(b.get_job("apart").await, Err(StoreError::JobNotFound(_))));
    assert!(b.load_jobs().await.unwrap().is_empty());
}

/// A second server of another release refuses to start on the data, naming both versions.
#[tokio::test]
async fn another_data_version_is_refused() {
    let cluster = EtcdCluster::start(1);
    let store = EtcdStore::connect(cluster.config("dv")).await.unwrap();
    drop(store);
    let client = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    client.kv_client().put("/dv/meta/version", "7", None).await.unwrap();
    let err = EtcdStore::connect(cluster.config("dv")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::DataVersion { .. }), "{err:?}");
    assert!(text.contains("data version 7") && text.contains("data version 2"), "{text}");
    assert!(text.contains(&cluster.endpoints()[0]), "names where: {text}");
}

/// Nothing listens: after retrying for the configured time, the error names every endpoint.
#[tokio::test]
async fn unreachable_endpoints_are_named() {
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ports: Vec<u16> = (0..2).map(port).collect();
    let mut config = EtcdConfig::parse(&format!("etcd://127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1])).unwrap();
    config.connect_for = Duration::from_millis(700);
    let started = tokio::time::Instant::now();
    let err = EtcdStore::connect(config).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    for p in ports {
        assert!(text.contains(&format!("127.0.0.1:{p}")), "{text}");
    }
    assert!(text.contains("--store"), "says what to do: {text}");
    assert!(started.elapsed() >= Duration::from_millis(300), "it retried before giving up");
}

#[test]
fn store_urls_parse_or_say_what_is_wrong() {
    let c = EtcdConfig::parse("etcd://h1:2379,h2:2379,h3:2379").unwrap();
    assert_eq!((c.endpoints.len(), c.prefix.as_str(), c.max_txn_ops), (3, "/tug", 128));
    let c = EtcdConfig::parse("etcd://10.0.0.1:2379/prod/tug/?max-txn-ops=10000").unwrap();
    assert_eq!((c.prefix.as_str(), c.max_txn_ops), ("/prod/tug", 10_000));
    for (bad, says) in [
        ("http://h1:2379", "must start with etcd://"),
        ("etcd://h1", "give HOST:PORT"),
        ("etcd://h1:2379,,h2:2379", "give HOST:PORT"),
        ("etcd://h1:99999", "give HOST:PORT"),
        ("etcd://h1:2379/a b", "invalid key prefix"),
        ("etcd://h1:2379?max-txn-ops=3", "at least 16"),
        ("etcd://h1:2379?fast=yes", "unknown option"),
    ] {
        let err = EtcdConfig::parse(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
    // The cause is a value a caller can match on, not only text.
    let err = EtcdConfig::parse("etcd://h1:2379,h2").unwrap_err();
    assert_eq!(err, EtcdUrlError::Endpoint { endpoint: "h2".into(), url: "etcd://h1:2379,h2".into() });
}

/// A batch far larger than one transaction: split, still each key once, and idempotent.
#[tokio::test]
async fn batches_larger_than_a_transaction_are_split() {
    let cluster = EtcdCluster::start(1);
    let mut config = cluster.config("split");
    config.max_txn_ops = 16;
    let store = EtcdStore::connect(config).await.unwrap();
    for job in ["split-a", "split-b"] {
        store.create_job(&spec(job), t(0)).await.unwrap();
    }
    let fires: Vec<_> = (0..120).map(|i| fire(if i % 2 == 0 { "split-a" } else { "split-b" }, t(i * 60), Trigger::Schedule)).collect();
    let batch = FireBatch { runs: fires.clone(), cursors: vec![("split-a".into(), t(99_999))] };
    let created = store.commit_fires(batch.clone(), t(1)).await.unwrap();
    assert_eq!(created.len(), 120);
    assert!(created.windows(2).all(|w| w[0].id < w[1].id));
    assert!(store.commit_fires(batch, t(2)).await.unwrap().is_empty(), "a second commit creates nothing");
    assert_eq!(store.get_job("split-a").await.unwrap().fire_cursor, Some(t(99_999)));
    let done: Vec<_> = created.iter().map(|r| finished(r, RunState::Succeeded, t(9))).collect();
    store.save_runs(&done, &[]).await.unwrap();
    assert!(store.active_runs().await.unwrap().is_empty());
    let totals = store.run_totals(None).await.unwrap();
    assert_eq!(totals.iter().map(|(_, t)| t.succeeded).sum::<u64>(), 120);
    assert_eq!(store.prune_runs("split-a", 5).await.unwrap().len(), 55);
    assert_eq!(store.delete_job("split-b").await.unwrap().len(), 60);
}

/// With three members, losing one changes nothing for the store: writes and reads go on.
#[tokio::test]
async fn a_lost_member_of_three_changes_nothing() {
    let mut cluster = EtcdCluster::start(3);
    let store = EtcdStore::connect(cluster.config("lost")).await.unwrap();
    store.create_job(&spec("lost"), t(0)).await.unwrap();
    commit(&store, vec![fire("lost", t(60), Trigger::Schedule)], t(60)).await;
    cluster.kill(0);
    let runs = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match store.commit_fires(FireBatch { runs: vec![fire("lost", t(120), Trigger::Schedule)], cursors: vec![] }, t(120)).await {
                Ok(runs) => break runs,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await
    .expect("writes go on with two of three members");
    assert_eq!(runs.len(), 1);
    let listed = store.list_runs("lost", &RunQuery::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    cluster.restart(0);
}

/// A fenced store writes only while its fence key is the one it holds; a write after the key
/// changed hands is refused as fenced, and changes nothing.
#[tokio::test]
async fn writes_after_the_fence_moved_are_refused() {
    let cluster = EtcdCluster::start(1);
    let store = EtcdStore::connect(cluster.config("fence")).await.unwrap();
    store.create_job(&spec("fence"), t(0)).await.unwrap();
    let mut kv = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap().kv_client();
    let put = kv.put("/fence/leader/x", "server-1", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    store.fence(Some(Fence { key: b"/fence/leader/x".to_vec(), revision }));
    assert_eq!(commit(&store, vec![fire("fence", t(60), Trigger::Schedule)], t(60)).await.len(), 1);

    // Another server wins: the key is deleted and created again.
    kv.delete("/fence/leader/x", None).await.unwrap();
    kv.put("/fence/leader/x", "server-2", None).await.unwrap();
    let err = store
        .commit_fires(FireBatch { runs: vec![fire("fence", t(120), Trigger::Schedule)], cursors: vec![] }, t(120))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    assert!(err.to_string().contains("no longer the leader"), "{err}");
    assert!(matches!(store.create_job(&spec("fence-2"), t(1)).await, Err(StoreError::Fenced { .. })));
    store.fence(None);
    assert_eq!(store.list_runs("fence", &RunQuery::default()).await.unwrap().items.len(), 1, "the fenced write changed nothing");
    assert!(matches!(store.get_job("fence-2").await, Err(StoreError::JobNotFound(_))));
}

/// A server writes runs from what it last wrote, without reading first; another writer behind
/// its back (a second server, a job deleted and created again) fails that write, and it reads
/// and writes again: no run key twice, no run id twice, totals from what is really stored.
#[tokio::test]
async fn writes_from_the_cache_notice_other_writers() {
    let cluster = EtcdCluster::start(1);
    let a = EtcdStore::connect(cluster.config("cache")).await.unwrap();
    let b = EtcdStore::connect(cluster.config("cache")).await.unwrap();
    a.create_job(&spec("two"), t(0)).await.unwrap();
    let first = commit(&a, vec![fire("two", t(60), Trigger::Schedule)], t(60)).await;
    let second = commit(&a, vec![fire("two", t(120), Trigger::Schedule)], t(120)).await;
    assert_eq!((first.len(), second.len()), (1, 1));

    // The other server fires an instant already fired and a new one.
    let by_b = commit(&b, vec![fire("two", t(120), Trigger::Schedule), fire("two", t(180), Trigger::Schedule)], t(180)).await;
    assert_eq!(by_b.len(), 1, "the run key of 120 exists");
    assert_eq!(by_b[0].scheduled_at, t(180));
    // The first server's counter and stat are stale now: it reads again.
    let by_a = commit(&a, vec![fire("two", t(180), Trigger::Schedule), fire("two", t(240), Trigger::Schedule)], t(240)).await;
    assert_eq!(by_a.len(), 1, "the run key of 180 exists");
    assert!(by_a[0].id > by_b[0].id, "no run id handed out twice");

    // The other server finishes a run the first one holds as pending; the first one's later
    // change of it counts from what is stored.
    b.save_runs(&[finished(&first[0], RunState::Succeeded, t(61))], &[]).await.unwrap();
    a.save_runs(&[finished(&first[0], RunState::Failed, t(62))], &[]).await.unwrap();
    let totals = a.run_totals(Some("two")).await.unwrap();
    assert_eq!((totals[0].1.succeeded, totals[0].1.failed), (0, 1));
    assert_eq!(a.get_run(first[0].id).await.unwrap().state, RunState::Failed);
    let active: Vec<_> = a.active_runs().await.unwrap().iter().map(|r| r.scheduled_at).collect();
    assert_eq!(active, vec![t(120), t(180), t(240)]);

    // The job is deleted and created again behind the first server's back.
    b.delete_job("two").await.unwrap();
    b.create_job(&spec("two"), t(300)).await.unwrap();
    let err = a.save_runs(&[finished(&second[0], RunState::Succeeded, t(301))], &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::RunNotFound(id) if id == second[0].id), "{err:?}");
    let again = commit(&a, vec![fire("two", t(120), Trigger::Schedule)], t(300)).await;
    assert_eq!(again.len(), 1, "the new job has no run keys yet");
    let listed = b.list_runs("two", &RunQuery::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|r| r.id).collect::<Vec<_>>(), vec![again[0].id]);
    assert_eq!(b.get_job("two").await.unwrap().last_run_at, Some(t(120)));
}
