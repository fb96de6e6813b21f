//! The fenced fleet lock: one coordinator at a time holds it and gets a fencing token.
//!
//! This module holds the contract only; two implementations sit behind [`FleetLock`], and
//! [`crate::backend::open_backend`] picks one:
//! - etcd (`etcd/lock.rs`): a lease kept alive every TTL/3 plus a lock key created on that
//!   lease; the token is the lock key's create revision.
//! - embedded (`embedded/lock.rs`): an exclusive `flock` on `state_dir/coordinator.lock`; the
//!   token is a counter in the SQLite state store bumped on every acquisition.
//!
//! Contract shared by both:
//! - the token is `> 0` and strictly grows from one holder to the next, across processes and
//!   restarts;
//! - [`Leadership::lost`] is cancelled the moment this coordinator may no longer be the holder
//!   (lease expired or revoked, keep-alive failed past the TTL, lock key deleted, a fenced
//!   write refused, or the leadership released/dropped). Everything that acts on the fleet
//!   runs under a child of that token, so losing the lock stops all in-flight work at once;
//! - a standby's [`FleetLock::acquire`] blocks until the holder releases or dies.
//!
//! **Architecture invariant:** every write of rollout state goes through the fenced
//! [`crate::store::StateStore::write`] with the token of the current [`Leadership`]; the lock
//! alone is advisory, the fenced write is what makes a deposed leader harmless. A refused
//! fenced write cancels [`Leadership::lost`] through `FenceSignals` (`fence.rs`).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::fence::FenceSignals;

/// Errors from acquiring or releasing the fleet lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The caller's cancellation token fired before the lock was acquired.
    #[error("lock acquisition cancelled")]
    Cancelled,
    /// The lock service (etcd) could not be reached; retrying later may succeed. Holds the
    /// backend's error.
    #[error("lock service unavailable: {0}")]
    Unavailable(#[source] Box<dyn Error + Send + Sync>),
    /// Anything else (bad configuration, I/O error on the lock file, corrupt state). Holds the
    /// backend's error.
    #[error("fleet lock error: {0}")]
    Other(#[source] Box<dyn Error + Send + Sync>),
}

/// Proof of holding the fleet lock.
///
/// Dropping it stops the keep-alive (etcd: the lease then lapses after its TTL; embedded: the
/// file lock is released at once) and cancels [`Leadership::lost`]; prefer the explicit
/// [`Leadership::release`], which hands the lock over immediately.
pub struct Leadership {
    /// Fencing token: `> 0`, strictly larger than every previous holder's.
    pub token: u64,
    /// Cancelled the moment leadership is lost; derive every fleet-acting task's token from it.
    pub lost: CancellationToken,
    guard: Option<Box<dyn LeaderGuard>>,
    signals: Arc<FenceSignals>,
}

impl Leadership {
    pub(crate) fn new(
        token: u64,
        lost: CancellationToken,
        guard: Box<dyn LeaderGuard>,
        signals: Arc<FenceSignals>,
    ) -> Self {
        signals.register(token, lost.clone());
        Self {
            token,
            lost,
            guard: Some(guard),
            signals,
        }
    }

    /// Give the lock up: cancels [`Leadership::lost`], invalidates the token (writes with it
    /// are refused as fenced from now on) and lets a standby take over at once.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.lost.cancel();
        self.signals.unregister(self.token);
        match self.guard.take() {
            Some(guard) => guard.release(self.token).await,
            None => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.lost.cancel();
        self.signals.unregister(self.token);
        // Dropping the guard stops its keep-alive / closes the lock file.
        drop(self.guard.take());
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("token", &self.token)
            .field("lost", &self.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The fleet-wide mutual exclusion lock.
#[async_trait::async_trait]
pub trait FleetLock: Send + Sync + 'static {
    /// Block until this coordinator holds the fleet lock, or `cancel` fires (→ LockError::Cancelled).
    ///
    /// Transient unavailability of the lock service is retried with backoff (and logged), so
    /// a standby simply keeps waiting through an etcd outage.
    async fn acquire(&self, cancel: &CancellationToken) -> Result<Leadership, LockError>;
}

/// Backend-specific part of a [`Leadership`]: keeps the lock alive, gives it back.
/// Its `Drop` must stop any keep-alive work.
#[async_trait::async_trait]
pub(crate) trait LeaderGuard: Send + Sync {
    async fn release(self: Box<Self>, token: u64) -> Result<(), LockError>;
}
