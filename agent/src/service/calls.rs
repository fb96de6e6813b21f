//! `MigrateCalls`: many Migrate calls on one stream. Each call runs through the service's
//! own `migrate` (the same checks, spans and executor as a Migrate request, its metadata
//! restored from the call), and its events go back under its call id, then its end: the
//! status the Migrate stream would have ended with (`flotilla_rpc::calls`).
//!
//! A call whose caller went away (a `cancel` for it, or the whole stream gone) is let go at
//! once, as tonic drops a Migrate's stream when its client hangs up: the executor, the
//! agent's task, then stops before its next step. When the agent shuts down it stops
//! reading new calls and ends the stream once the calls in flight have ended, so a graceful
//! shutdown is not held open by the stream itself; the caller reads the end of the stream as
//! the agent going away.
//!
//! Generic over the service so that this file does not depend on the server's.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use flotilla_proto::agent_service_server::AgentService;
use flotilla_proto::migrate_call_event::Body;
use flotilla_proto::{MigrateCall, MigrateCallEvent};
use flotilla_rpc::calls::{end_of, end_ok, map_to_metadata};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};

/// Events waiting for the stream to take them; beyond it a call waits (backpressure, as a
/// Migrate stream's own buffer gives).
const OUT_BUFFER: usize = 256;

/// The response stream of one `MigrateCalls`.
pub type CallEvents = ReceiverStream<Result<MigrateCallEvent, Status>>;

/// Serve the calls read from `inbound` until it ends or `shutdown` is cancelled.
pub fn serve<S: AgentService>(
    service: Arc<S>,
    mut inbound: Streaming<MigrateCall>,
    shutdown: CancellationToken,
) -> CallEvents {
    let (out, rx) = mpsc::channel(OUT_BUFFER);
    tokio::spawn(async move {
        let running = Arc::new(Running::default());
        loop {
            let call = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = inbound.message() => match next {
                    Ok(Some(call)) => call,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(error = %status, "a MigrateCalls stream broke");
                        break;
                    }
                },
            };
            let id = call.call;
            if call.cancel {
                if let Some(left) = running.remove(id) {
                    left.cancel();
                }
                continue;
            }
            let left = running.start(id);
            let (service, out, running) = (service.clone(), out.clone(), running.clone());
            tokio::spawn(async move {
                run(service, call, out, left).await;
                running.remove(id);
            });
        }
        // `out` is dropped here: the stream ends when the last call in flight has ended.
    });
    ReceiverStream::new(rx)
}

/// The calls running, by id: what a `cancel` lets go of.
#[derive(Default)]
struct Running(Mutex<HashMap<u64, CancellationToken>>);

impl Running {
    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CancellationToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call `id` starts: the token its cancel fires.
    fn start(&self, id: u64) -> CancellationToken {
        let left = CancellationToken::new();
        self.calls().insert(id, left.clone());
        left
    }

    fn remove(&self, id: u64) -> Option<CancellationToken> {
        self.calls().remove(&id)
    }
}

/// One call, start to end.
async fn run<S: AgentService>(
    service: Arc<S>,
    call: MigrateCall,
    out: mpsc::Sender<Result<MigrateCallEvent, Status>>,
    left: CancellationToken,
) {
    let id = call.call;
    let mut req = Request::new(call.request.unwrap_or_default());
    map_to_metadata(&call.metadata, req.metadata_mut());
    let end = match service.migrate(req).await {
        Err(status) => end_of(&status, true),
        Ok(response) => {
            let mut events = pin!(response.into_inner());
            loop {
                // The caller gone (the call cancelled, or the stream dropped): let go of the
                // events now, not at the next send.
                let next = tokio::select! {
                    biased;
                    () = left.cancelled() => return,
                    () = out.closed() => return,
                    next = events.next() => next,
                };
                match next {
                    None => break end_ok(),
                    Some(Err(status)) => break end_of(&status, false),
                    Some(Ok(event)) => {
                        let msg = MigrateCallEvent {
                            call: id,
                            body: Some(Body::Event(event)),
                        };
                        if out.send(Ok(msg)).await.is_err() {
                            // The caller is gone; the executor finishes on its own.
                            return;
                        }
                    }
                }
            }
        }
    };
    let _ = out
        .send(Ok(MigrateCallEvent {
            call: id,
            body: Some(Body::End(end)),
        }))
        .await;
}
