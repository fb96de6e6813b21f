//! Embedded fleet lock: an exclusive `flock` on `state_dir/coordinator.lock`, fenced through
//! the SQLite state store's `fence` row.
//!
//! `flock` locks belong to an open file description, so a second [`FileFleetLock`] on the same
//! directory blocks even inside one process, and the kernel releases the lock when the holder
//! dies. Acquiring bumps `fence.token` in `state.db`; releasing bumps it again, so writes with
//! a released or superseded token are refused. While the process lives the flock cannot be
//! taken away, so `lost` only fires on a fenced write, release or drop.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs4::fs_std::FileExt;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use super::store::bump_fence;
use crate::fence::FenceSignals;
use crate::lock::{FleetLock, LeaderGuard, Leadership, LockError};

/// How often a waiting acquirer retries the non-blocking `flock`.
const POLL: Duration = Duration::from_millis(50);

/// What went wrong with the lock file or the fence row; the source of a
/// [`LockError::Other`].
#[derive(Debug, thiserror::Error)]
enum FileLockError {
    #[error("lock file task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot open lock file {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}: {source}", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fence row missing in state.db")]
    FenceRowMissing,
    #[error("cannot bump fence token: {0}")]
    BumpFence(#[source] sqlx::Error),
    #[error("released the lock file but could not invalidate token {token}: {source}")]
    Invalidate {
        token: u64,
        #[source]
        source: sqlx::Error,
    },
}

impl From<FileLockError> for LockError {
    fn from(e: FileLockError) -> Self {
        LockError::Other(Box::new(e))
    }
}

/// The file-lock [`FleetLock`] of the embedded backend.
pub(crate) struct FileFleetLock {
    path: PathBuf,
    pool: SqlitePool,
    holder_id: String,
    signals: Arc<FenceSignals>,
}

impl FileFleetLock {
    pub(crate) fn new(
        path: PathBuf,
        pool: SqlitePool,
        holder_id: String,
        signals: Arc<FenceSignals>,
    ) -> Self {
        Self {
            path,
            pool,
            holder_id,
            signals,
        }
    }

    async fn open_file(&self) -> Result<Arc<File>, LockError> {
        let path = self.path.clone();
        let file = tokio::task::spawn_blocking(move || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        })
        .await
        .map_err(FileLockError::Task)?
        .map_err(|source| FileLockError::Open {
            path: self.path.clone(),
            source,
        })?;
        Ok(Arc::new(file))
    }
}

#[async_trait::async_trait]
impl FleetLock for FileFleetLock {
    async fn acquire(&self, cancel: &CancellationToken) -> Result<Leadership, LockError> {
        let started = Instant::now();
        let file = self.open_file().await?;
        let mut logged_wait = false;
        loop {
            if cancel.is_cancelled() {
                return Err(LockError::Cancelled);
            }
            // LOCK_NB: returns at once, fine on a runtime thread.
            match file.try_lock_exclusive() {
                Ok(true) => break,
                Ok(false) => {}
                Err(source) => {
                    return Err(FileLockError::Lock {
                        path: self.path.clone(),
                        source,
                    }
                    .into());
                }
            }
            if !logged_wait {
                tracing::info!(path = %self.path.display(), "fleet lock is held by another coordinator; waiting");
                logged_wait = true;
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(LockError::Cancelled),
                () = tokio::time::sleep(POLL) => {}
            }
        }
        // From here on dropping `file` releases the lock, so every early return gives it back.
        let token = match bump_fence(&self.pool, None).await {
            Ok(Some(t)) if t > 0 => t,
            Ok(_) => return Err(FileLockError::FenceRowMissing.into()),
            Err(e) => return Err(FileLockError::BumpFence(e).into()),
        };
        let holder = format!("{} token={token}\n", self.holder_id);
        let f = Arc::clone(&file);
        let recorded = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut w: &File = &f;
            w.set_len(0)?;
            w.rewind()?;
            w.write_all(holder.as_bytes())
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::debug!("could not record the holder id in the lock file");
        }
        tracing::info!(
            token,
            holder = %self.holder_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "acquired embedded fleet lock"
        );
        let guard = FileGuard {
            file: Some(file),
            pool: self.pool.clone(),
        };
        Ok(Leadership::new(
            token,
            CancellationToken::new(),
            Box::new(guard),
            Arc::clone(&self.signals),
        ))
    }
}

struct FileGuard {
    file: Option<Arc<File>>,
    pool: SqlitePool,
}

#[async_trait::async_trait]
impl LeaderGuard for FileGuard {
    async fn release(mut self: Box<Self>, token: u64) -> Result<(), LockError> {
        // Invalidate the token first, then hand the flock over.
        let bumped = bump_fence(&self.pool, Some(token)).await;
        if let Some(file) = self.file.take()
            && let Err(e) = FileExt::unlock(&*file)
        {
            tracing::debug!(error = %e, "explicit unlock failed; closing the file releases it");
        }
        match bumped {
            Ok(_) => {
                tracing::info!(token, "released embedded fleet lock");
                Ok(())
            }
            Err(source) => Err(FileLockError::Invalidate { token, source }.into()),
        }
    }
}
