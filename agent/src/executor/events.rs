//! Where a Migrate call's events go: the gRPC stream, and a sink bound to one step.
//!
//! A quiet request (`MigrateRequest.quiet`) also has its outcomes held back: a step's
//! `Succeeded` or `Skipped` and the closing `MigrateFinished` go out with the next event, or
//! when the run ends ([`EventSink::release`], after the target's lock is released). The last
//! step's outcome, `MigrateFinished` and the end of the stream then reach the caller
//! together, one message on its side instead of three, each with its wake-ups; the order of
//! the events is unchanged, and a later step's `Started`, a retry, a lock wait or a failure
//! still goes out at once, after what was held.

use std::sync::{Arc, Mutex};

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
    /// A quiet request's outcomes not sent yet, in order (shared by every step's sink).
    held: Option<Arc<Mutex<Vec<StepEvent>>>>,
}

impl EventSink {
    pub(crate) fn new(
        tx: mpsc::Sender<Result<StepEvent, Status>>,
        target_id: String,
        quiet_first: Option<String>,
    ) -> Self {
        let held = quiet_first.is_some().then(Arc::default);
        EventSink {
            tx,
            target_id,
            quiet_first,
            held,
        }
    }

    /// Send what a quiet request held back. The run calls it last, once the target's lock
    /// is released.
    pub(crate) async fn release(&self) {
        for ev in self.take_held() {
            // A closed stream means the client left; nothing more to tell it.
            let _ = self.tx.send(Ok(ev)).await;
        }
    }

    fn take_held(&self) -> Vec<StepEvent> {
        match &self.held {
            Some(held) => std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner())),
            None => Vec::new(),
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
        let outcome = matches!(
            event,
            Event::Succeeded(_) | Event::Skipped(_) | Event::Finished(_)
        );
        let ev = StepEvent {
            target_id: self.sink.target_id.clone(),
            revision: self.revision.clone(),
            direction: self.direction.to_proto() as i32,
            event: Some(event),
        };
        if outcome && let Some(held) = &self.sink.held {
            held.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
            return;
        }
        self.sink.release().await;
        // A closed stream means the client left; the executor notices between steps.
        let _ = self.sink.tx.send(Ok(ev)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::{MigrateFinished, StepStarted, StepSucceeded};

    fn received(rx: &mut mpsc::Receiver<Result<StepEvent, Status>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            let ev = ev.expect("an event, not an error");
            let kind = match ev.event {
                Some(Event::Started(_)) => "started",
                Some(Event::Succeeded(_)) => "succeeded",
                Some(Event::Finished(_)) => "finished",
                _ => "other",
            };
            out.push(format!("{kind} {}", ev.revision));
        }
        out
    }

    fn succeeded() -> Event {
        Event::Succeeded(StepSucceeded::default())
    }

    #[tokio::test]
    async fn a_quiet_run_sends_its_outcomes_with_the_next_event_or_at_its_end() {
        let (tx, mut rx) = mpsc::channel(16);
        let sink = EventSink::new(tx, "t1".into(), Some("0001".into()));
        let (first, second) = (
            sink.for_step("0001", Direction::Up),
            sink.for_step("0002", Direction::Up),
        );
        first.emit(Event::Started(StepStarted::default())).await;
        first.emit(succeeded()).await;
        assert!(
            received(&mut rx).is_empty(),
            "the first step's start is implied and its outcome waits for company"
        );
        second.emit(Event::Started(StepStarted::default())).await;
        assert_eq!(
            received(&mut rx),
            ["succeeded 0001", "started 0002"],
            "the next event goes out after what was held, in order"
        );
        second.emit(succeeded()).await;
        second
            .emit(Event::Finished(MigrateFinished::default()))
            .await;
        assert!(received(&mut rx).is_empty(), "held until the run ends");
        sink.release().await;
        assert_eq!(received(&mut rx), ["succeeded 0002", "finished 0002"]);
        sink.release().await;
        assert!(received(&mut rx).is_empty(), "each event is sent once");
    }

    #[tokio::test]
    async fn a_request_that_is_not_quiet_sends_every_event_at_once() {
        let (tx, mut rx) = mpsc::channel(16);
        let sink = EventSink::new(tx, "t1".into(), None);
        let step = sink.for_step("0001", Direction::Up);
        step.emit(Event::Started(StepStarted::default())).await;
        step.emit(succeeded()).await;
        step.emit(Event::Finished(MigrateFinished::default())).await;
        assert_eq!(
            received(&mut rx),
            ["started 0001", "succeeded 0001", "finished 0001"]
        );
    }
}
