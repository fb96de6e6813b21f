//! State store contract (fenced atomic writes, sorted prefix lists, leased keys, prefix
//! watches) against a real etcd and the embedded SQLite store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flotilla_coordinator::backend::open_backend;
use flotilla_coordinator::store::{StateStore, StoreError, WriteOp};
use flotilla_testkit::{Etcd, eventually_true};
use tokio_util::sync::CancellationToken;

use crate::lock::{Backend, embedded_config, etcd_config, put, trace};

async fn kv_contract((lock, store): &Backend) -> anyhow::Result<()> {
    let held = lock.acquire(&CancellationToken::new()).await?;
    let t = held.token;

    // Atomic multi-op write; the last op on a key wins.
    store
        .write(
            t,
            vec![
                put("rollouts/b", "2"),
                put("rollouts/a", "1"),
                put("rollouts/c", "x"),
                put("rolloutsX", "outside"),
                WriteOp::Delete {
                    key: "rollouts/c".into(),
                },
                put("rollouts/a", "1b"),
            ],
        )
        .await?;
    let listed = store.list("rollouts/").await?;
    let expected = vec![
        ("rollouts/a".to_owned(), b"1b".to_vec()),
        ("rollouts/b".to_owned(), b"2".to_vec()),
    ];
    ensure!(listed == expected, "list: {listed:?}");
    ensure!(store.get("rollouts/c").await?.is_none());
    ensure!(store.get("rolloutsX").await?.as_deref() == Some(&b"outside"[..]));
    ensure!(
        store.list("").await?.len() == 3,
        "empty prefix lists everything"
    );

    // A fenced write changes nothing, not even its other ops.
    match store
        .write(
            t + 1000,
            vec![put("rollouts/a", "no"), put("rollouts/z", "no")],
        )
        .await
    {
        Err(StoreError::Fenced { token }) => ensure!(token == t + 1000),
        other => bail!("expected Fenced, got {other:?}"),
    }
    ensure!(store.get("rollouts/a").await?.as_deref() == Some(&b"1b"[..]));
    ensure!(store.get("rollouts/z").await?.is_none());

    // Watch: established on return, reports puts and deletes under the prefix only.
    let mut rx = store.watch_prefix("rollouts/").await?;
    store.write(t, vec![put("other/x", "1")]).await?;
    store.write(t, vec![put("rollouts/d", "4")]).await?;
    let key = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .context("no watch event")?
        .context("watch closed")?;
    ensure!(key == "rollouts/d", "watch reported {key}");
    store
        .write(
            t,
            vec![WriteOp::Delete {
                key: "rollouts/d".into(),
            }],
        )
        .await?;
    let key = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(k) if k == "rollouts/d" => {
                    if store.get("rollouts/d").await?.is_none() {
                        return anyhow::Ok(k);
                    }
                }
                Some(k) => bail!("unexpected watch event for {k}"),
                None => bail!("watch closed"),
            }
        }
    })
    .await
    .context("no watch event for the delete")??;
    ensure!(key == "rollouts/d");

    held.release().await?;
    Ok(())
}

async fn leased_contract((_, store): &Backend) -> anyhow::Result<()> {
    let store: Arc<dyn StateStore> = Arc::clone(store);
    let ttl = Duration::from_secs(2);
    let started = Instant::now();
    store
        .put_leased("agents/a1", b"{\"address\":\"x\"}".to_vec(), ttl)
        .await?;
    store.put_leased("agents/a2", b"v1".to_vec(), ttl).await?;
    // Re-put (heartbeat) keeps a key and replaces its value.
    store.put_leased("agents/a2", b"v2".to_vec(), ttl).await?;
    ensure!(store.get("agents/a2").await?.as_deref() == Some(&b"v2"[..]));
    let listed: Vec<String> = store
        .list("agents/")
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    ensure!(listed == ["agents/a1", "agents/a2"], "listed {listed:?}");

    let mut rx = store.watch_prefix("agents/").await?;
    eventually_true("leased keys expire", Duration::from_secs(15), || {
        let store = Arc::clone(&store);
        async move { Ok(store.list("agents/").await?.is_empty()) }
    })
    .await?;
    let gone_after = started.elapsed();
    eprintln!("leased keys (ttl {ttl:?}) gone after {gone_after:?}");
    ensure!(gone_after >= ttl, "expired early: {gone_after:?}");
    ensure!(store.get("agents/a1").await?.is_none());
    // Expiry is a change the watch reports.
    let key = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .context("expiry not reported by the watch")?
        .context("watch closed")?;
    ensure!(key.starts_with("agents/a"), "watch reported {key}");
    Ok(())
}

#[tokio::test]
async fn etcd_store_contract() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let backend = open_backend(&etcd_config(&etcd, "a", Duration::from_secs(10))).await?;
    kv_contract(&backend).await
}

#[tokio::test]
async fn embedded_store_contract() -> anyhow::Result<()> {
    trace();
    let dir = tempfile::tempdir()?;
    let backend = open_backend(&embedded_config(dir.path(), "a")).await?;
    kv_contract(&backend).await
}

#[tokio::test]
async fn etcd_leased_keys_expire() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let backend = open_backend(&etcd_config(&etcd, "a", Duration::from_secs(10))).await?;
    leased_contract(&backend).await
}

#[tokio::test]
async fn embedded_leased_keys_expire() -> anyhow::Result<()> {
    trace();
    let dir = tempfile::tempdir()?;
    let backend = open_backend(&embedded_config(dir.path(), "a")).await?;
    leased_contract(&backend).await
}

/// The SQLite watch also sees writes made by another process (here: another pool).
#[tokio::test]
async fn embedded_watch_sees_other_writers() -> anyhow::Result<()> {
    trace();
    let dir = tempfile::tempdir()?;
    let (_, watcher) = open_backend(&embedded_config(dir.path(), "w")).await?;
    let (lock, writer) = open_backend(&embedded_config(dir.path(), "a")).await?;
    let mut rx = watcher.watch_prefix("rollouts/").await?;
    let held = lock.acquire(&CancellationToken::new()).await?;
    writer
        .write(held.token, vec![put("rollouts/r9", "1")])
        .await?;
    let key = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .context("cross-process change not reported")?
        .context("watch closed")?;
    ensure!(key == "rollouts/r9");
    held.release().await?;
    Ok(())
}
