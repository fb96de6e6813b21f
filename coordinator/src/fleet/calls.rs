//! Migrate calls to one remote agent, many on one `MigrateCalls` stream: a rollout then costs
//! the agent connection a message per target, not an HTTP/2 stream with its headers,
//! trailers and wake-ups (most of the coordinator's CPU per target-step was there).
//!
//! What a caller sees is what a Migrate call gives: an error when the agent refused the
//! request before any event (the end the agent marks `refused`), else the step events, ended
//! by the status the Migrate stream would have ended with (`flotilla_rpc::calls`). A stream
//! that ends or breaks ends every call on it with `UNAVAILABLE` (the agent went away, as a
//! cut Migrate stream does), and the next call opens a new one.
//!
//! Where the stream is not the better road, a call is a plain Migrate: a request above
//! [`UNARY_ABOVE`] (a big seed would hold the shared stream's flow-control window, and the
//! calls queued behind it, for its whole transfer), or an agent that does not serve
//! `MigrateCalls` (an older one: `UNIMPLEMENTED`, remembered for this client's life).
//! Concurrent callers while the stream opens wait for the one attempt, and share its
//! failure, so an unreachable agent costs one connect per wave of callers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_proto as pb;
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_proto::migrate_call_event::Body;
use flotilla_rpc::calls::{metadata_to_map, status_of};
use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

/// Requests larger than this (encoded) go as a Migrate call of their own.
pub(crate) const UNARY_ABOVE: usize = 32 * 1024;

/// A call's events, as a Migrate call's stream gives them.
pub(crate) type Events = BoxStream<'static, Result<pb::StepEvent, Status>>;

/// What the stream's reader hands one call.
enum Item {
    Event(Box<pb::StepEvent>),
    /// The call ended: `None` when it succeeded; `refused` when nothing ran.
    End(Option<Status>, bool),
}

/// The calls in flight on one stream.
#[derive(Default)]
struct Calls {
    next: AtomicU64,
    inner: Mutex<CallsInner>,
}

#[derive(Default)]
struct CallsInner {
    open: HashMap<u64, mpsc::UnboundedSender<Item>>,
    /// The stream ended: no call can be added.
    ended: bool,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, CallsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> bool {
        self.lock().ended
    }

    fn deliver(&self, ev: pb::MigrateCallEvent) {
        let mut inner = self.lock();
        match ev.body {
            Some(Body::Event(event)) => {
                if let Some(tx) = inner.open.get(&ev.call) {
                    // A caller that stopped listening is not an error: its call runs on.
                    let _ = tx.send(Item::Event(Box::new(event)));
                }
            }
            Some(Body::End(end)) => {
                // Removing the sender ends the caller's stream after this item.
                if let Some(tx) = inner.open.remove(&ev.call) {
                    let _ = tx.send(Item::End(status_of(&end), end.refused));
                }
            }
            None => {}
        }
    }

    /// The stream is gone: every call on it ends with `why`.
    fn end_all(&self, why: &Status) {
        let mut inner = self.lock();
        inner.ended = true;
        for (_, tx) in inner.open.drain() {
            let _ = tx.send(Item::End(Some(why.clone()), false));
        }
    }
}

/// An open stream. Dropping it ends the requests: the agent then ends the stream once the
/// calls in flight have ended.
struct Conn {
    out: mpsc::UnboundedSender<pb::MigrateCall>,
    calls: Arc<Calls>,
}

#[derive(Default)]
struct Opening {
    conn: Option<Arc<Conn>>,
    /// The last attempt to open that failed, and when it ended.
    failed: Option<(Instant, Status)>,
}

/// Migrate calls to one agent; see the module doc.
pub(crate) struct MigrateCalls {
    client: AgentServiceClient<Channel>,
    opening: tokio::sync::Mutex<Opening>,
    unsupported: AtomicBool,
}

impl MigrateCalls {
    pub(crate) fn new(client: AgentServiceClient<Channel>) -> MigrateCalls {
        MigrateCalls {
            client,
            opening: tokio::sync::Mutex::new(Opening::default()),
            unsupported: AtomicBool::new(false),
        }
    }

    /// One Migrate call with `metadata` (the request headers it would carry).
    pub(crate) async fn migrate(
        &self,
        req: pb::MigrateRequest,
        metadata: MetadataMap,
    ) -> Result<Events, Status> {
        if self.unsupported.load(Ordering::Relaxed) || req.encoded_len() > UNARY_ABOVE {
            return self.unary(req, metadata).await;
        }
        match self.conn().await? {
            Some(conn) => call(&conn, req, &metadata).await,
            None => self.unary(req, metadata).await,
        }
    }

    async fn unary(
        &self,
        req: pb::MigrateRequest,
        metadata: MetadataMap,
    ) -> Result<Events, Status> {
        let mut request = Request::new(req);
        *request.metadata_mut() = metadata;
        Ok(self
            .client
            .clone()
            .migrate(request)
            .await?
            .into_inner()
            .boxed())
    }

    /// The open stream, opened if need be; `None` when the agent does not serve it.
    async fn conn(&self) -> Result<Option<Arc<Conn>>, Status> {
        let asked = Instant::now();
        let mut opening = self.opening.lock().await;
        if let Some(conn) = &opening.conn
            && !conn.calls.ended()
        {
            return Ok(Some(conn.clone()));
        }
        opening.conn = None;
        if self.unsupported.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // An attempt made while this caller waited failed: that is its answer too.
        if let Some((at, status)) = &opening.failed
            && *at >= asked
        {
            return Err(status.clone());
        }
        let (out, requests) = mpsc::unbounded_channel();
        let opened = self
            .client
            .clone()
            .migrate_calls(UnboundedReceiverStream::new(requests))
            .await;
        match opened {
            Ok(response) => {
                let calls = Arc::new(Calls::default());
                tokio::spawn(read(response.into_inner(), calls.clone()));
                let conn = Arc::new(Conn { out, calls });
                opening.conn = Some(conn.clone());
                opening.failed = None;
                Ok(Some(conn))
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!(error = %status, "the agent does not serve MigrateCalls: one Migrate call per target");
                self.unsupported.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(status) => {
                opening.failed = Some((Instant::now(), status.clone()));
                Err(status)
            }
        }
    }
}

/// Send one call on `conn` and wait for its first item, so that a refusal is the call's own
/// error, as Migrate answers it.
async fn call(
    conn: &Conn,
    req: pb::MigrateRequest,
    metadata: &MetadataMap,
) -> Result<Events, Status> {
    let id = conn.calls.next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut inner = conn.calls.lock();
        if inner.ended {
            return Err(gone());
        }
        inner.open.insert(id, tx);
    }
    let msg = pb::MigrateCall {
        call: id,
        request: Some(req),
        metadata: metadata_to_map(metadata),
        cancel: false,
    };
    if conn.out.send(msg).is_err() {
        conn.calls.lock().open.remove(&id);
        return Err(gone());
    }
    // From here, a caller that lets go of the call (drops its future or its stream) before
    // its end tells the agent, as a Migrate's client hanging up would.
    let following = Following {
        id,
        out: conn.out.clone(),
        calls: conn.calls.clone(),
    };
    let mut rx = UnboundedReceiverStream::new(rx);
    let first = match rx.next().await {
        None => return Err(gone()),
        Some(Item::End(Some(status), true)) => return Err(status),
        Some(first) => first,
    };
    // The items end with the call's end: an error item, or nothing when it succeeded (its
    // sender is dropped with the end, so the stream ends there).
    Ok(futures::stream::once(async move { first })
        .chain(rx)
        .filter_map(move |item| {
            let _ = &following;
            futures::future::ready(match item {
                Item::Event(event) => Some(Ok(*event)),
                Item::End(status, _) => status.map(Err),
            })
        })
        .boxed())
}

/// A call being followed; dropped before the call's end, it cancels the call on the agent.
struct Following {
    id: u64,
    out: mpsc::UnboundedSender<pb::MigrateCall>,
    calls: Arc<Calls>,
}

impl Drop for Following {
    fn drop(&mut self) {
        // Still open: the caller left before the end.
        if self.calls.lock().open.remove(&self.id).is_some() {
            let _ = self.out.send(pb::MigrateCall {
                call: self.id,
                cancel: true,
                ..Default::default()
            });
        }
    }
}

fn gone() -> Status {
    Status::unavailable("the agent's MigrateCalls stream ended")
}

/// Read the stream, handing each item to its call, until it ends.
async fn read(mut inbound: Streaming<pb::MigrateCallEvent>, calls: Arc<Calls>) {
    let why = loop {
        match inbound.message().await {
            Ok(Some(ev)) => calls.deliver(ev),
            Ok(None) => {
                break Status::unavailable(
                    "the agent ended its MigrateCalls stream (it is shutting down)",
                );
            }
            Err(status) => {
                break Status::unavailable(format!(
                    "the agent's MigrateCalls stream broke: {}",
                    status.message()
                ));
            }
        }
    };
    calls.end_all(&why);
}
