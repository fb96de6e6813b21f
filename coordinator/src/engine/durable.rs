//! Durable writes of a rollout's records: a store error while the term lives is a blip, not
//! the end of the rollout. The write is retried with backoff (the records stay in memory,
//! fenced with the term's token at every attempt) until it is stored, the store refuses the
//! token (the term ends: `Engine::write`), or the term ends by the lease's loss. While
//! writes fail, [`StoreHealth`] says so and the rollout issues no new step
//! (`Engine::store_writable`), so no more than the records in memory can be lost to a crash.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;

use crate::store::WriteOp;

use super::{Engine, EngineError, Term};

/// Backoff between attempts at a failed store write.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether the last write of rollout records reached the store: `Some(token)` while a
/// write of term `token` is failing (a later term is not held back by an earlier one's).
pub(crate) struct StoreHealth(watch::Sender<Option<u64>>);

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth(watch::channel(None).0)
    }
}

impl StoreHealth {
    fn set(&self, failing: Option<u64>) {
        self.0.send_if_modified(|v| {
            let changed = *v != failing;
            *v = failing;
            changed
        });
    }
}

impl Engine {
    /// Write `ops` fenced with the term's token, retrying store errors with backoff until
    /// they are stored. `Err` only when the term ended (fenced or lease lost) or the ops
    /// cannot be written at all.
    pub(crate) async fn write_durably(
        &self,
        term: &Term,
        ops: Vec<WriteOp>,
    ) -> Result<(), EngineError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(RETRY_MAX)
            .without_max_times()
            .with_jitter()
            .build();
        loop {
            match self.write(term, ops.clone()).await {
                Ok(()) => {
                    self.store_health.set(None);
                    return Ok(());
                }
                Err(e @ EngineError::Fenced(_)) => return Err(e),
                Err(e) => {
                    if term.cancel.is_cancelled() {
                        return Err(EngineError::Fenced(term.token));
                    }
                    self.store_health.set(Some(term.token));
                    let delay = delays.next().unwrap_or(RETRY_MAX);
                    tracing::warn!(
                        "state store write failed, retrying in {delay:?} (no new step starts meanwhile): {e}"
                    );
                    tokio::select! {
                        _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Whether the last write of rollout records reached the store (false while a failed
    /// one is being retried).
    pub fn records_writable(&self) -> bool {
        let failing = *self.store_health.0.borrow();
        failing.is_none() || failing != self.term().map(|t| t.token)
    }

    /// Resolves once rollout records can be written (at once when the last write went
    /// through); `Err` when the term ends first.
    pub(crate) async fn store_writable(&self, term: &Term) -> Result<(), EngineError> {
        let mut rx = self.store_health.0.subscribe();
        tokio::select! {
            _ = term.cancel.cancelled() => Err(EngineError::Fenced(term.token)),
            r = rx.wait_for(|failing| *failing != Some(term.token)) => {
                r.map(|_| ()).map_err(|_| EngineError::Fenced(term.token))
            }
        }
    }
}
