//! The fencing epoch of this coordinator's lock backend (`flotilla_core::fencing`): read
//! when a term starts, to turn the backend's token into the token agents are sent, and
//! raised by [`Engine::fence_takeover`], the deliberate operator step
//! (`flotilla fence takeover --yes`) that moves a fleet to this backend.
//!
//! **Architecture invariant:** the epoch changes only through a fenced store write of the
//! current leader, and only upwards past every epoch the fleet's targets accepted; agents
//! compare whole tokens, so no agent needs to know about epochs to refuse an older backend.

use flotilla_core::fencing;
use flotilla_proto as pb;
use futures::future::join_all;

use crate::lock::Leadership;
use crate::store::WriteOp;

use super::{Engine, EngineError, Term};

/// Store key of the backend's fencing epoch (a decimal number; absent = 0).
pub const FENCE_EPOCH_KEY: &str = "fence_epoch";

/// What a takeover found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// The highest fence token any selected target had accepted.
    pub highest_accepted: u64,
    /// The agent token before the takeover.
    pub previous_token: u64,
    /// The agent token from now on (equal to `previous_token` when nothing had to change).
    pub token: u64,
    /// Targets whose fence was read.
    pub targets: usize,
}

impl Engine {
    /// The term of a new leadership: the backend's token, and the token agents are sent in
    /// this backend's epoch.
    pub(super) async fn term_of(&self, leadership: &Leadership) -> Result<Term, EngineError> {
        let epoch = self.fence_epoch().await?;
        let agent_token = fencing::compose(epoch, leadership.token).ok_or_else(|| {
            EngineError::Unavailable(format!(
                "the lock backend's token {} does not fit a fencing token (at most {}); \
                 start a new lock backend and run `flotilla fence takeover --yes`",
                leadership.token,
                fencing::MAX_COUNTER
            ))
        })?;
        Ok(Term::new(leadership.token, agent_token))
    }

    async fn fence_epoch(&self) -> Result<u64, EngineError> {
        let Some(raw) = self.store.get(FENCE_EPOCH_KEY).await? else {
            return Ok(0);
        };
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|e| *e <= fencing::MAX_EPOCH)
            .ok_or_else(|| {
                EngineError::Unavailable(format!(
                    "state store: {FENCE_EPOCH_KEY} holds {:?}, not a fencing epoch",
                    String::from_utf8_lossy(&raw)
                ))
            })
    }

    /// Moves the fleet to this backend: reads every target's fence and every agent's floor
    /// (every agent and target must answer), and unless this backend already took over and
    /// nothing above its token was accepted, raises this backend's epoch above the highest
    /// epoch accepted (a fenced write), then announces the new token. Refused when not
    /// leading or when an agent or target cannot be read.
    pub async fn fence_takeover(&self) -> Result<Takeover, EngineError> {
        let term = self.term().ok_or(EngineError::NotLeader)?;
        let (highest, targets) = self.fleet_fences().await?;
        let previous = term.agent_token();
        let mut out = Takeover {
            highest_accepted: highest,
            previous_token: previous,
            token: previous,
            targets,
        };
        // Nothing to do only when this backend already took over (epoch above 0) and no
        // target accepted anything above its token: a backend still at epoch 0 takes over
        // even when its counter happens to be ahead, so other epoch-0 backends are shut out.
        let ours = fencing::epoch_of(previous);
        if ours > 0 && highest <= previous {
            return Ok(out);
        }
        let epoch = fencing::epoch_of(highest).max(fencing::epoch_of(previous)) + 1;
        let token = fencing::compose(epoch, term.token).ok_or_else(|| {
            EngineError::Unavailable(format!(
                "fencing epoch {epoch} is out of range (at most {})",
                fencing::MAX_EPOCH
            ))
        })?;
        self.write(
            &term,
            vec![WriteOp::Put {
                key: FENCE_EPOCH_KEY.into(),
                value: epoch.to_string().into_bytes(),
            }],
        )
        .await?;
        term.raise_agent_token(token);
        tracing::warn!(
            epoch,
            token,
            highest_accepted = highest,
            "fence takeover: this lock backend's fencing epoch was raised; coordinators of other backends are refused by every target"
        );
        for (agent, err) in self.announce(token).await? {
            tracing::warn!(agent = %agent, "cannot announce the new fencing token: {err}");
        }
        out.token = token;
        Ok(out)
    }

    /// The highest token the fleet accepts only from now on, and how many targets were read:
    /// one `Status` per agent reads every target's fence row (which the agent's memory then
    /// holds too) and reports the agent's floor, fresh announcements of other leaders
    /// included. Every agent and every target must answer.
    async fn fleet_fences(&self) -> Result<(u64, usize), EngineError> {
        let agents = self.agents().await?;
        let calls = agents.iter().map(|agent| async move {
            let resp = self
                .status_of_agent(agent, pb::StatusRequest::default())
                .await;
            (agent.id().to_owned(), resp)
        });
        let (mut highest, mut targets, mut unreachable) = (0, 0, Vec::new());
        for (agent, resp) in join_all(calls).await {
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    unreachable.push(format!("{agent} ({})", e.message()));
                    continue;
                }
            };
            if let Some(t) = resp.targets.iter().find(|t| !t.error.is_empty()) {
                return Err(EngineError::Unavailable(format!(
                    "fence takeover needs every target's fence, and target {} could not be \
                     read: {}; retry when it is back",
                    t.target_id, t.error
                )));
            }
            targets += resp.targets.len();
            highest = resp
                .targets
                .iter()
                .map(|t| t.fence_token)
                .fold(highest.max(resp.fence_floor), u64::max);
        }
        if !unreachable.is_empty() {
            return Err(EngineError::Unavailable(format!(
                "fence takeover needs every agent's fences, and these agents did not answer: {}; \
                 retry when they are back",
                unreachable.join(", ")
            )));
        }
        Ok((highest, targets))
    }
}

impl Takeover {
    /// The response of the FenceTakeover call.
    pub fn to_proto(&self) -> pb::FenceTakeoverResponse {
        pb::FenceTakeoverResponse {
            highest_accepted: self.highest_accepted,
            previous_token: self.previous_token,
            token: self.token,
            epoch: fencing::epoch_of(self.token),
            targets: self.targets as u64,
            changed: self.token != self.previous_token,
        }
    }
}
