//! The etcd backend: the fleet lock is a lease plus a lock key on it, the state store lives
//! under `{prefix}/state/`, and the fence that ties them together is the lock key's create
//! revision.
//!
//! - `lock.rs`: [`EtcdFleetLock`], the lease lock and its keep-alive; the fencing token is
//!   the lock key's create revision, which only grows because etcd revisions only grow.
//! - `store.rs`: [`EtcdStateStore`], fenced transactions guarded by
//!   `create_revision(lock key) == token`, leased keys, prefix watches.
//! - `call.rs`: `etcd_call`, every etcd request bounded by a timeout, its failure kept and
//!   classified as transient (retry) or not.
//!
//! The lock and the store share only `call.rs` and [`crate::fence::FenceSignals`]; neither
//! imports the other. The key layout is [`crate::backend`]'s.
//!
//! **Architecture invariant:** a fenced write commits only while the lock key created with
//! the writer's token still exists, in the same etcd transaction as its puts and deletes.

mod call;
mod lock;
mod store;

pub(crate) use lock::EtcdFleetLock;
pub(crate) use store::EtcdStateStore;
