//! `WatchRollout`: the rollout's current state, then a new state on every change, until it
//! ends. Reads of a large rollout are rate-limited ([`min_gap`]); its end is sent at once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::rollouts::rollout;
use super::{Api, check_id, status_of};
use crate::engine::{Engine, RolloutUpdate};
use crate::rollout::RolloutState;

pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutEvent, Status>> + Send>>;

pub(super) async fn watch_rollout(
    api: &Api,
    req: Request<pb::WatchRolloutRequest>,
) -> Result<Response<WatchStream>, Status> {
    let id = req.into_inner().id;
    check_id("rollout id", &id)?;
    let engine = api
        .projects
        .of_rollout(&id)
        .await
        .map_err(super::status_of)?
        .clone();
    let first = rollout(api, &id).await?;
    let stream = watch_stream(engine.clone(), id, first, engine.subscribe());
    Ok(Response::new(stream))
}

/// The watch stream: the current state, then a new state on every change, until the
/// rollout ends. Wakes on a local change, or every second (the rollout may run on another
/// coordinator: this one may be a standby).
fn watch_stream(
    engine: Arc<Engine>,
    id: String,
    first: pb::Rollout,
    mut updates: tokio::sync::broadcast::Receiver<RolloutUpdate>,
) -> WatchStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        // What was sent last, as its digest, its state and its size: not a copy of it (a
        // rollout of 100,000 targets is tens of megabytes).
        let mut last = Sent::of(&first);
        if tx
            .send(Ok(pb::RolloutEvent {
                rollout: Some(first),
            }))
            .await
            .is_err()
        {
            return;
        }
        // At most one read of the rollout per interval, however many targets changed:
        // building and sending the state is O(targets), updates arrive per step. The interval
        // grows with the rollout (100 ms up to 100 targets, 325 ms at 1,000, 1 s from 3,700):
        // a watcher of a large rollout gets a few states a second, not a stream of copies.
        // The rollout's end is read at once: `rollout start --wait` returns when it ends.
        let mut last_read = tokio::time::Instant::now();
        let ended = |u: &Result<RolloutUpdate, _>| matches!(u, Ok(u) if u.terminal && u.id == id);
        while !last.done {
            let mut end_seen = false;
            tokio::select! {
                _ = tx.closed() => return,
                u = updates.recv() => end_seen = ended(&u),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !end_seen {
                let gap = tokio::time::sleep_until(last_read + min_gap(last.targets));
                tokio::pin!(gap);
                loop {
                    tokio::select! {
                        () = &mut gap => break,
                        u = updates.recv() => {
                            let closed = matches!(u, Err(tokio::sync::broadcast::error::RecvError::Closed));
                            if closed || ended(&u) {
                                break;
                            }
                        }
                    }
                }
            }
            while !matches!(
                updates.try_recv(),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty
                    | tokio::sync::broadcast::error::TryRecvError::Closed)
            ) {}
            last_read = tokio::time::Instant::now();
            match engine.rollout_proto(&id).await {
                Ok(now) => {
                    let sent = Sent::of(&now);
                    if sent != last {
                        last = sent;
                        if tx
                            .send(Ok(pb::RolloutEvent { rollout: Some(now) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(status_of(e))).await;
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// What a watch remembers of the state it sent last.
#[derive(PartialEq, Eq)]
struct Sent {
    /// Of the encoded state: a new state is sent only when it differs.
    digest: u64,
    targets: usize,
    done: bool,
}

impl Sent {
    fn of(r: &pb::Rollout) -> Sent {
        let done = is_done(r);
        // A finished state is the last one sent (it differs from any unfinished one by
        // `done`): nothing is compared with it, so it is not encoded to be hashed.
        let digest = if done {
            0
        } else {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&r.encode_to_vec(), &mut h);
            std::hash::Hasher::finish(&h)
        };
        Sent {
            digest,
            targets: r.targets.len(),
            done,
        }
    }
}

/// The least time between two reads of a watched rollout of `targets` targets: 100 ms up
/// to 100 targets, growing to 1 s at 3,700; from 50,000 targets 20 µs per target (2 s at
/// 100,000), at most 5 s, so that building and sending the state stays a small part of the
/// coordinator's work however large the rollout.
fn min_gap(targets: usize) -> Duration {
    let small = (Duration::from_millis(100)
        + Duration::from_micros(250) * targets.saturating_sub(100) as u32)
        .min(Duration::from_secs(1));
    let large = (Duration::from_micros(20) * targets.min(u32::MAX as usize) as u32)
        .min(Duration::from_secs(5));
    small.max(large)
}

fn is_done(r: &pb::Rollout) -> bool {
    RolloutState::from_proto(pb::RolloutState::try_from(r.state).unwrap_or_default()).is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_reads_large_rollouts_less_often() {
        assert_eq!(min_gap(0), Duration::from_millis(100));
        assert_eq!(min_gap(100), Duration::from_millis(100));
        assert_eq!(min_gap(1_000), Duration::from_millis(325));
        assert_eq!(min_gap(10_000), Duration::from_secs(1));
        assert_eq!(min_gap(50_000), Duration::from_secs(1));
        assert_eq!(min_gap(100_000), Duration::from_secs(2));
        assert_eq!(min_gap(1_000_000), Duration::from_secs(5));
    }
}
