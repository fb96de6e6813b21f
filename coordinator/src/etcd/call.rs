//! One etcd request: bounded by [`OP_TIMEOUT`], its failure kept as an [`EtcdError`] that
//! says whether retrying may help. The lock and the store of the etcd backend both call etcd
//! through [`etcd_call`] and retry (or not) on [`EtcdError::is_transient`].

use std::future::Future;
use std::time::Duration;

/// Upper bound on one etcd request; a stalled etcd shows up as `Unavailable` after this.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed etcd call: what was asked, and the client's error when there is one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    /// The client returned an error (unreachable, refused, invalid request).
    #[error("etcd {what}: {source}")]
    Call {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// No answer within [`OP_TIMEOUT`].
    #[error("etcd {what}: no answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// etcd did not confirm a watch (the reason is etcd's).
    #[error("etcd watch: not created: {reason}")]
    WatchNotCreated { reason: String },
    /// The watch stream ended before etcd confirmed the watch.
    #[error("etcd watch: stream closed")]
    WatchClosed,
}

impl EtcdError {
    /// Unreachable, timed out, leader changing: worth retrying. Otherwise the request itself
    /// is wrong or was refused.
    pub(crate) fn is_transient(&self) -> bool {
        use etcd_client::Error as E;
        use tonic::Code;
        match self {
            EtcdError::Call { source, .. } => match source {
                E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
                E::GRpcStatus(status) => matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Unknown
                        | Code::Cancelled
                        | Code::Aborted
                        | Code::ResourceExhausted
                ),
                _ => false,
            },
            EtcdError::Timeout { .. }
            | EtcdError::WatchNotCreated { .. }
            | EtcdError::WatchClosed => true,
        }
    }
}

/// Run one etcd call with [`OP_TIMEOUT`], keeping the failure.
pub(crate) async fn etcd_call<T>(
    what: &'static str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Call { what, source }),
        Err(_) => Err(EtcdError::Timeout {
            what,
            after: OP_TIMEOUT,
        }),
    }
}
