//! The agent-wide fence memory: the lowest token the agent accepts for any of its targets,
//! kept from two sources held apart so that no single request can lock legitimate leaders out.
//!
//! - **Accepted** tokens: the highest token some target of this agent committed in a step's
//!   (or a stamp's, or a repair's) transaction, or read back from a target's fence row. They
//!   are facts of the databases; the memory of them only grows.
//! - **Announced** tokens: a leader announces its token with `Status` when it takes the lock,
//!   so that an older leader's steps are refused at once on every target, including targets
//!   the new leader has not touched yet. An announcement is the caller's word, not a fact, so
//!   it binds only while it is fresh: it lapses `announcement_ttl` after it was last made
//!   (a leader repeats it with every `Status`), and a lower announcement is ignored while a
//!   higher one is fresh. A bogus announcement therefore delays leaders by at most the TTL.
//!
//! A request that fails (invalid, refused, rolled back) changes neither.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::AgentError;

/// The fence memory of one agent.
#[derive(Debug)]
pub(crate) struct FenceMemory {
    accepted: AtomicU64,
    announced: Mutex<Option<Announcement>>,
    ttl: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Announcement {
    token: u64,
    at: Instant,
}

impl FenceMemory {
    pub(crate) fn new(ttl: Duration) -> Self {
        FenceMemory {
            accepted: AtomicU64::new(0),
            announced: Mutex::new(None),
            ttl,
        }
    }

    /// The fresh announcement, if any (a lapsed one is dropped).
    fn fresh_announcement(&self, now: Instant) -> Option<Announcement> {
        let mut slot = self
            .announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some_and(|a| now.duration_since(a.at) > self.ttl) {
            *slot = None;
        }
        *slot
    }

    /// The lowest token accepted right now: the highest accepted token or fresh announcement.
    pub(crate) fn floor(&self) -> u64 {
        self.floor_at(Instant::now())
    }

    fn floor_at(&self, now: Instant) -> u64 {
        let announced = self.fresh_announcement(now).map_or(0, |a| a.token);
        self.accepted.load(Ordering::SeqCst).max(announced)
    }

    /// Refuse a token lower than the floor (FAILED_PRECONDITION). Remembers nothing.
    pub(crate) fn check(&self, target: &str, token: u64) -> Result<(), AgentError> {
        let current = self.floor();
        if token < current {
            return Err(AgentError::StaleToken {
                target: target.to_owned(),
                offered: token,
                current,
            });
        }
        Ok(())
    }

    /// A target committed `token` (or its fence row holds it).
    pub(crate) fn accepted(&self, token: u64) {
        self.accepted.fetch_max(token, Ordering::SeqCst);
    }

    /// A caller announced `token` with Status (0 = no announcement). It replaces the current
    /// announcement when it is at least as high, or when the current one has lapsed.
    pub(crate) fn announce(&self, token: u64) {
        self.announce_at(token, Instant::now());
    }

    fn announce_at(&self, token: u64, now: Instant) {
        if token == 0 {
            return;
        }
        let mut slot = self
            .announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keep = slot.is_some_and(|a| a.token > token && now.duration_since(a.at) <= self.ttl);
        if !keep {
            *slot = Some(Announcement { token, at: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_tokens_stay_and_announcements_lapse() {
        let ttl = Duration::from_secs(60);
        let m = FenceMemory::new(ttl);
        let t0 = Instant::now();
        assert_eq!(m.floor_at(t0), 0);
        m.accepted(5);
        m.accepted(3);
        assert_eq!(m.floor_at(t0), 5);
        assert!(m.check("t", 4).is_err());
        assert!(m.check("t", 5).is_ok());

        m.announce_at(9, t0);
        m.announce_at(7, t0);
        m.announce_at(0, t0);
        assert_eq!(
            m.floor_at(t0),
            9,
            "a lower announcement does not replace a fresh one"
        );
        assert_eq!(m.floor_at(t0 + ttl), 9, "fresh up to the ttl");
        let later = t0 + ttl + Duration::from_millis(1);
        assert_eq!(
            m.floor_at(later),
            5,
            "a lapsed announcement no longer binds"
        );
        m.announce_at(7, later);
        assert_eq!(
            m.floor_at(later),
            7,
            "a lower announcement replaces a lapsed one"
        );
        m.announce_at(7, later + ttl);
        assert_eq!(
            m.floor_at(later + ttl + Duration::from_millis(1)),
            7,
            "repeating an announcement keeps it fresh"
        );
    }
}
