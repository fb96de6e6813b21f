//! Fleet lock contract against a real etcd and the embedded file lock + SQLite backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flotilla_coordinator::backend::{BackendConfig, etcd_lock_key, open_backend};
use flotilla_coordinator::lock::{FleetLock, Leadership, LockError};
use flotilla_coordinator::store::{StateStore, StoreError, WriteOp};
use flotilla_testkit::{Etcd, eventually_true};
use tokio_util::sync::CancellationToken;

pub(crate) type Backend = (Arc<dyn FleetLock>, Arc<dyn StateStore>);

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub(crate) fn etcd_config(etcd: &Etcd, holder: &str, ttl: Duration) -> BackendConfig {
    BackendConfig {
        etcd_endpoints: vec![etcd.endpoint()],
        prefix: "/flotilla-test".into(),
        lease_ttl: ttl,
        holder_id: holder.into(),
        ..BackendConfig::default()
    }
}

pub(crate) fn embedded_config(dir: &std::path::Path, holder: &str) -> BackendConfig {
    BackendConfig {
        state_dir: dir.to_path_buf(),
        holder_id: holder.into(),
        ..BackendConfig::default()
    }
}

pub(crate) fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

async fn acquire_within(lock: &Arc<dyn FleetLock>, limit: Duration) -> anyhow::Result<Leadership> {
    let cancel = CancellationToken::new();
    tokio::time::timeout(limit, lock.acquire(&cancel))
        .await
        .context("acquire did not finish in time")?
        .context("acquire failed")
}

async fn lost_within(leadership: &Leadership, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    tokio::time::timeout(limit, leadership.lost.cancelled())
        .await
        .with_context(|| format!("`lost` not cancelled within {limit:?}"))?;
    Ok(start.elapsed())
}

/// The shared contract: the holder writes; a second acquirer blocks while the first holds and
/// gets a strictly larger token after release; the released token is fenced and `lost` fires.
async fn handover_contract(a: &Backend, b: &Backend) -> anyhow::Result<()> {
    let (lock_a, store_a) = a;
    let (lock_b, store_b) = b;

    let started = Instant::now();
    let first = acquire_within(lock_a, Duration::from_secs(10)).await?;
    eprintln!("uncontended acquire took {:?}", started.elapsed());
    ensure!(first.token > 0, "token must be positive");
    store_a
        .write(first.token, vec![put("rollouts/r1", "running")])
        .await?;
    ensure!(store_b.get("rollouts/r1").await?.as_deref() == Some(&b"running"[..]));

    // The standby blocks while the first holds the lock.
    let cancel_b = CancellationToken::new();
    let waiter = {
        let lock_b = Arc::clone(lock_b);
        let cancel_b = cancel_b.clone();
        tokio::spawn(async move { lock_b.acquire(&cancel_b).await })
    };
    // A standby that acquires while the lock is held would finish here; 500 ms is plenty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !waiter.is_finished(),
        "second acquirer must block while the first holds the lock"
    );

    let old = first.token;
    let lost = first.lost.clone();
    let released_at = Instant::now();
    first.release().await?;
    ensure!(lost.is_cancelled(), "release cancels `lost`");
    let second = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .context("standby did not take over after release")??
        .context("standby acquire failed")?;
    eprintln!("takeover after release took {:?}", released_at.elapsed());
    ensure!(
        second.token > old,
        "token must grow: {} then {}",
        old,
        second.token
    );

    // The released token is fenced, the new one writes.
    match store_a.write(old, vec![put("rollouts/r1", "stale")]).await {
        Err(StoreError::Fenced { token }) => ensure!(token == old),
        other => bail!("stale write must be fenced, got {other:?}"),
    }
    store_b
        .write(second.token, vec![put("rollouts/r1", "resumed")])
        .await?;
    ensure!(store_a.get("rollouts/r1").await?.as_deref() == Some(&b"resumed"[..]));
    // A stale token refused by the store must not cancel the current holder.
    match store_b.write(old, vec![]).await {
        Err(StoreError::Fenced { .. }) => {}
        other => bail!("empty stale write must be fenced, got {other:?}"),
    }
    ensure!(
        !second.lost.is_cancelled(),
        "someone else's stale token must not cancel us"
    );
    second.release().await?;
    Ok(())
}

#[tokio::test]
async fn etcd_fenced_handover() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let a = open_backend(&etcd_config(&etcd, "a", Duration::from_secs(10))).await?;
    let b = open_backend(&etcd_config(&etcd, "b", Duration::from_secs(10))).await?;
    handover_contract(&a, &b).await
}

#[tokio::test]
async fn embedded_fenced_handover() -> anyhow::Result<()> {
    trace();
    let dir = tempfile::tempdir()?;
    let a = open_backend(&embedded_config(dir.path(), "a")).await?;
    let b = open_backend(&embedded_config(dir.path(), "b")).await?;
    handover_contract(&a, &b).await
}

#[tokio::test]
async fn embedded_state_and_tokens_survive_reopen() -> anyhow::Result<()> {
    trace();
    let dir = tempfile::tempdir()?;
    let token = {
        let (lock, store) = open_backend(&embedded_config(dir.path(), "a")).await?;
        let held = acquire_within(&lock, Duration::from_secs(5)).await?;
        store
            .write(held.token, vec![put("rollouts/r1", "wave-2")])
            .await?;
        // Dropped without release, as if the process died.
        held.token
    };
    let (lock, store) = open_backend(&embedded_config(dir.path(), "b")).await?;
    ensure!(store.get("rollouts/r1").await?.as_deref() == Some(&b"wave-2"[..]));
    let held = acquire_within(&lock, Duration::from_secs(5)).await?;
    ensure!(held.token > token, "token must grow across restarts");
    match store.write(token, vec![put("rollouts/r1", "stale")]).await {
        Err(StoreError::Fenced { .. }) => {}
        other => bail!("stale write must be fenced, got {other:?}"),
    }
    held.release().await?;
    Ok(())
}

#[tokio::test]
async fn acquire_is_cancellable_while_waiting() -> anyhow::Result<()> {
    trace();
    let dir = tempfile::tempdir()?;
    let (lock_a, _) = open_backend(&embedded_config(dir.path(), "a")).await?;
    let (lock_b, _) = open_backend(&embedded_config(dir.path(), "b")).await?;
    let held = acquire_within(&lock_a, Duration::from_secs(5)).await?;
    let cancel = CancellationToken::new();
    let waiter = {
        let cancel = cancel.clone();
        tokio::spawn(async move { lock_b.acquire(&cancel).await })
    };
    cancel.cancel();
    let res = tokio::time::timeout(Duration::from_secs(5), waiter).await??;
    ensure!(matches!(res, Err(LockError::Cancelled)), "got {res:?}");
    held.release().await?;
    Ok(())
}

/// The holder's lease is revoked behind its back: `lost` fires, its token is fenced and a
/// standby takes over with a larger token.
#[tokio::test]
async fn etcd_revoked_lease_fences_old_holder() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let ttl = Duration::from_secs(3);
    let (lock_a, store_a) = open_backend(&etcd_config(&etcd, "a", ttl)).await?;
    let (lock_b, store_b) = open_backend(&etcd_config(&etcd, "b", ttl)).await?;
    let first = acquire_within(&lock_a, Duration::from_secs(10)).await?;
    store_a.write(first.token, vec![put("k", "1")]).await?;

    let mut client = etcd.client().await?;
    let resp = client.get(etcd_lock_key("/flotilla-test"), None).await?;
    let kv = resp.kvs().first().context("lock key missing")?;
    ensure!(
        u64::try_from(kv.create_revision())? == first.token,
        "token is the create revision"
    );
    let revoked_at = Instant::now();
    client.lease_revoke(kv.lease()).await?;

    let took = lost_within(&first, Duration::from_secs(5)).await?;
    eprintln!(
        "revoked lease noticed after {:?}",
        revoked_at.elapsed().max(took)
    );
    match store_a.write(first.token, vec![put("k", "stale")]).await {
        Err(StoreError::Fenced { .. }) => {}
        other => bail!("write after revoke must be fenced, got {other:?}"),
    }
    let second = acquire_within(&lock_b, Duration::from_secs(10)).await?;
    ensure!(second.token > first.token);
    store_b.write(second.token, vec![put("k", "2")]).await?;
    ensure!(store_b.get("k").await?.as_deref() == Some(&b"2"[..]));
    second.release().await?;
    Ok(())
}

/// etcd freezes (SIGSTOP) for longer than the TTL: `lost` fires within TTL + margin without
/// any answer from etcd; after it thaws the old token is fenced and a standby takes over.
#[tokio::test]
async fn etcd_unreachable_past_ttl_loses_leadership() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let ttl = Duration::from_secs(2);
    let (lock_a, store_a) = open_backend(&etcd_config(&etcd, "a", ttl)).await?;
    let (lock_b, store_b) = open_backend(&etcd_config(&etcd, "b", ttl)).await?;
    let first = acquire_within(&lock_a, Duration::from_secs(10)).await?;

    etcd.pause()?;
    let paused_at = Instant::now();
    let detected = lost_within(&first, ttl + Duration::from_millis(1500)).await;
    let took = paused_at.elapsed();
    etcd.resume()?;
    detected?;
    eprintln!("lease loss noticed {took:?} after etcd froze (ttl {ttl:?})");
    ensure!(took <= ttl + Duration::from_millis(1500));

    // After etcd thaws the lease is expired (or revoked by the loser): stale writes are fenced.
    eventually_true("old token fenced", Duration::from_secs(15), || {
        let store_a = Arc::clone(&store_a);
        let token = first.token;
        async move {
            Ok(matches!(
                store_a.write(token, vec![put("k", "stale")]).await,
                Err(StoreError::Fenced { .. })
            ))
        }
    })
    .await?;
    let second = acquire_within(&lock_b, Duration::from_secs(15)).await?;
    ensure!(second.token > first.token);
    store_b.write(second.token, vec![put("k", "new")]).await?;
    second.release().await?;
    Ok(())
}

/// A dead holder (its leadership dropped without release, keep-alive stopped) hands over
/// after the TTL.
#[tokio::test]
async fn etcd_dead_holder_hands_over_after_ttl() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let ttl = Duration::from_secs(2);
    let (lock_a, _) = open_backend(&etcd_config(&etcd, "a", ttl)).await?;
    let (lock_b, _) = open_backend(&etcd_config(&etcd, "b", ttl)).await?;
    let first = acquire_within(&lock_a, Duration::from_secs(10)).await?;
    let token = first.token;
    let died_at = Instant::now();
    drop(first);
    let second = acquire_within(&lock_b, Duration::from_secs(10)).await?;
    eprintln!(
        "takeover from a dead holder took {:?} (ttl {ttl:?})",
        died_at.elapsed()
    );
    ensure!(second.token > token);
    second.release().await?;
    Ok(())
}

/// An etcd hiccup shorter than the TTL is ridden out: `lost` stays untouched and the holder
/// keeps writing after etcd thaws.
#[tokio::test]
async fn etcd_brief_outage_keeps_leadership() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let ttl = Duration::from_secs(4);
    let (lock, store) = open_backend(&etcd_config(&etcd, "a", ttl)).await?;
    let held = acquire_within(&lock, Duration::from_secs(10)).await?;
    etcd.pause()?;
    // The fault itself lasts a fixed time; nothing waits on it for synchronization.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    etcd.resume()?;
    ensure!(
        !held.lost.is_cancelled(),
        "a {ttl:?} lease must survive a 1.2 s freeze"
    );
    store
        .write(held.token, vec![put("k", "still-leader")])
        .await?;
    // Keep-alives resume: the lease outlives several TTLs' worth of refreshes.
    let outlived = tokio::time::timeout(ttl + Duration::from_secs(1), held.lost.cancelled()).await;
    ensure!(outlived.is_err(), "leadership lost after etcd came back");
    store
        .write(held.token, vec![put("k", "still-leader-2")])
        .await?;
    held.release().await?;
    Ok(())
}

/// A coordinator that starts while etcd is down opens its backend, reports `Unavailable` from
/// the store, keeps waiting in `acquire` (cancellable), and gets the lock once etcd is back.
#[tokio::test]
async fn etcd_down_at_startup_then_recovers() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    etcd.stop();
    let (lock, store) = open_backend(&etcd_config(&etcd, "a", Duration::from_secs(2))).await?;
    match store.get("k").await {
        Err(StoreError::Unavailable(_)) => {}
        other => bail!("expected Unavailable while etcd is down, got {other:?}"),
    }
    let cancel = CancellationToken::new();
    let waiting = {
        let lock = Arc::clone(&lock);
        let cancel = cancel.clone();
        tokio::spawn(async move { lock.acquire(&cancel).await })
    };
    cancel.cancel();
    let res = tokio::time::timeout(Duration::from_secs(5), waiting).await??;
    ensure!(matches!(res, Err(LockError::Cancelled)), "got {res:?}");

    let waiting = {
        let lock = Arc::clone(&lock);
        tokio::spawn(async move { lock.acquire(&CancellationToken::new()).await })
    };
    etcd.restart().await?;
    let held = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .context("acquire did not succeed after etcd came back")???;
    store.write(held.token, vec![put("k", "v")]).await?;
    held.release().await?;
    Ok(())
}

/// Issue 29: a lock key left by this coordinator's own earlier term, on a lease etcd still
/// keeps (as after an etcd restart, which restores leases with a fresh TTL), does not keep it
/// waiting out that lease: the lease is revoked and the lock taken. Another coordinator's key
/// is still waited for.
#[tokio::test]
async fn own_leftover_lock_key_is_taken_back_at_once() -> anyhow::Result<()> {
    trace();
    let etcd = Etcd::start().await?;
    let key = etcd_lock_key("/flotilla-test");
    let mut client = etcd.client().await?;
    let (lock, _) = open_backend(&etcd_config(&etcd, "coord-a", Duration::from_secs(3))).await?;

    let other = client.lease_grant(60, None).await?.id();
    let on = |lease| Some(etcd_client::PutOptions::new().with_lease(lease));
    client.put(key.as_str(), "coord-b", on(other)).await?;
    let cancel = CancellationToken::new();
    let waited = tokio::time::timeout(Duration::from_secs(2), lock.acquire(&cancel)).await;
    ensure!(waited.is_err(), "took the lock while coord-b's key lived");
    client.lease_revoke(other).await?;

    let mine = client.lease_grant(60, None).await?.id();
    let put = client.put(key.as_str(), "coord-a", on(mine)).await?;
    let leftover = put.header().map_or(0, |h| h.revision());
    let leadership = acquire_within(&lock, Duration::from_secs(10)).await?;
    ensure!(
        i64::try_from(leadership.token)? > leftover,
        "token {} is not newer than the leftover key's revision {leftover}",
        leadership.token
    );
    let ttl = client.lease_time_to_live(mine, None).await?.ttl();
    ensure!(ttl < 0, "the leftover lease was not revoked (ttl {ttl})");
    Ok(())
}
