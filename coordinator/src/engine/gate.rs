//! The wave gate: after a wave every succeeded target's schema fingerprint must equal the
//! canary's; when some differ, the rollout stops with the schema diff (the same comparison
//! as `validate`) of each such target against the target that set the reference.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_proto as pb;

use crate::rollout::{RolloutRecord, TargetRecord, TargetState};

use super::batch::TargetWriter;
use super::run::summary::short;
use super::validate::explain;
use super::{Engine, EngineError, Term};

/// At most this many targets are diffed in the message; the rest are named.
const EXPLAINED: usize = 3;

impl Engine {
    /// The message of a rollout the gate stops after `wave` because `mismatched` differ.
    pub(super) async fn gate_message(
        &self,
        rec: &RolloutRecord,
        targets: &BTreeMap<String, TargetRecord>,
        wave: u32,
        mismatched: &[String],
    ) -> String {
        // The reference of each dialect: the earliest succeeded target with its fingerprint
        // (the canary, or the first target of a dialect the canary lacked).
        let mut ordered: Vec<&TargetRecord> = targets
            .values()
            .filter(|t| t.state == TargetState::Succeeded && !t.fingerprint.is_empty())
            .collect();
        ordered.sort_by(|a, b| (a.wave, &a.target_id).cmp(&(b.wave, &b.target_id)));
        let reference_of = |t: &TargetRecord| {
            let fp = rec.canary_fingerprint.get(t.dialect.as_str())?;
            ordered
                .iter()
                .find(|r| r.dialect == t.dialect && &r.fingerprint == fp)
                .copied()
        };
        let mut pairs = Vec::new();
        let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in mismatched.iter().take(EXPLAINED) {
            let Some(t) = targets.get(id) else { continue };
            let Some(r) = reference_of(t) else { continue };
            for x in [t, r] {
                let ids = by_agent.entry(x.agent_id.clone()).or_default();
                if !ids.contains(&x.target_id) {
                    ids.push(x.target_id.clone());
                }
            }
            pairs.push((t.target_id.clone(), r.target_id.clone()));
        }
        let catalogs = self.catalogs_of(&by_agent).await;
        let mut parts: Vec<String> = pairs
            .iter()
            .map(|(t, r)| match explain(&catalogs, r, t) {
                Ok(changes) => format!(
                    "{t} differs from {r}: {}",
                    changes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Err(e) => format!("{t} differs from {r} ({e})"),
            })
            .collect();
        let rest: Vec<&str> = mismatched
            .iter()
            .filter(|id| !pairs.iter().any(|(t, _)| t == *id))
            .map(String::as_str)
            .collect();
        if !rest.is_empty() {
            parts.push(format!("also {}", rest.join(", ")));
        }
        format!(
            "fingerprint gate after wave {wave}: {} of the wave's targets differ from the canary's schema: {}; \
             the rollout stopped: fix the schemas (see `flotilla validate`), then start again",
            mismatched.len(),
            parts.join("; ")
        )
    }
}

impl Engine {
    /// After a wave: every succeeded target's schema fingerprint must equal the canary's
    /// (per dialect: the first succeeded target of a dialect sets its reference).
    pub(super) async fn gate(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
        wave: u32,
        targets: &mut BTreeMap<String, TargetRecord>,
        writer: &Arc<TargetWriter>,
    ) -> Result<Option<String>, EngineError> {
        let ids: Vec<String> = targets
            .values()
            .filter(|t| {
                t.wave == wave && t.state == TargetState::Succeeded && t.fingerprint.is_empty()
            })
            .map(|t| t.target_id.clone())
            .collect();
        // Targets whose Migrate reported no fingerprint (an older agent, a resumed target)
        // are fingerprinted now; the rest came with `MigrateFinished`.
        let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in &ids {
            if let Some(t) = targets.get(id) {
                by_agent
                    .entry(t.agent_id.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        let agents = if by_agent.is_empty() {
            Vec::new()
        } else {
            self.agents().await?
        };
        for (agent_id, ids) in by_agent {
            let Some(agent) = agents.iter().find(|a| a.id() == agent_id) else {
                continue;
            };
            let resp = agent
                .validate(pb::ValidateRequest {
                    project: self.wire_project(),
                    target_ids: ids,
                    expected: vec![],
                    skip_fingerprint: false,
                    include_catalog: false,
                })
                .await
                .map_err(|source| EngineError::Gate {
                    agent_id: agent_id.clone(),
                    source: Box::new(source),
                })?;
            for v in resp.targets {
                if let Some(t) = targets.get_mut(&v.target_id) {
                    t.fingerprint = v.fingerprint.clone();
                }
            }
        }
        let mut mismatched = Vec::new();
        let mut ordered: Vec<&mut TargetRecord> = targets
            .values_mut()
            .filter(|t| t.wave == wave && t.state == TargetState::Succeeded)
            .collect();
        ordered.sort_by(|a, b| a.target_id.cmp(&b.target_id));
        for t in ordered {
            let reference = rec
                .canary_fingerprint
                .entry(t.dialect.as_str().to_owned())
                .or_insert_with(|| t.fingerprint.clone())
                .clone();
            if t.fingerprint != reference {
                t.message = format!(
                    "schema fingerprint {} differs from the canary's {}",
                    short(&t.fingerprint),
                    short(&reference)
                );
                mismatched.push(t.target_id.clone());
            }
            writer.stage(t)?;
        }
        writer.flush().await?;
        self.put_rollout(term, rec).await?;
        if mismatched.is_empty() {
            Ok(None)
        } else {
            Ok(Some(
                self.gate_message(rec, targets, wave, &mismatched).await,
            ))
        }
    }
}
