//! Taking a target's migration lock: first the in-process async mutex (two requests to the
//! same agent), then the database lock (`Session::try_lock`, polled with a short doubling
//! pause until the deadline). Both waits are bounded; running out is `LOCK_TIMEOUT`.

use std::time::{Duration, Instant};

use flotilla_proto::step_event::Event;
use flotilla_proto::{LockAcquired, LockWaiting};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::Failure;
use super::events::EventCtx;
use crate::driver::Session;
use crate::error::AgentError;
use crate::target::Target;
use flotilla_core::project::Project;

/// First pause between two `try_lock` polls; it doubles up to the configured maximum.
const FIRST_POLL: Duration = Duration::from_millis(10);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Bounded waits for one target's locks, reporting `LockWaiting`/`LockAcquired` events.
pub(crate) struct Locker<'a> {
    pub(crate) target: &'a Target,
    /// Whose migration lock (in-process and in the database) this is.
    pub(crate) project: &'a Project,
    pub(crate) wait: Duration,
    pub(crate) max_poll: Duration,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) events: Option<&'a EventCtx>,
}

impl Locker<'_> {
    fn timeout(&self) -> AgentError {
        AgentError::LockTimeout {
            target: self.target.id.clone(),
            waited: self.wait,
        }
    }

    fn cancelled(&self) -> AgentError {
        AgentError::Cancelled {
            target: self.target.id.clone(),
            client_left: false,
        }
    }

    async fn waiting(&self) {
        if let Some(ev) = self.events {
            ev.emit(Event::LockWaiting(LockWaiting {
                wait_limit_ms: millis(self.wait),
            }))
            .await;
        }
    }

    fn record_wait(&self, waited: Duration) {
        metrics::histogram!("flotilla_agent_lock_wait_seconds", "dialect" => self.target.dialect.as_str())
            .record(waited.as_secs_f64());
    }

    /// The in-process mutex: serializes writers to this target within the agent.
    pub(crate) async fn lock_in_process(&self) -> Result<OwnedMutexGuard<()>, AgentError> {
        let mutex = self.target.mutex_for(self.project);
        if let Ok(guard) = mutex.clone().try_lock_owned() {
            return Ok(guard);
        }
        self.waiting().await;
        let start = Instant::now();
        tracing::info!(target_id = %self.target.id, wait_ms = millis(self.wait), "waiting for another request on this target");
        tokio::select! {
            r = tokio::time::timeout(self.wait, mutex.lock_owned()) => {
                self.record_wait(start.elapsed());
                r.map_err(|_| self.timeout())
            }
            () = self.cancel.cancelled() => Err(self.cancelled()),
        }
    }

    /// Connect, take the database lock and create the project's tables if needed (unless
    /// `ensure_schema` is false: the caller creates them itself, after its checks under the
    /// lock): a project's tables are made under its migration lock. On any error the session
    /// is closed (releasing whatever it held).
    pub(crate) async fn open_locked(
        &self,
        ensure_schema: bool,
    ) -> Result<Box<dyn Session>, Failure> {
        let mut session = self
            .target
            .driver
            .connect(self.project)
            .await
            .map_err(Failure::Driver)?;
        let res = async {
            self.db_lock(session.as_mut()).await?;
            if ensure_schema {
                session.ensure_schema().await.map_err(Failure::Driver)?;
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => Ok(session),
            Err(e) => {
                session.close().await;
                Err(e)
            }
        }
    }

    async fn db_lock(&self, session: &mut dyn Session) -> Result<(), Failure> {
        let start = Instant::now();
        let deadline = start + self.wait;
        let mut poll = FIRST_POLL;
        let mut announced = false;
        loop {
            if session.try_lock().await.map_err(Failure::Driver)? {
                break;
            }
            if !announced {
                announced = true;
                tracing::info!(target_id = %self.target.id, wait_ms = millis(self.wait), "database lock held elsewhere; waiting");
                self.waiting().await;
            }
            let now = Instant::now();
            if now >= deadline {
                self.record_wait(start.elapsed());
                return Err(Failure::Fatal(self.timeout()));
            }
            let pause = poll.min(deadline - now);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.cancel.cancelled() => return Err(Failure::Fatal(self.cancelled())),
            }
            poll = (poll * 2).min(self.max_poll);
        }
        let waited = start.elapsed();
        self.record_wait(waited);
        if announced {
            tracing::info!(target_id = %self.target.id, waited_ms = millis(waited), "database lock acquired after waiting");
        }
        if let Some(ev) = self.events {
            ev.emit(Event::LockAcquired(LockAcquired {
                waited_ms: millis(waited),
            }))
            .await;
        }
        Ok(())
    }
}
