//! etcd state store: fenced transactions guarded by the lock key's create revision.
//!
//! A fenced write is one transaction `when create_revision(lock key) == token then puts and
//! deletes`, so it commits only while the writer's lock key (see `lock.rs`) still exists:
//! a deposed leader's write is refused, never applied. Leased keys get their own lease per
//! put (the previous put's lease is revoked). Prefix watches resume from the first revision
//! not yet delivered after a broken stream, and tell the consumer to re-read the whole prefix
//! when events were lost to compaction.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use tokio::sync::mpsc;

use super::call::{EtcdError, etcd_call};
use crate::fence::FenceSignals;
use crate::store::{StateStore, StoreError, WATCH_CHANNEL_DEPTH, WriteOp, dedup_ops};

/// Keys per page when listing a prefix (keeps responses well under gRPC's 4 MiB default).
const LIST_PAGE: i64 = 500;

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        if e.is_transient() {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Other(Box::new(e))
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's `WithPrefix` range end).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // all keys
}

/// State store on etcd. Store keys map to `{prefix}/state/{key}`.
pub(crate) struct EtcdStateStore {
    client: Client,
    lock_key: String,
    state_prefix: String,
    signals: Arc<FenceSignals>,
}

impl EtcdStateStore {
    pub(crate) fn new(
        client: Client,
        lock_key: String,
        state_prefix: String,
        signals: Arc<FenceSignals>,
    ) -> Self {
        Self {
            client,
            lock_key,
            state_prefix,
            signals,
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.state_prefix)
    }

    fn strip<'a>(&self, full: &'a [u8]) -> Option<&'a str> {
        let rest = full.strip_prefix(self.state_prefix.as_bytes())?;
        std::str::from_utf8(rest).ok()
    }
}

#[async_trait::async_trait]
impl StateStore for EtcdStateStore {
    async fn write(&self, token: u64, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let Ok(rev) = i64::try_from(token) else {
            return Err(StoreError::Fenced { token });
        };
        let txn_ops: Vec<TxnOp> = dedup_ops(ops)
            .into_iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => TxnOp::put(self.full_key(&key), value, None),
                WriteOp::Delete { key } => TxnOp::delete(self.full_key(&key), None),
            })
            .collect();
        let n = txn_ops.len();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.lock_key.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(txn_ops);
        let mut kv = self.client.kv_client();
        let resp = etcd_call("fenced write", kv.txn(txn)).await?;
        if !resp.succeeded() {
            tracing::warn!(token, ops = n, "etcd refused fenced write: token is stale");
            self.signals.fenced(token);
            return Err(StoreError::Fenced { token });
        }
        tracing::trace!(token, ops = n, "fenced write committed");
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut kv = self.client.kv_client();
        let mut resp = etcd_call("get", kv.get(self.full_key(key), None)).await?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let start = self.full_key(prefix).into_bytes();
        let end = prefix_range_end(&start);
        let mut kv = self.client.kv_client();
        let mut out = Vec::new();
        let mut from = start;
        let mut at_revision = 0; // pin every page to the first page's revision
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if at_revision > 0 {
                opts = opts.with_revision(at_revision);
            }
            let mut resp = etcd_call("list", kv.get(from.clone(), Some(opts))).await?;
            if at_revision == 0 {
                at_revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { break };
            let mut next = last.key().to_vec();
            next.push(0);
            for item in kvs {
                let (k, v) = item.into_key_value();
                match self.strip(&k) {
                    Some(key) => out.push((key.to_owned(), v)),
                    None => {
                        tracing::warn!(key = %String::from_utf8_lossy(&k), "skipping non-UTF-8 key")
                    }
                }
            }
            if !more {
                break;
            }
            from = next;
        }
        Ok(out)
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut lease = self.client.lease_client();
        let granted = etcd_call("lease grant", lease.grant(secs, None)).await?;
        let id = granted.id();
        let mut kv = self.client.kv_client();
        let put = etcd_call(
            "leased put",
            kv.put(
                self.full_key(key),
                value,
                Some(PutOptions::new().with_lease(id).with_prev_key()),
            ),
        )
        .await;
        let put = match put {
            Ok(p) => p,
            Err(e) => {
                let _ = etcd_call("lease revoke", lease.revoke(id)).await;
                return Err(e.into());
            }
        };
        // The previous put's lease now holds no key: revoke it rather than let it linger.
        if let Some(old) = put.prev_key().map(|kv| kv.lease())
            && old != 0
            && old != id
        {
            tokio::spawn(async move {
                if let Err(e) = etcd_call("lease revoke", lease.revoke(old)).await {
                    tracing::debug!(lease = old, error = %e, "could not revoke superseded lease");
                }
            });
        }
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<mpsc::Receiver<String>, StoreError> {
        let full = self.full_key(prefix).into_bytes();
        let (stream, next_rev) = open_watch(&self.client, &full, 0).await?;
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_DEPTH);
        let forwarder = WatchForwarder {
            client: self.client.clone(),
            full_prefix: full,
            state_prefix: self.state_prefix.clone(),
            user_prefix: prefix.to_owned(),
            tx,
        };
        tokio::spawn(forwarder.run(stream, next_rev));
        Ok(rx)
    }
}

/// Open a prefix watch and wait until etcd confirms it (so later changes are seen).
/// `start_revision == 0` means "from now". Also returns the first revision the watch covers.
async fn open_watch(
    client: &Client,
    full_prefix: &[u8],
    start_revision: i64,
) -> Result<(WatchStream, i64), EtcdError> {
    let mut opts = WatchOptions::new().with_range(prefix_range_end(full_prefix));
    if start_revision > 0 {
        opts = opts.with_start_revision(start_revision);
    }
    let mut watch = client.watch_client();
    let mut stream = etcd_call("watch", watch.watch(full_prefix.to_vec(), Some(opts))).await?;
    match etcd_call("watch", stream.message()).await? {
        Some(resp) if resp.created() && !resp.canceled() => {
            let from = resp.header().map_or(0, |h| h.revision() + 1);
            Ok((stream, from.max(start_revision)))
        }
        Some(resp) => Err(EtcdError::WatchNotCreated {
            reason: resp.cancel_reason().to_owned(),
        }),
        None => Err(EtcdError::WatchClosed),
    }
}

struct WatchForwarder {
    client: Client,
    full_prefix: Vec<u8>,
    state_prefix: String,
    user_prefix: String,
    tx: mpsc::Sender<String>,
}

impl WatchForwarder {
    /// Forward events until the receiver is dropped, re-opening the watch after errors from
    /// the next unseen revision (or with a wake-up for the whole prefix if it was compacted).
    async fn run(self, mut stream: WatchStream, mut next_rev: i64) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let msg = tokio::select! {
                () = self.tx.closed() => return,
                msg = stream.message() => msg,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) | Err(_) => {
                    stream = match self.reopen(&mut next_rev, &mut backoff).await {
                        Some(s) => s,
                        None => return,
                    };
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    next_rev = resp.compact_revision();
                    // Events were lost to compaction: tell the consumer to re-read everything.
                    if self.tx.send(self.user_prefix.clone()).await.is_err() {
                        return;
                    }
                }
                stream = match self.reopen(&mut next_rev, &mut backoff).await {
                    Some(s) => s,
                    None => return,
                };
                continue;
            }
            if resp.events().is_empty()
                && let Some(h) = resp.header()
            {
                // Progress notification: everything up to the header revision was delivered.
                next_rev = next_rev.max(h.revision() + 1);
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                next_rev = next_rev.max(kv.mod_revision() + 1);
                let Some(key) = kv
                    .key()
                    .strip_prefix(self.state_prefix.as_bytes())
                    .and_then(|k| std::str::from_utf8(k).ok())
                else {
                    continue;
                };
                tracing::trace!(
                    key,
                    deleted = ev.event_type() == EventType::Delete,
                    "watch event"
                );
                if self.tx.send(key.to_owned()).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn reopen(&self, next_rev: &mut i64, backoff: &mut Duration) -> Option<WatchStream> {
        // `next_rev` is the first revision not yet delivered: resume exactly there.
        loop {
            tokio::select! {
                () = self.tx.closed() => return None,
                () = tokio::time::sleep(*backoff) => {}
            }
            *backoff = (*backoff * 2).min(Duration::from_secs(5));
            match open_watch(&self.client, &self.full_prefix, *next_rev).await {
                Ok((s, _)) => return Some(s),
                Err(e) => tracing::warn!(error = %e, "re-opening etcd watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_range_end;

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"/f/state/a"), b"/f/state/b".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }
}
