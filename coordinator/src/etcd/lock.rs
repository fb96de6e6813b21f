//! etcd fleet lock: a lease kept alive every TTL/3 and a lock key created on it; the fencing
//! token is the lock key's create revision.
//!
//! Acquire: if the lock key exists, watch it until it is deleted (a standby blocks here) —
//! unless it holds this coordinator's own id (a key left by its earlier term, whose lease
//! etcd restored after a restart): then its lease is revoked and the attempt goes on;
//! otherwise grant a lease and `Txn when create_revision(key) == 0 then put(key, holder, lease),
//! get(key)`. The token is the created key's `create_revision`, which only grows because etcd
//! revisions only grow. Keep-alive: a request every TTL/3; the lease counts as lost when
//! etcd says so (TTL 0), when the lock key is deleted, or when no keep-alive succeeded for a
//! whole TTL (measured from the moment the last successful request was *sent*, so we give up
//! no later than etcd can expire the lease). Losing it cancels `lost` and revokes the lease
//! best-effort so a standby takes over quickly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call::{EtcdError, etcd_call};
use crate::fence::FenceSignals;
use crate::lock::{FleetLock, LeaderGuard, Leadership, LockError};

impl From<EtcdError> for LockError {
    fn from(e: EtcdError) -> Self {
        if e.is_transient() {
            LockError::Unavailable(Box::new(e))
        } else {
            LockError::Other(Box::new(e))
        }
    }
}

/// The longest pause between attempts at the lock while etcd does not answer: short, so a
/// coordinator leads again within about a second of etcd's return.
const UNAVAILABLE_RETRY_MAX: Duration = Duration::from_secs(1);

/// The etcd-backed [`FleetLock`].
pub(crate) struct EtcdFleetLock {
    client: Client,
    lock_key: String,
    holder_id: String,
    ttl: Duration,
    signals: Arc<FenceSignals>,
}

/// Result of one acquisition attempt.
enum Attempt {
    Acquired(Leadership),
    /// Someone else holds the key; watch for its deletion after this revision.
    Held {
        revision: i64,
        holder: String,
    },
}

impl EtcdFleetLock {
    pub(crate) fn new(
        client: Client,
        lock_key: String,
        holder_id: String,
        ttl: Duration,
        signals: Arc<FenceSignals>,
    ) -> Self {
        Self {
            client,
            lock_key,
            holder_id,
            ttl,
            signals,
        }
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1)
    }

    async fn attempt(&self, cancel: &CancellationToken) -> Result<Attempt, LockError> {
        let mut kv = self.client.kv_client();
        // Cheap check first so standbys do not churn leases while the lock is held.
        let resp = tokio::select! {
            () = cancel.cancelled() => return Err(LockError::Cancelled),
            r = etcd_call("get lock key", kv.get(self.lock_key.as_str(), None)) => r?,
        };
        if let Some(held) = resp.kvs().first() {
            if held.value() != self.holder_id.as_bytes() {
                return Ok(Attempt::Held {
                    revision: resp.header().map_or(0, |h| h.revision()),
                    holder: String::from_utf8_lossy(held.value()).into_owned(),
                });
            }
            // Our own key, left by an earlier term of this coordinator whose lease etcd still
            // keeps (after an etcd restart it restores leases with a fresh TTL). Nobody keeps
            // it alive; revoking its lease deletes it now instead of a TTL later.
            let leftover = held.lease();
            tracing::info!(
                holder = %self.holder_id,
                lease_id = leftover,
                "the fleet lock key is this coordinator's own, left by an earlier term; revoking its lease"
            );
            let mut lease = self.client.lease_client();
            if let Err(e) = etcd_call("lease revoke", lease.revoke(leftover)).await
                && e.is_transient()
            {
                return Err(e.into());
            }
        }

        let granted_at = Instant::now();
        let mut lease = self.client.lease_client();
        let grant = etcd_call("lease grant", lease.grant(self.ttl_secs(), None)).await?;
        // (Not raced against `cancel`: a grant we stopped waiting for would leak until its TTL.)
        let lease_id = grant.id();
        let granted_ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(1).max(1));
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(
                self.lock_key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    self.lock_key.as_str(),
                    self.holder_id.as_str(),
                    Some(etcd_client::PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::get(self.lock_key.as_str(), None),
            ])
            .or_else([TxnOp::get(self.lock_key.as_str(), None)]);
        let outcome = tokio::select! {
            () = cancel.cancelled() => Err(LockError::Cancelled),
            r = etcd_call("create lock key", kv.txn(txn)) => r.map_err(LockError::from),
        };
        let resp = match outcome {
            Ok(resp) => resp,
            Err(e) => {
                // The put may or may not have happened: revoking the lease deletes the key.
                revoke_in_background(self.client.clone(), lease_id);
                return Err(e);
            }
        };
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        if !resp.succeeded() {
            revoke_in_background(self.client.clone(), lease_id);
            return Ok(Attempt::Held {
                revision: resp.header().map_or(0, |h| h.revision()),
                holder: current
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default(),
            });
        }
        let token = current
            .and_then(|kv| u64::try_from(kv.create_revision()).ok())
            .filter(|t| *t > 0);
        let Some(token) = token else {
            revoke_in_background(self.client.clone(), lease_id);
            return Err(LockError::Other(
                "lock key created but its create revision could not be read".into(),
            ));
        };

        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let keeper = KeepAlive {
            client: self.client.clone(),
            lease_id,
            ttl: granted_ttl,
            lock_key: self.lock_key.clone(),
            token,
            lost: lost.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(keeper.clone().run_keep_alive(granted_at));
        tokio::spawn(keeper.run_key_watch());
        let guard = EtcdGuard {
            client: self.client.clone(),
            lock_key: self.lock_key.clone(),
            lease_id,
            stop,
        };
        Ok(Attempt::Acquired(Leadership::new(
            token,
            lost,
            Box::new(guard),
            Arc::clone(&self.signals),
        )))
    }

    /// Wait until the lock key is deleted after `revision`, the re-check interval passes, or
    /// the watch breaks (the caller then simply tries again).
    async fn wait_for_release(
        &self,
        revision: i64,
        cancel: &CancellationToken,
    ) -> Result<(), LockError> {
        let recheck = self.ttl * 3;
        let opts = WatchOptions::new()
            .with_start_revision(revision + 1)
            .with_filters([WatchFilterType::NoPut]);
        let mut watch = self.client.watch_client();
        let opened = tokio::select! {
            () = cancel.cancelled() => return Err(LockError::Cancelled),
            r = etcd_call("watch lock key", watch.watch(self.lock_key.as_str(), Some(opts))) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the lock key; polling instead");
                return sleep_or_cancel(self.ttl / 3, cancel).await;
            }
        };
        let deadline = Instant::now() + recheck;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Err(LockError::Cancelled),
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled()
                            || resp.events().iter().any(|e| e.event_type() == EventType::Delete)
                        {
                            return Ok(());
                        }
                    }
                    Ok(None) | Err(_) => return sleep_or_cancel(Duration::from_millis(200), cancel).await,
                },
            }
        }
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> Result<(), LockError> {
    tokio::select! {
        () = cancel.cancelled() => Err(LockError::Cancelled),
        () = tokio::time::sleep(d) => Ok(()),
    }
}

fn revoke_in_background(client: Client, lease_id: i64) {
    tokio::spawn(async move {
        let mut lease = client.lease_client();
        if let Err(e) = etcd_call("lease revoke", lease.revoke(lease_id)).await {
            tracing::debug!(lease_id, error = %e, "lease revoke failed; it will expire on its own");
        }
    });
}

#[async_trait::async_trait]
impl FleetLock for EtcdFleetLock {
    async fn acquire(&self, cancel: &CancellationToken) -> Result<Leadership, LockError> {
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut waiting_on: Option<String> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(LockError::Cancelled);
            }
            match self.attempt(cancel).await {
                Ok(Attempt::Acquired(leadership)) => {
                    tracing::info!(
                        token = leadership.token,
                        holder = %self.holder_id,
                        lock_key = %self.lock_key,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "acquired etcd fleet lock"
                    );
                    return Ok(leadership);
                }
                Ok(Attempt::Held { revision, holder }) => {
                    backoff = Duration::from_millis(100);
                    if waiting_on.as_deref() != Some(holder.as_str()) {
                        tracing::info!(%holder, "fleet lock is held by another coordinator; waiting");
                        waiting_on = Some(holder);
                    }
                    self.wait_for_release(revision, cancel).await?;
                }
                Err(LockError::Unavailable(msg)) => {
                    tracing::warn!(error = %msg, retry_in = ?backoff, "etcd unavailable while acquiring the fleet lock");
                    sleep_or_cancel(backoff, cancel).await?;
                    backoff = (backoff * 2).min(UNAVAILABLE_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Background keep-alive and lock-key watch of one leadership.
#[derive(Clone)]
struct KeepAlive {
    client: Client,
    lease_id: i64,
    ttl: Duration,
    lock_key: String,
    token: u64,
    lost: CancellationToken,
    stop: CancellationToken,
}

impl KeepAlive {
    fn declare_lost(&self, why: &str) {
        if self.stop.is_cancelled() || self.lost.is_cancelled() {
            return;
        }
        tracing::error!(
            token = self.token,
            lease_id = self.lease_id,
            reason = why,
            "fleet lock lost"
        );
        self.lost.cancel();
        self.stop.cancel();
        revoke_in_background(self.client.clone(), self.lease_id);
    }

    /// Refresh the lease every TTL/3 until stopped; declare it lost when etcd reports it gone
    /// or nothing succeeded for a whole TTL.
    async fn run_keep_alive(self, granted_at: Instant) {
        let interval = self.ttl / 3;
        // etcd cannot expire the lease earlier than TTL after the grant was sent.
        let mut deadline = granted_at + self.ttl;
        'connect: loop {
            let attempt_at = Instant::now();
            let mut lease = self.client.lease_client();
            let opened = tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    self.declare_lost("no keep-alive answer within the lease TTL");
                    return;
                }
                r = lease.keep_alive(self.lease_id) => r,
            };
            let (mut keeper, mut stream) = match opened {
                Ok(pair) => pair,
                Err(etcd_client::Error::LeaseKeepAliveError(msg)) if msg.contains("not found") => {
                    self.declare_lost("lease expired or was revoked");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease keep-alive stream failed; retrying");
                    let retry = (Instant::now() + interval / 2).min(deadline);
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep_until(retry) => {}
                    }
                    continue 'connect;
                }
            };
            // Opening the stream sent one keep-alive and got a positive answer.
            deadline = deadline.max(attempt_at + self.ttl);
            let mut in_flight: VecDeque<Instant> = VecDeque::new();
            let mut next = Instant::now() + interval;
            loop {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => {
                        self.declare_lost("no keep-alive answer within the lease TTL");
                        return;
                    }
                    () = tokio::time::sleep_until(next) => {
                        let sent_at = Instant::now();
                        next = sent_at + interval;
                        match tokio::time::timeout(interval, keeper.keep_alive()).await {
                            Ok(Ok(())) => in_flight.push_back(sent_at),
                            _ => {
                                tracing::warn!("could not send lease keep-alive; reconnecting");
                                continue 'connect;
                            }
                        }
                    }
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.ttl() <= 0 {
                                self.declare_lost("lease expired or was revoked");
                                return;
                            }
                            if let Some(sent_at) = in_flight.pop_front() {
                                let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
                                deadline = deadline.max(sent_at + granted);
                            }
                        }
                        Ok(None) | Err(_) => {
                            tracing::warn!("lease keep-alive stream closed; reconnecting");
                            continue 'connect;
                        }
                    },
                }
            }
        }
    }

    /// Declare the lock lost as soon as the lock key is deleted or replaced (revoked lease,
    /// operator `etcdctl del`). Watch failures are not a loss: the keep-alive deadline covers
    /// an unreachable etcd.
    async fn run_key_watch(self) {
        let mut kv = self.client.kv_client();
        let mut watch = self.client.watch_client();
        loop {
            let check = tokio::select! {
                () = self.stop.cancelled() => return,
                r = etcd_call("get lock key", kv.get(self.lock_key.as_str(), None)) => r,
            };
            let revision = match check {
                Ok(resp) => {
                    let ours = resp.kvs().first().is_some_and(|kv| {
                        u64::try_from(kv.create_revision()).ok() == Some(self.token)
                    });
                    if !ours {
                        self.declare_lost("lock key deleted or taken over");
                        return;
                    }
                    resp.header().map_or(0, |h| h.revision())
                }
                Err(e) => {
                    if !self.pause(&e).await {
                        return;
                    }
                    continue;
                }
            };
            let opts = WatchOptions::new()
                .with_start_revision(revision + 1)
                .with_filters([WatchFilterType::NoPut]);
            let opened = tokio::select! {
                () = self.stop.cancelled() => return,
                r = etcd_call("watch lock key", watch.watch(self.lock_key.as_str(), Some(opts))) => r,
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    if !self.pause(&e).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    () = self.stop.cancelled() => return,
                    msg = stream.message() => msg,
                };
                match msg {
                    Ok(Some(resp))
                        if resp
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Delete) =>
                    {
                        self.declare_lost("lock key deleted");
                        return;
                    }
                    Ok(Some(resp)) if !resp.canceled() => {}
                    // Cancelled (e.g. compaction), closed or failed: re-check and re-watch.
                    _ => break,
                }
            }
        }
    }

    /// Back off after a failed watch call; false when stopped meanwhile.
    async fn pause(&self, e: &EtcdError) -> bool {
        tracing::debug!(error = %e, "lock key watch failed; retrying");
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(Duration::from_secs(1)) => true,
        }
    }
}

/// Keeps the keep-alive running; `Drop` stops it (the lease then lapses after its TTL).
struct EtcdGuard {
    client: Client,
    lock_key: String,
    lease_id: i64,
    stop: CancellationToken,
}

impl Drop for EtcdGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait::async_trait]
impl LeaderGuard for EtcdGuard {
    async fn release(self: Box<Self>, token: u64) -> Result<(), LockError> {
        self.stop.cancel();
        let rev = i64::try_from(token).unwrap_or(i64::MAX);
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(
                self.lock_key.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then([TxnOp::delete(self.lock_key.as_str(), None)]);
        let mut kv = self.client.kv_client();
        let deleted = etcd_call("release lock key", kv.txn(txn)).await;
        let mut lease = self.client.lease_client();
        let revoked = etcd_call("lease revoke", lease.revoke(self.lease_id)).await;
        match (deleted, revoked) {
            (Ok(_), _) | (_, Ok(_)) => {
                tracing::info!(token, "released etcd fleet lock");
                Ok(())
            }
            (Err(e), Err(_)) => Err(LockError::from(e)),
        }
    }
}
