//! The embedded backend, for a single coordinator without etcd: an exclusive `flock` on
//! `state_dir/coordinator.lock` is the fleet lock, and `state_dir/state.db` (SQLite, WAL) is
//! the state store.
//!
//! - `lock.rs`: [`FileFleetLock`]; acquiring and releasing bump the `fence` row of
//!   `state.db` (`store.rs`'s `bump_fence`), which is the fencing token.
//! - `store.rs`: [`SqliteStateStore`] and the database itself ([`open_pool`]: schema, WAL);
//!   a fenced write checks the `fence` row inside the same `BEGIN IMMEDIATE` transaction as
//!   its puts and deletes.
//!
//! The lock uses the store's fence row; the store never uses the lock. Both report to
//! [`crate::fence::FenceSignals`].
//!
//! **Architecture invariant:** the fencing token lives in the same database, and is checked
//! in the same transaction, as the state it guards.

mod lock;
mod store;

pub(crate) use lock::FileFleetLock;
pub(crate) use store::{SqliteStateStore, open_pool};
