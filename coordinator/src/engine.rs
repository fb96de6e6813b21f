//! The rollout engine: while this coordinator holds the fleet lock (a leader *term*), it
//! runs rollouts — canary, waves, failure budget, fingerprint gate, pause/resume/abort —
//! persisting every transition through the fenced state store so a new leader resumes where
//! the old one stopped.
//!
//! **Architecture invariant:** every write of rollout state goes through
//! [`StateStore::write`] with the current term's fencing token, and every Migrate carries
//! that same token, so a stale leader is refused by both the store and the agents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use flotilla_proto as pb;

use crate::fleet::AgentClient;
use crate::lock::{FleetLock, LockError};
use crate::registry::Registry;
use crate::rollout::{
    RolloutRecord, RolloutSpec, RolloutState, TargetRecord, now_ms, rollout_key, targets_prefix,
};
use crate::store::{StateStore, StoreError, WriteOp};
use flotilla_core::project::Project;
use flotilla_revision::Graph;

mod batch;
pub mod destructive;
mod durable;
mod error;
pub mod fencing;
mod gate;
mod live;
mod metric_gate;
mod pack;
pub mod preflight;
pub mod projects;
mod report;
mod run;
pub mod sets;
pub mod snapshot;
mod target;
mod unreadable;
pub mod validate;
pub mod view;

pub use error::EngineError;
pub(crate) use error::{rollout_not_found, target_not_found};
pub use sets::DefaultSet;
pub use snapshot::{FleetEntry, FleetSnapshot, PLANNING_PAGE, PLANNING_SAMPLE, TargetPlanOutcome};

/// How soon a rollout interrupted by an error other than its term's end is resumed, at
/// first and at most.
const RESUME_MIN: Duration = Duration::from_millis(500);
const RESUME_MAX: Duration = Duration::from_secs(10);

/// Store key holding the current leader's API address (`{"address", "token"}`).
pub const LEADER_KEY: &str = "leader";

/// What the user asked a running rollout to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Run,
    Pause,
    Abort,
}

/// A leader term: the fencing token and a token cancelled the moment leadership ends.
#[derive(Clone, Debug)]
pub struct Term {
    /// The lock backend's token ([`crate::lock::Leadership`]): every state-store write of
    /// this term is fenced with it.
    pub token: u64,
    /// What agents are sent: `token` in this backend's fencing epoch
    /// (`flotilla_core::fencing`), shared by the term's clones; a takeover raises it.
    agent_token: Arc<AtomicU64>,
    pub cancel: CancellationToken,
}

impl Term {
    pub(crate) fn new(token: u64, agent_token: u64) -> Term {
        Term {
            token,
            agent_token: Arc::new(AtomicU64::new(agent_token)),
            cancel: CancellationToken::new(),
        }
    }

    /// The fencing token every agent request of this term carries.
    pub fn agent_token(&self) -> u64 {
        self.agent_token.load(Ordering::SeqCst)
    }

    /// A takeover moved this backend to a higher fencing epoch.
    pub(crate) fn raise_agent_token(&self, token: u64) {
        self.agent_token.fetch_max(token, Ordering::SeqCst);
    }
}

/// A rollout's records were written: `terminal` when the write ended it (watchers then read
/// it at once instead of waiting out their rate limit).
#[derive(Debug, Clone)]
pub struct RolloutUpdate {
    pub id: String,
    pub terminal: bool,
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Attempts at one agent call while a rollout is planned or a target is looked up, and
    /// re-plans of a target whose plan keeps going stale. A target whose agent cannot be
    /// reached waits for it by time instead (`RolloutSpec::agent_wait`).
    pub agent_attempts: u32,
    /// Backoff between attempts at an agent (both kinds above).
    pub agent_backoff_min: Duration,
    pub agent_backoff_max: Duration,
    /// Delay between attempts to take the lock after an error.
    pub lock_retry: Duration,
    /// This coordinator's API address as other coordinators reach it. The leader records it
    /// (fenced) so standbys can forward write calls; `None`: standbys answer NOT_LEADER.
    pub advertise: Option<String>,
    /// Encoded steps per Migrate request (at least one step goes): a longer plan is sent in
    /// several requests (`engine/pack.rs`). The default is the largest step a revision may
    /// hold, which the agent's default message limit takes with room to spare.
    pub migrate_request_bytes: usize,
    /// The Prometheus a rollout's metric gate asks when the rollout names none
    /// (`flotilla coordinator --gate-prometheus`).
    pub gate_prometheus: Option<String>,
    /// Migration sets no rollout refers to that garbage collection keeps, newest first
    /// (default [`crate::sets::DEFAULT_KEEP_SETS`]).
    pub keep_sets: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            agent_attempts: 5,
            agent_backoff_min: Duration::from_millis(200),
            agent_backoff_max: Duration::from_secs(5),
            lock_retry: Duration::from_secs(1),
            advertise: None,
            migrate_request_bytes: flotilla_core::limits::MAX_STEP_SQL_BYTES,
            gate_prometheus: None,
            keep_sets: crate::sets::DEFAULT_KEEP_SETS,
        }
    }
}

pub struct Engine {
    /// The migration sets planned with (see `sets.rs`).
    pub(crate) sets: sets::SetCache,
    /// The project this engine runs rollouts of (see `projects.rs`): every agent request
    /// carries it, and it sees only that project's rollouts and targets' states.
    pub(crate) project: Project,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) config: EngineConfig,
    /// Shared by the engines of every project: one lock, one term.
    term: Arc<watch::Sender<Option<Term>>>,
    /// The other projects' engines, which lead with this one (`default`'s; see `projects.rs`).
    siblings: Mutex<Vec<Arc<Engine>>>,
    updates: broadcast::Sender<RolloutUpdate>,
    controls: Mutex<HashMap<String, watch::Sender<Control>>>,
    tasks: TaskTracker,
    /// The last state seen of each target (see `view.rs`).
    pub(crate) view: view::FleetView,
    /// The rollouts this coordinator runs, as last written (see `live.rs`).
    pub(crate) live: live::LiveRollouts,
    /// Whether rollout records can be written now (see `durable.rs`).
    store_health: durable::StoreHealth,
}

impl Engine {
    pub fn new(
        default_set: Option<DefaultSet>,
        store: Arc<dyn StateStore>,
        registry: Arc<Registry>,
        config: EngineConfig,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            sets: sets::SetCache::new(default_set),
            project: Project::default(),
            store,
            registry,
            config,
            term: Arc::new(watch::channel(None).0),
            siblings: Mutex::new(Vec::new()),
            updates: broadcast::channel(1024).0,
            controls: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            view: view::FleetView::default(),
            live: live::LiveRollouts::default(),
            store_health: durable::StoreHealth::default(),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The current term, if this coordinator leads.
    pub fn term(&self) -> Option<Term> {
        self.term
            .borrow()
            .clone()
            .filter(|t| !t.cancel.is_cancelled())
    }

    /// The API address the current leader recorded, unless it is this coordinator's own.
    pub async fn leader_address(&self) -> Option<String> {
        let raw = self.store.get(LEADER_KEY).await.ok()??;
        let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
        let address = v.get("address")?.as_str()?.to_owned();
        (self.config.advertise.as_deref() != Some(address.as_str())).then_some(address)
    }

    /// Resolves once this coordinator leads.
    pub async fn wait_leader(&self) -> Term {
        let mut rx = self.term.subscribe();
        loop {
            if let Some(t) = self.term() {
                return t;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as the engine: unreachable in practice.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Rollouts whose state changed; for watchers.
    pub fn subscribe(&self) -> broadcast::Receiver<RolloutUpdate> {
        self.updates.subscribe()
    }

    pub(crate) fn notify(&self, id: &str) {
        self.notify_with(id, false);
    }

    fn notify_with(&self, id: &str, terminal: bool) {
        let _ = self.updates.send(RolloutUpdate {
            id: id.to_owned(),
            terminal,
        });
    }

    /// Lead while `shutdown` is not cancelled: take the lock (blocking as a standby while
    /// another coordinator holds it), resume unfinished rollouts, and when leadership is
    /// lost cancel all work at once and go back to waiting for the lock.
    pub async fn lead(self: Arc<Self>, lock: Arc<dyn FleetLock>, shutdown: CancellationToken) {
        loop {
            let leadership = match lock.acquire(&shutdown).await {
                Ok(l) => l,
                Err(LockError::Cancelled) => return,
                Err(e) => {
                    tracing::warn!("cannot take the fleet lock: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.config.lock_retry) => continue,
                    }
                }
            };
            let term = match self.term_of(&leadership).await {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!("cannot lead: {e}");
                    drop(leadership.release().await);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.config.lock_retry) => continue,
                    }
                }
            };
            tracing::info!(
                token = term.token,
                agent_token = term.agent_token(),
                "took the fleet lock: leading"
            );
            metrics::counter!("flotilla_coordinator_lock_acquired_total").increment(1);
            metrics::gauge!("flotilla_coordinator_lock_held").set(1.0);
            self.term.send_replace(Some(term.clone()));
            // Record where the leader is, for standbys to forward write calls to.
            if let Some(address) = &self.config.advertise {
                let value = serde_json::json!({ "address": address, "token": term.token });
                let op = WriteOp::Put {
                    key: LEADER_KEY.into(),
                    value: value.to_string().into_bytes(),
                };
                if let Err(e) = self.write(&term, vec![op]).await {
                    tracing::warn!("cannot record the leader's address: {e}");
                }
            }
            // Announce the new token to every agent (one Status each): from now on they
            // refuse the previous leader's steps on every target, touched or not.
            let announce = tracing::info_span!(
                "announce_token",
                flotilla.fencing_token = term.agent_token()
            );
            match tracing::Instrument::instrument(self.announce(term.agent_token()), announce).await
            {
                Ok(unreachable) => {
                    for (agent, err) in &unreachable {
                        tracing::warn!(agent = %agent, "cannot announce the new fencing token: {err}");
                    }
                }
                Err(e) => tracing::warn!("cannot announce the new fencing token: {e}"),
            }
            if let Err(e) = self.adopt_recorded_projects().await {
                tracing::error!("cannot list the rollouts' projects: {e}");
            }
            for engine in std::iter::once(self.clone()).chain(self.siblings()) {
                // Before resuming: a rollout started with a default set finds it stored.
                if let Err(e) = engine.register_default_set(&term).await {
                    tracing::error!(project = %engine.project, "cannot store the default migration set: {e}");
                }
                if let Err(e) = engine.resume_all(&term).await {
                    tracing::error!(project = %engine.project, "cannot resume rollouts: {e}");
                }
            }
            if let Err(e) = self.gc_sets(&term).await {
                tracing::warn!("cannot garbage-collect migration sets: {e}");
            }
            let lost = tokio::select! {
                _ = leadership.lost.cancelled() => true,
                _ = term.cancel.cancelled() => true,
                _ = shutdown.cancelled() => false,
            };
            term.cancel.cancel();
            self.term.send_replace(None);
            metrics::gauge!("flotilla_coordinator_lock_held").set(0.0);
            if lost {
                tracing::error!(
                    token = term.token,
                    "leadership lost: all rollout work cancelled"
                );
                metrics::counter!("flotilla_coordinator_lease_losses_total").increment(1);
            }
            // Wait for this term's tasks to observe the cancellation before going on.
            for engine in std::iter::once(self.clone()).chain(self.siblings()) {
                engine.tasks.close();
                engine.tasks.wait().await;
                engine.tasks.reopen();
            }
            if shutdown.is_cancelled() {
                if let Err(e) = leadership.release().await {
                    tracing::warn!("releasing the fleet lock: {e}");
                }
                return;
            }
        }
    }

    /// Fenced write for `term`; a fenced refusal ends the term at once.
    pub(crate) async fn write(&self, term: &Term, ops: Vec<WriteOp>) -> Result<(), EngineError> {
        match self.store.write(term.token, ops).await {
            Ok(()) => Ok(()),
            Err(StoreError::Fenced { token }) => {
                term.cancel.cancel();
                Err(EngineError::Fenced(token))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn put_rollout(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
    ) -> Result<(), EngineError> {
        rec.updated_at_ms = now_ms();
        rec.fencing_token = term.token;
        let value = serde_json::to_vec(rec).map_err(EngineError::Encode)?;
        self.write_durably(
            term,
            vec![WriteOp::Put {
                key: rollout_key(&rec.id),
                value,
            }],
        )
        .await?;
        self.live.put_rollout(term.token, rec);
        self.notify_with(&rec.id, rec.state.is_terminal());
        Ok(())
    }

    /// A rollout as the API shows it: from memory while this coordinator runs it (see
    /// `live.rs`), from the store otherwise.
    pub async fn rollout_proto(&self, id: &str) -> Result<pb::Rollout, EngineError> {
        if let Some(p) = self.live.proto(id, self.term().map(|t| t.token)) {
            return Ok(p);
        }
        // Each record becomes what the API shows as it is decoded: a rollout of 100,000
        // targets is never held as records and as progress at once.
        let rec = self.get_record(id).await?;
        let mut targets = Vec::new();
        for (key, value) in self.store.list(&targets_prefix(id)).await? {
            targets.push(decode_target(&key, &value)?.to_proto());
        }
        targets.sort_by(|a, b| (a.wave, &a.target_id).cmp(&(b.wave, &b.target_id)));
        let mut proto = rec.to_proto(&[]);
        proto.targets = targets;
        Ok(proto)
    }

    /// A rollout's record without its targets, from the store: what a caller that needs the
    /// spec or the state reads (a rollout of 100,000 targets is tens of megabytes decoded).
    pub async fn get_record(&self, id: &str) -> Result<RolloutRecord, EngineError> {
        let raw = self
            .store
            .get(&rollout_key(id))
            .await?
            .ok_or_else(|| EngineError::NotFound(rollout_not_found(id)))?;
        serde_json::from_slice(&raw).map_err(|source| EngineError::Decode {
            what: format!("rollout {id}"),
            source,
        })
    }

    /// A rollout and its targets, from the store.
    pub async fn get(&self, id: &str) -> Result<(RolloutRecord, Vec<TargetRecord>), EngineError> {
        let rec = self.get_record(id).await?;
        let mut targets = Vec::new();
        for (key, value) in self.store.list(&targets_prefix(id)).await? {
            targets.push(decode_target(&key, &value)?);
        }
        targets.sort_by(|a, b| (a.wave, &a.target_id).cmp(&(b.wave, &b.target_id)));
        Ok((rec, targets))
    }

    /// Every rollout record of this engine's project, newest first (records written before
    /// projects existed are `default`'s).
    pub async fn list(&self) -> Result<Vec<RolloutRecord>, EngineError> {
        let mut out = Vec::new();
        for (key, value) in self.store.list("rollouts/").await? {
            match serde_json::from_slice::<RolloutRecord>(&value) {
                Ok(r) if r.spec.project() != self.project => {}
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("skipping unreadable {key}: {e}"),
            }
        }
        out.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Parse a goal and check it names something in the graph: an unknown revision is
    /// refused up front instead of blocking every target.
    pub fn goal(&self, graph: &Graph, goal: &str) -> Result<flotilla_revision::Goal, EngineError> {
        let parsed: flotilla_revision::Goal =
            goal.parse().map_err(|source| EngineError::InvalidGoal {
                goal: goal.to_owned(),
                source,
            })?;
        if let flotilla_revision::Goal::Revision(id) = &parsed
            && !graph.contains(id)
        {
            return Err(EngineError::InvalidArgument(format!(
                "goal {}: no such revision in the migrations (see `flotilla revisions`)",
                flotilla_core::text::quoted(goal)
            )));
        }
        Ok(parsed)
    }

    /// Start a rollout (leader only). Refused while another rollout of the same project is
    /// active; other projects' rollouts run alongside.
    pub async fn start(
        self: &Arc<Self>,
        mut spec: RolloutSpec,
        traceparent: String,
        trace_id: String,
    ) -> Result<RolloutRecord, EngineError> {
        let term = self.term().ok_or(EngineError::NotLeader)?;
        let (digest, graph) = self.graph_of(&spec.set_digest).await?;
        spec.set_digest = digest;
        let goal = self.goal(&graph, &spec.goal)?;
        if let Some(active) = self
            .list()
            .await?
            .into_iter()
            .find(|r| !r.state.is_terminal())
        {
            return Err(EngineError::Conflict(format!(
                "rollout {} of project {} is still {}; wait for it, or abort it first",
                active.id,
                self.project,
                active.state.as_str()
            )));
        }
        // The last finished rollout's state (kept for its watchers) is not this one's memory.
        self.live.forget_ended();
        self.require_selection(&spec.selector, &traceparent).await?;
        self.preflight(&graph, &spec, &goal, &traceparent).await?;
        self.refuse_destructive(&graph, &spec, &goal, &traceparent)
            .await?;
        self.check_metric_gate(&mut spec).await?;
        let now = now_ms();
        let mut rec = RolloutRecord {
            id: uuid::Uuid::now_v7().to_string(),
            spec,
            state: RolloutState::Pending,
            planned: false,
            current_wave: 0,
            wave_count: 0,
            message: "planning".into(),
            created_at_ms: now,
            updated_at_ms: now,
            trace_id,
            traceparent,
            fencing_token: term.token,
            graph_digest: graph.digest(),
            goal_revision: String::new(),
            canary_fingerprint: Default::default(),
            metric_gate: None,
        };
        self.put_rollout(&term, &mut rec).await?;
        self.spawn_run(rec.id.clone(), term, Control::Run);
        Ok(rec)
    }

    fn control(&self, id: &str, initial: Control) -> watch::Receiver<Control> {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(initial).0)
            .subscribe()
    }

    fn set_control(&self, id: &str, c: Control) -> bool {
        let controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        match controls.get(id) {
            Some(tx) => {
                tx.send_replace(c);
                true
            }
            None => false,
        }
    }

    /// Run a rollout in this term. Its control channel exists from here on, so a pause or
    /// abort sent right after the start is never lost.
    /// A rollout already running here (started while `resume_all` was listing) is not run twice.
    fn spawn_run(self: &Arc<Self>, id: String, term: Term, initial: Control) {
        {
            let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
            if controls.contains_key(&id) {
                return;
            }
            controls.insert(id.clone(), watch::channel(initial).0);
        }
        let engine = self.clone();
        self.tasks.spawn(async move {
            // A rollout stops only with its term: any other error (a store read during a
            // blip) is logged and the rollout resumes in this term after a backoff, keeping
            // its control channel, so pause/resume/abort keep working meanwhile.
            let mut delay = RESUME_MIN;
            loop {
                report::refresh_rollouts(&engine).await;
                let result = engine.clone().run(&id, &term).await;
                report::refresh_rollouts(&engine).await;
                match result {
                    Ok(()) | Err(EngineError::Fenced(_)) => break,
                    Err(_) if term.cancel.is_cancelled() => break,
                    Err(e) => {
                        tracing::error!(rollout = %id, "rollout interrupted, resuming in {delay:?}: {e}");
                        tokio::select! {
                            _ = term.cancel.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(RESUME_MAX);
                    }
                }
            }
            let mut controls = engine.controls.lock().unwrap_or_else(|p| p.into_inner());
            controls.remove(&id);
        });
    }

    async fn resume_all(self: &Arc<Self>, term: &Term) -> Result<(), EngineError> {
        for rec in self.list().await? {
            if !rec.state.is_terminal() {
                tracing::info!(rollout = %rec.id, state = rec.state.as_str(), "resuming rollout");
                let initial = if rec.state == RolloutState::Paused {
                    Control::Pause
                } else {
                    Control::Run
                };
                self.spawn_run(rec.id, term.clone(), initial);
            }
        }
        Ok(())
    }

    /// Pause, resume or abort a rollout (leader only).
    pub async fn control_rollout(
        &self,
        id: &str,
        c: Control,
    ) -> Result<RolloutRecord, EngineError> {
        let term = self.term().ok_or(EngineError::NotLeader)?;
        // A rollout this term runs is known without the store (which may be away for a
        // moment: the control still reaches the rollout, which records it once it can).
        let rec = match self.live.record(id, term.token) {
            Some(rec) => rec,
            None => self.get_record(id).await?,
        };
        if rec.state.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "rollout {id} already ended ({})",
                rec.state.as_str()
            )));
        }
        if !self.set_control(id, c) {
            return Err(EngineError::Unavailable(format!(
                "rollout {id} is not running on this leader yet; retry"
            )));
        }
        Ok(rec)
    }

    /// The agent with `id`: from the registry's clients, re-reading registrations only when
    /// `refresh` is set or the agent is not known yet.
    pub(crate) async fn agent(
        &self,
        id: &str,
        refresh: bool,
    ) -> Result<Option<Arc<dyn AgentClient>>, EngineError> {
        if !refresh && let Some(a) = self.registry.known(id) {
            return Ok(Some(a));
        }
        Ok(self.agents().await?.into_iter().find(|a| a.id() == id))
    }

    /// All agents, for status/validate fan-out.
    pub async fn agents(&self) -> Result<Vec<Arc<dyn AgentClient>>, EngineError> {
        Ok(self.registry.agents().await?)
    }
}

/// A target record as the store holds it under `key`.
fn decode_target(key: &str, value: &[u8]) -> Result<TargetRecord, EngineError> {
    serde_json::from_slice(value).map_err(|source| EngineError::Decode {
        what: key.to_owned(),
        source,
    })
}
