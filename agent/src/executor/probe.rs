//! While a step's statement may be waiting for a lock, a second connection looks at who
//! holds it, so that a step that gives up can name the blocker: the first look after 3/4 of
//! the bound, then one per 3/4 of the bound on the same connection while the step runs. A
//! step that finishes sooner costs nothing; the look is only read, never acted on.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use super::Executor;
use crate::driver::blockers::LockBlock;
use crate::driver::{DriverError, ErrorClass};
use crate::error::AgentError;
use flotilla_core::bounds::StepBounds;

/// What a step's attempts learnt about the lock they waited for.
#[derive(Default)]
pub(super) struct Seen {
    /// The last non-empty look.
    pub(super) block: Option<LockBlock>,
}

impl Executor {
    /// Run `fut` (a step's database call on the session whose server id is `waiter`) while
    /// looking, on another connection, at the lock it waits for; the last look that found
    /// one is left in `seen`.
    pub(super) async fn watched<T>(
        &self,
        waiter: Option<u64>,
        bound: Duration,
        seen: &mut Seen,
        fut: impl Future<Output = T>,
    ) -> T {
        let Some(pid) = waiter else {
            return fut.await;
        };
        let found: Mutex<Option<LockBlock>> = Mutex::new(None);
        let every = (bound * 3 / 4).max(Duration::from_millis(20));
        let probe = async {
            tokio::time::sleep(every).await;
            let Ok(mut session) = self.target.driver.connect_read(&self.project).await else {
                return std::future::pending::<()>().await;
            };
            loop {
                match session.lock_blockers(pid).await {
                    Ok(Some(b)) => *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(b),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "could not read the lock holders"),
                }
                tokio::time::sleep(every).await;
            }
        };
        tokio::pin!(fut);
        let out = tokio::select! {
            biased;
            out = &mut fut => out,
            () = probe => fut.await,
        };
        if let Some(b) = found.into_inner().unwrap_or_else(|p| p.into_inner()) {
            seen.block = Some(b);
        }
        out
    }

    /// The error of a step whose retry budget ran out: a lock timeout names the lock, the
    /// bound, the attempts and who held the lock as last seen.
    pub(super) fn exhausted(
        &self,
        revision: &str,
        bounds: &StepBounds,
        attempts: u32,
        last: DriverError,
        seen: &Seen,
    ) -> AgentError {
        match last {
            DriverError::Transient {
                class: ErrorClass::LockTimeout,
                ..
            } => {
                let block = seen.block.clone().unwrap_or_default();
                // MySQL waits whole seconds.
                let within = match self.target.dialect {
                    flotilla_core::Dialect::Mysql => Duration::from_secs(
                        bounds.lock_timeout.as_millis().div_ceil(1000).max(1) as u64,
                    ),
                    _ => bounds.lock_timeout,
                };
                AgentError::StepLockTimeout {
                    target: self.target.id.clone(),
                    revision: revision.to_owned(),
                    what: block.what(),
                    within,
                    attempts,
                    blocked: block.to_string(),
                }
            }
            DriverError::Transient { class, message } => AgentError::RetriesExhausted {
                target: self.target.id.clone(),
                revision: revision.to_owned(),
                attempts,
                last_error: format!("{class}: {message}"),
            },
            other => AgentError::RetriesExhausted {
                target: self.target.id.clone(),
                revision: revision.to_owned(),
                attempts,
                last_error: other.to_string(),
            },
        }
    }
}
