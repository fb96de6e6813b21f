//! Where a Migrate call's events go: the gRPC stream, and a sink bound to one step.

use flotilla_proto::StepEvent;
use flotilla_proto::step_event::Event;
use tokio::sync::mpsc;
use tonic::Status;

use flotilla_core::Direction;
use flotilla_rpc::convert::DirectionProto;

/// Where a Migrate call's events go (the gRPC stream).
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<Result<StepEvent, Status>>,
    target_id: String,
    /// The request's first step, when it asked for quiet (`MigrateRequest.quiet`): its
    /// `Started` and the `LockAcquired` are left out.
    quiet_first: Option<String>,
}

impl EventSink {
    pub(crate) fn new(
        tx: mpsc::Sender<Result<StepEvent, Status>>,
        target_id: String,
        quiet_first: Option<String>,
    ) -> Self {
        EventSink {
            tx,
            target_id,
            quiet_first,
        }
    }

    /// Whether the client stopped listening.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn for_step(&self, revision: &str, direction: Direction) -> EventCtx {
        EventCtx {
            sink: self.clone(),
            revision: revision.to_owned(),
            direction,
        }
    }
}

/// An event sink bound to the step the events are about.
pub(crate) struct EventCtx {
    sink: EventSink,
    revision: String,
    direction: Direction,
}

impl EventCtx {
    pub(crate) async fn emit(&self, event: Event) {
        if let Some(first) = &self.sink.quiet_first {
            let implied = match &event {
                Event::LockAcquired(_) => true,
                Event::Started(_) => self.revision == *first,
                _ => false,
            };
            if implied {
                return;
            }
        }
        let ev = StepEvent {
            target_id: self.sink.target_id.clone(),
            revision: self.revision.clone(),
            direction: self.direction.to_proto() as i32,
            event: Some(event),
        };
        // A closed stream means the client left; the executor notices between steps.
        let _ = self.sink.tx.send(Ok(ev)).await;
    }
}
