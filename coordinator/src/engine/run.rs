//! The rollout loop: plan every selected target once, then run the waves in order (canary
//! first), honouring max_parallel (overall and per database host), the failure budget, the
//! fingerprint gate and the metric gate after each wave, and pause / resume / abort.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use flotilla_core::Dialect;

use crate::rollout::{RolloutRecord, RolloutState, TargetRecord, TargetState, assign_waves};
use flotilla_revision::{Goal, Graph};

use super::batch::{TargetWriter, write_records};
use super::metric_gate::GateEnd;
use super::snapshot::{PlanMemo, TargetPlanOutcome, state_digest_of};
use super::{Control, Engine, EngineError, Term};
use summary::{failed_of, short};

pub(super) mod summary;

/// Failures so far in the rollout, and how many are allowed before no target starts.
struct Limits {
    failed: AtomicUsize,
    allowed: usize,
}

impl Limits {
    fn exceeded(&self) -> bool {
        self.failed.load(Ordering::SeqCst) > self.allowed
    }
}

/// Wait while the rollout is paused; false when it was aborted.
async fn wait_runnable(mut control: watch::Receiver<Control>) -> bool {
    loop {
        let c = *control.borrow_and_update();
        match c {
            Control::Run => return true,
            Control::Abort => return false,
            Control::Pause => {
                if control.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// What a run did, for the fleet view recorded after it (`report::record_fleet_view`).
enum Ran {
    /// No target was migrated (the rollout had ended, or every target was at its goal).
    Nothing,
    /// Targets were migrated: with the fingerprints succeeded targets reported when the run
    /// ended with its records in hand, else (a halted run) they are read from the store.
    Migrated(Option<HashMap<String, String>>),
}

/// Whether a wave ran to its end or the rollout must stop.
enum WaveEnd {
    Completed,
    Aborted,
}

impl Engine {
    /// Run (or resume) rollout `id` until it ends or the term ends, in a `rollout` span that
    /// continues the trace recorded when the rollout started.
    pub(crate) async fn run(self: Arc<Self>, id: &str, term: &Term) -> Result<(), EngineError> {
        let rec = self.get_record(id).await?;
        let span = crate::telemetry::rollout_span(id, term.token, &rec.traceparent);
        let engine = self.clone();
        let run = async move {
            let mut result = engine.clone().run_rollout(id, term).await;
            engine.live.end(id);
            // The fleet gauges now the rollout ended, from what the agents reported while it
            // ran (the planning Status and each Migrate's closing state and fingerprint).
            if !term.cancel.is_cancelled() {
                let migrated = match &mut result {
                    Ok(Ran::Migrated(fingerprints)) => Some((id, fingerprints.take())),
                    _ => None,
                };
                // Drift against the rollout's own set, whatever other calls planned with.
                let graph = match engine.graph_of(&rec.spec.set_digest).await {
                    Ok((_, g)) => g,
                    Err(_) => engine.graph(),
                };
                super::report::record_fleet_view(&engine, &graph, migrated).await;
            }
            result.map(|_| ())
        };
        tracing::Instrument::instrument(run, span).await
    }

    async fn run_rollout(self: Arc<Self>, id: &str, term: &Term) -> Result<Ran, EngineError> {
        let mut rec = self.get_record(id).await?;
        if rec.state.is_terminal() {
            return Ok(Ran::Nothing);
        }
        // The set the rollout recorded (older records: the default set), from the store
        // when this coordinator did not start it.
        let (_, graph) = self.graph_of(&rec.spec.set_digest).await?;
        if rec.graph_digest != graph.digest() {
            let why = format!(
                "the migrations changed since this rollout started (graph digest {} now {}); start a new rollout",
                short(&rec.graph_digest),
                short(&graph.digest())
            );
            return self
                .finish(term, &mut rec, RolloutState::Halted, why)
                .await
                .map(|()| Ran::Migrated(None));
        }
        let goal: Goal = rec
            .spec
            .goal
            .parse()
            .map_err(|source| EngineError::InvalidGoal {
                goal: rec.spec.goal.clone(),
                source,
            })?;
        // Just planned: the records as written; resumed: as the store has them.
        let targets = if rec.planned {
            self.get(id).await?.1
        } else {
            let planned = self.plan_rollout(term, &mut rec, &graph, &goal).await?;
            if rec.state.is_terminal() {
                return Ok(Ran::Nothing);
            }
            planned
        };
        self.live.start(term.token, &rec, &targets);
        let mut targets: BTreeMap<String, TargetRecord> = targets
            .into_iter()
            .map(|t| (t.target_id.clone(), t))
            .collect();
        crate::metrics::set_rollout_targets(targets.values());
        let initial = if rec.state == RolloutState::Paused {
            Control::Pause
        } else {
            Control::Run
        };
        let mut control = self.control(id, initial);
        let eligible = targets
            .values()
            .filter(|t| !matches!(t.state, TargetState::Blocked))
            .count();
        let allowed = rec.spec.failure_budget.allowed(eligible);
        let writer = TargetWriter::new(self.clone(), term.clone(), id);

        let mut wave = rec.current_wave;
        while wave < rec.wave_count {
            if rec.current_wave != wave {
                rec.current_wave = wave;
                self.put_rollout(term, &mut rec).await?;
            }
            let wave_span = tracing::info_span!("wave", flotilla.wave = wave);
            let end = tracing::Instrument::instrument(
                self.run_wave(
                    term,
                    &mut rec,
                    &graph,
                    &goal,
                    wave,
                    &mut targets,
                    &mut control,
                    allowed,
                    &writer,
                ),
                wave_span,
            )
            .await?;
            match end {
                WaveEnd::Completed => {}
                WaveEnd::Aborted => {
                    for t in targets
                        .values_mut()
                        .filter(|t| t.state == TargetState::Pending)
                    {
                        t.state = TargetState::Skipped;
                        t.message = "rollout aborted".into();
                        writer.stage(t)?;
                        crate::metrics::target_transition(TargetState::Pending, t.state);
                        crate::metrics::targets_finished(t.state, 1);
                    }
                    writer.flush().await?;
                    return self
                        .finish(
                            term,
                            &mut rec,
                            RolloutState::Aborted,
                            "aborted by request".into(),
                        )
                        .await
                        .map(|()| Ran::Migrated(None));
                }
            }
            let failed: Vec<&TargetRecord> = targets
                .values()
                .filter(|t| t.state == TargetState::Failed)
                .collect();
            if wave == 0 && rec.spec.canary > 0 && failed.iter().any(|t| t.wave == 0) {
                let why = failed
                    .iter()
                    .filter(|t| t.wave == 0)
                    .map(|t| format!("{}: {}", t.target_id, t.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                return self
                    .finish(
                        term,
                        &mut rec,
                        RolloutState::Halted,
                        format!("canary failed, no other target touched: {why}"),
                    )
                    .await
                    .map(|()| Ran::Migrated(None));
            }
            if failed.len() > allowed {
                return self
                    .finish(
                        term,
                        &mut rec,
                        RolloutState::Halted,
                        format!(
                            "failure budget exceeded: {} targets failed, {} allowed",
                            failed.len(),
                            allowed
                        ),
                    )
                    .await
                    .map(|()| Ran::Migrated(None));
            }
            if rec.spec.fingerprint_gate
                && let Some(why) = self
                    .gate(term, &mut rec, wave, &mut targets, &writer)
                    .await?
            {
                return self
                    .finish(term, &mut rec, RolloutState::Halted, why)
                    .await
                    .map(|()| Ran::Migrated(None));
            }
            match self.metric_gate(term, &mut rec, wave, &mut control).await? {
                GateEnd::Passed => {}
                // The same wave again: none of its targets is left to run, and its end sees
                // the abort (the pending targets are skipped there).
                GateEnd::Aborted => continue,
                GateEnd::Halted(why) => {
                    return self
                        .finish(term, &mut rec, RolloutState::Halted, why)
                        .await
                        .map(|()| Ran::Migrated(None));
                }
            }
            wave += 1;
        }
        let failed = targets
            .values()
            .filter(|t| t.state == TargetState::Failed)
            .count();
        let blocked = targets
            .values()
            .filter(|t| t.state == TargetState::Blocked)
            .count();
        let succeeded = targets
            .values()
            .filter(|t| t.state == TargetState::Succeeded)
            .count();
        let skipped = targets
            .values()
            .filter(|t| t.state == TargetState::Skipped)
            .count();
        let mut summary = format!("{succeeded} migrated, {skipped} already at the goal");
        if failed > 0 {
            summary.push_str(&format!(
                ", {failed} failed (within the budget of {allowed})"
            ));
        }
        if blocked > 0 {
            summary.push_str(&format!(", {blocked} blocked"));
        }
        // Blocked targets never reached the goal: the rollout did not succeed.
        let state = if blocked > 0 {
            RolloutState::Blocked
        } else if failed > 0 {
            RolloutState::CompletedWithFailures
        } else {
            RolloutState::Succeeded
        };
        if state != RolloutState::Succeeded {
            // The rollout span says what failed in the databases' words, not only how many.
            let detail = failed_of(targets.values());
            let why = if detail.is_empty() {
                summary.clone()
            } else {
                format!("{summary}: {detail}")
            };
            crate::telemetry::record_failure(&tracing::Span::current(), &why);
        }
        self.finish(term, &mut rec, state, summary).await?;
        if succeeded + failed == 0 {
            return Ok(Ran::Nothing);
        }
        // The final records, as written: the fleet view needs their fingerprints only.
        let fingerprints = targets
            .into_values()
            .filter(|t| t.state == TargetState::Succeeded && !t.fingerprint.is_empty())
            .map(|t| (t.target_id, t.fingerprint))
            .collect();
        Ok(Ran::Migrated(Some(fingerprints)))
    }

    async fn finish(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
        state: RolloutState,
        message: String,
    ) -> Result<(), EngineError> {
        tracing::info!(rollout = %rec.id, state = state.as_str(), "{message}");
        if matches!(state, RolloutState::Halted | RolloutState::Failed) {
            crate::telemetry::record_failure(&tracing::Span::current(), &message);
        }
        rec.state = state;
        rec.message = message;
        self.put_rollout(term, rec).await?;
        metrics::counter!("flotilla_coordinator_rollouts_finished_total", "state" => state.as_str()).increment(1);
        Ok(())
    }

    /// Plan every selected target and write the target records, then mark the rollout
    /// planned; returns the records written. A crash before the last write re-plans from
    /// scratch (nothing ran yet).
    async fn plan_rollout(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
        graph: &Graph,
        goal: &Goal,
    ) -> Result<Vec<TargetRecord>, EngineError> {
        let mut snap = self
            .planning_snapshot(
                graph,
                &rec.spec.selector,
                goal,
                rec.spec.allow_downgrade,
                rec.spec.allow_foreign,
            )
            .await?;
        self.reread_unreadable(term, rec, &mut snap, rec.spec.agent_wait())
            .await?;
        if !snap.unreachable.is_empty() {
            let list = snap
                .unreachable
                .iter()
                .map(|(a, e)| format!("{a} ({e})"))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(rollout = %rec.id, "agents unreachable while planning, their targets are left out: {list}");
        }
        // The start checked the selection; targets can still vanish before planning. A
        // rollout of nothing fails instead of succeeding on zero targets.
        if snap.targets.is_empty() {
            rec.planned = true;
            let why = super::preflight::empty_selection(
                &rec.spec.selector,
                None,
                &snap.unreachable,
                "the rollout did nothing",
            );
            self.finish(term, rec, RolloutState::Failed, why.to_string())
                .await?;
            return Ok(Vec::new());
        }
        let mut runnable = Vec::new();
        let mut records = Vec::new();
        let mut memo = PlanMemo::new(
            graph,
            goal,
            rec.spec.allow_downgrade,
            rec.spec.allow_foreign,
        );
        for entry in &snap.targets {
            let dialect = entry.dialect().unwrap_or(Dialect::Sqlite);
            let mut t = TargetRecord {
                target_id: entry.status.target_id.clone(),
                agent_id: entry.agent.id().to_owned(),
                dialect,
                host: entry.status.host.clone(),
                wave: 0,
                state: TargetState::Pending,
                steps: vec![],
                steps_done: 0,
                current_revision: String::new(),
                retries: 0,
                message: String::new(),
                fingerprint: String::new(),
                // Only a target with steps to run sends it (below).
                planned_from: String::new(),
                waiting_for_agent: false,
            };
            let (outcome, digest) = memo.plan_keyed(&entry.status, entry.dialect());
            match outcome {
                TargetPlanOutcome::Blocked(why) => {
                    t.state = TargetState::Blocked;
                    t.message = why;
                    records.push(t);
                }
                TargetPlanOutcome::Steps(steps) if steps.is_empty() => {
                    t.state = TargetState::Skipped;
                    t.message = "already at the goal".into();
                    records.push(t);
                }
                TargetPlanOutcome::Steps(steps) => {
                    // The digest the memo planned it under: one hash per target.
                    t.planned_from = digest.unwrap_or_else(|| state_digest_of(&entry.status));
                    t.steps = steps
                        .iter()
                        .map(|s| crate::rollout::StepRecord {
                            revision: s.revision.clone(),
                            direction: s.direction,
                            checksum: s.checksum.clone(),
                            transactional: s.transactional,
                        })
                        .collect();
                    runnable.push((!entry.is_canary(), t));
                }
            }
        }
        // Canary-labelled targets first, then by id: deterministic waves.
        runnable.sort_by(|a, b| (a.0, &a.1.target_id).cmp(&(b.0, &b.1.target_id)));
        let mut runnable: Vec<TargetRecord> = runnable.into_iter().map(|(_, t)| t).collect();
        // Waves are consecutive runs of `runnable`: assigned by position, no record copied.
        let order: Vec<usize> = (0..runnable.len()).collect();
        let waves = assign_waves(&order, rec.spec.canary, &rec.spec.waves);
        for (i, wave) in waves.iter().enumerate() {
            for &at in wave {
                runnable[at].wave = i as u32;
            }
        }
        let runnable_count = runnable.len();
        records.extend(runnable);
        write_records(self, term, &rec.id, &records).await?;
        // Planning is where these targets end: they never run, so count them here.
        for state in [TargetState::Skipped, TargetState::Blocked] {
            let n = records.iter().filter(|t| t.state == state).count();
            crate::metrics::targets_finished(state, n);
        }
        rec.planned = true;
        rec.wave_count = waves.len() as u32;
        rec.current_wave = 0;
        rec.goal_revision = match goal {
            Goal::Head => graph.heads().join(","),
            other => other.to_string(),
        };
        if rec.state == RolloutState::Pending {
            rec.state = RolloutState::Running;
        }
        rec.message = format!(
            "{} targets to migrate in {} waves, {} already at the goal, {} blocked",
            runnable_count,
            waves.len(),
            records
                .iter()
                .filter(|t| t.state == TargetState::Skipped)
                .count(),
            records
                .iter()
                .filter(|t| t.state == TargetState::Blocked)
                .count()
        );
        self.put_rollout(term, rec).await?;
        Ok(records)
    }

    /// Run the pending targets of one wave: one task per target, each waiting for a permit
    /// of its database host and then a global one (so a saturated host does not hold up
    /// others), then for the rollout not to be paused; none starts after an abort or once
    /// the failure budget (or, in the canary wave, any failure) stops the rollout.
    #[allow(clippy::too_many_arguments)]
    async fn run_wave(
        self: &Arc<Self>,
        term: &Term,
        rec: &mut RolloutRecord,
        graph: &Arc<Graph>,
        goal: &Goal,
        wave: u32,
        targets: &mut BTreeMap<String, TargetRecord>,
        control: &mut watch::Receiver<Control>,
        allowed: usize,
        writer: &Arc<TargetWriter>,
    ) -> Result<WaveEnd, EngineError> {
        let global = Arc::new(Semaphore::new(rec.spec.max_parallel.max(1) as usize));
        let mut hosts: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let already_failed = targets
            .values()
            .filter(|t| t.state == TargetState::Failed)
            .count();
        let limits = Arc::new(Limits {
            failed: AtomicUsize::new(already_failed),
            allowed: if wave == 0 && rec.spec.canary > 0 {
                0
            } else {
                allowed
            },
        });
        // One copy of the record and the goal for every target's task, not one each.
        let snapshot = Arc::new(rec.clone());
        let goal = Arc::new(goal.clone());
        // A pause may have arrived before this wave subscribed to changes.
        self.sync_paused(term, rec, control).await?;
        let mut running = FuturesUnordered::new();
        let control_rx = control.clone();
        let spawn = |t: TargetRecord,
                     admitted: Option<OwnedSemaphorePermit>,
                     host: Option<Arc<Semaphore>>| {
            let engine = self.clone();
            let (term, rollout, goal) = (term.clone(), snapshot.clone(), goal.clone());
            let graph = graph.clone();
            let (global, control, limits) = (global.clone(), control_rx.clone(), limits.clone());
            let writer = writer.clone();
            // The wave's span is the target span's parent, given explicitly: the task is not
            // instrumented with it, so a poll enters one span, not two.
            let wave_span = tracing::Span::current();
            self.tasks.spawn(async move {
                let _host = match host {
                    Some(h) => Some(
                        h.acquire_owned()
                            .await
                            .map_err(|_| EngineError::Fenced(term.token))?,
                    ),
                    None => None,
                };
                let _global = match admitted {
                    Some(p) => p,
                    None => global
                        .acquire_owned()
                        .await
                        .map_err(|_| EngineError::Fenced(term.token))?,
                };
                let target_control = control.clone();
                if !wait_runnable(control).await || limits.exceeded() || term.cancel.is_cancelled()
                {
                    return Ok(t);
                }
                // Boxed: the task holds a pointer, not the space of the whole target
                // run's state machine.
                let t = Box::pin(engine.run_target(
                    &wave_span,
                    &term,
                    &rollout,
                    &graph,
                    &goal,
                    t,
                    &writer,
                    target_control,
                ))
                .await?;
                if t.state == TargetState::Failed {
                    limits.failed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(t)
            })
        };
        // The wave's targets in id order. Without a per-host limit a target's task is
        // spawned once it has its global permit, so a wave of 100,000 targets holds
        // `max_parallel` tasks, not one waiting task (and record copy) per target. With one,
        // every task is spawned at once and waits for its host's permit and then a global
        // one, so a saturated host does not hold up the others.
        let mut queue: VecDeque<String> = targets
            .values()
            .filter(|t| {
                t.wave == wave && matches!(t.state, TargetState::Pending | TargetState::Running)
            })
            .map(|t| t.target_id.clone())
            .collect();
        if rec.spec.max_parallel_per_host > 0 {
            for id in queue.drain(..) {
                let Some(t) = targets.get(&id) else { continue };
                let host = hosts
                    .entry(t.host.clone())
                    .or_insert_with(|| {
                        Arc::new(Semaphore::new(rec.spec.max_parallel_per_host as usize))
                    })
                    .clone();
                running.push(spawn(t.clone(), None, Some(host)));
            }
        }
        loop {
            if running.is_empty() && queue.is_empty() {
                break;
            }
            let admit = async {
                if queue.is_empty() {
                    std::future::pending().await
                } else {
                    global.clone().acquire_owned().await
                }
            };
            tokio::select! {
                _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                permit = admit => {
                    let permit = permit.map_err(|_| EngineError::Fenced(term.token))?;
                    if let Some(t) = queue.pop_front().and_then(|id| targets.get(&id)) {
                        running.push(spawn(t.clone(), Some(permit), None));
                    }
                }
                done = running.next(), if !running.is_empty() => match done {
                    Some(Ok(Ok(t))) => { targets.insert(t.target_id.clone(), t); }
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(join)) => return Err(EngineError::TargetTask(join)),
                    None => {}
                },
                changed = control.changed() => {
                    if changed.is_err() {
                        return Err(EngineError::Fenced(term.token));
                    }
                    self.sync_paused(term, rec, control).await?;
                }
            }
        }
        // What the budget, the gate and a new leader read from here on is durable.
        writer.flush().await?;
        let failed = failed_of(targets.values().filter(|t| t.wave == wave));
        if !failed.is_empty() {
            crate::telemetry::record_failure(&tracing::Span::current(), &failed);
        }
        if *control.borrow() == Control::Abort {
            return Ok(WaveEnd::Aborted);
        }
        Ok(WaveEnd::Completed)
    }

    /// Persist Paused/Running to match the requested control.
    pub(super) async fn sync_paused(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
        control: &mut watch::Receiver<Control>,
    ) -> Result<(), EngineError> {
        let paused = *control.borrow_and_update() == Control::Pause;
        if paused != (rec.state == RolloutState::Paused) {
            rec.state = if paused {
                RolloutState::Paused
            } else {
                RolloutState::Running
            };
            rec.message = if paused {
                "paused: running targets finish, no new target starts".into()
            } else {
                "resumed".into()
            };
            self.put_rollout(term, rec).await?;
            super::report::refresh_rollouts(self).await;
        }
        Ok(())
    }
}
