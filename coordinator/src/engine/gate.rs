//! The wave gate's explanation: when succeeded targets' fingerprints differ from the
//! canary's, the rollout stops with the schema diff (the same comparison as `validate`)
//! of each such target against the target that set the reference.

use std::collections::BTreeMap;

use crate::rollout::{RolloutRecord, TargetRecord, TargetState};

use super::Engine;
use super::validate::explain;

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
