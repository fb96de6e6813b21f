//! Fence signals: how a fenced-write refusal in the state store reaches the
//! [`crate::lock::Leadership::lost`] token of the same process.
//!
//! Both halves of a backend share one [`FenceSignals`] ([`crate::backend::open_backend`]
//! creates it): the fleet lock registers each [`crate::lock::Leadership`] under its token, and
//! the state store reports every write it refused as fenced. A refusal with token `t` means
//! leadership `t` is gone, so its `lost` token is cancelled at once, before the lock backend
//! itself notices (lease expiry, keep-alive failure).
//!
//! This module depends on neither the lock nor the store: both import it, never each other.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Connects fenced-write refusals in the store to the [`crate::lock::Leadership::lost`] token
/// of the same process: when a write with token `t` comes back fenced, leadership `t` is gone.
#[derive(Debug, Default)]
pub(crate) struct FenceSignals {
    live: Mutex<HashMap<u64, CancellationToken>>,
}

impl FenceSignals {
    /// Leadership `token` began; `lost` is cancelled if a write with it is refused as fenced.
    pub(crate) fn register(&self, token: u64, lost: CancellationToken) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, lost);
    }

    /// Leadership `token` ended (released or dropped).
    pub(crate) fn unregister(&self, token: u64) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
    }

    /// The store refused a write with `token`: cancel that leadership, if it is ours.
    pub(crate) fn fenced(&self, token: u64) {
        let lost = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
        if let Some(lost) = lost {
            tracing::warn!(
                token,
                "state store refused a write as fenced; leadership lost"
            );
            lost.cancel();
        }
    }
}
