//! The rollout state store: a small key-value space with fenced writes and leased keys.
//!
//! This module holds the contract only; two implementations sit behind [`StateStore`], and
//! [`crate::backend::open_backend`] picks one:
//! - etcd (`etcd/store.rs`): keys live under `{prefix}/state/`; a fenced write is one etcd
//!   transaction guarded by `create_revision(lock key) == token`; leased keys are put on their
//!   own etcd lease.
//! - embedded (`embedded/store.rs`): `state_dir/state.db` (WAL) with tables `kv`, `leased` and
//!   `fence`; a fenced write checks `fence.token` inside the same `BEGIN IMMEDIATE`
//!   transaction as its puts and deletes.
//!
//! Keys are UTF-8 strings compared bytewise; fenced and leased keys share one key space, so
//! give them disjoint prefixes (e.g. `rollouts/…` vs `agents/…`). A write refused as fenced is
//! also reported to `FenceSignals` (`fence.rs`), which cancels the matching leadership.
//!
//! **Architecture invariant:** every write of rollout state goes through the fenced
//! [`StateStore::write`]; [`StateStore::put_leased`] is only for self-expiring data such as
//! agent registrations, never for rollout state.

use std::error::Error;

/// One mutation in a fenced [`StateStore::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Create or overwrite `key`.
    Put { key: String, value: Vec<u8> },
    /// Remove `key` (a no-op when absent).
    Delete { key: String },
}

impl WriteOp {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

/// Errors from the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `token` is no longer the fleet lock holder's token: this coordinator was deposed and
    /// must stop acting on the fleet.
    #[error(
        "write refused: fencing token {token} is stale (another coordinator holds the fleet lock)"
    )]
    Fenced { token: u64 },
    /// The store could not be reached or timed out; retrying may succeed. Holds the
    /// backend's error.
    #[error("state store unavailable: {0}")]
    Unavailable(#[source] Box<dyn Error + Send + Sync>),
    /// Anything else (invalid request, corrupt data, I/O error). Holds the backend's error.
    #[error("state store error: {0}")]
    Other(#[source] Box<dyn Error + Send + Sync>),
}

/// Durable state shared by the coordinators of one fleet.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Fenced write: fails with StoreError::Fenced if `token` is no longer the current holder's token. Atomic for all puts/deletes.
    ///
    /// Operations apply in order (a later op on the same key wins). An empty `ops` only checks
    /// the fence. etcd limits one transaction to 128 distinct keys and 1.5 MiB by default
    /// (`--max-txn-ops`, `--max-request-bytes`); keep per-transition writes small.
    async fn write(&self, token: u64, ops: Vec<WriteOp>) -> Result<(), StoreError>;
    /// The value of `key`, if present (leased keys included while unexpired).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// All keys starting with `prefix` and their values, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>; // sorted by key
    /// Unfenced leased write for agent registrations: the key disappears `ttl` after the last put.
    ///
    /// etcd leases have whole-second TTLs; `ttl` is rounded up (minimum 1 s, and etcd may
    /// raise very short TTLs to its own minimum).
    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError>;
    /// Watch a prefix: a stream/receiver of change notifications (key changed) — used by standbys/`watch` to wake up; polling fallback acceptable for SQLite.
    ///
    /// The watch is established when this returns: later changes are reported. Each message is
    /// the key that was put, deleted or expired; duplicates are possible, so treat a message
    /// as "re-read this key". The watch stops when the receiver is dropped.
    async fn watch_prefix(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<String>, StoreError>;
}

/// Collapse `ops` so that each key appears once, keeping the last operation per key in the
/// position of its last occurrence (etcd refuses a transaction that touches a key twice).
pub(crate) fn dedup_ops(ops: Vec<WriteOp>) -> Vec<WriteOp> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<WriteOp> = ops
        .into_iter()
        .rev()
        .filter(|op| seen.insert(op.key().to_owned()))
        .collect();
    out.reverse();
    out
}

/// Depth of the channel returned by [`StateStore::watch_prefix`].
pub(crate) const WATCH_CHANNEL_DEPTH: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn dedup_keeps_last_op_per_key() {
        let ops = vec![
            put("a", "1"),
            put("b", "1"),
            WriteOp::Delete { key: "a".into() },
            put("c", "1"),
            put("b", "2"),
        ];
        assert_eq!(
            dedup_ops(ops),
            vec![
                WriteOp::Delete { key: "a".into() },
                put("c", "1"),
                put("b", "2")
            ]
        );
    }
}
