//! Fleet validation: history checks and schema fingerprints from the agents (one `Validate`
//! per agent and dialect), fingerprint groups, and schema drift with a readable diff (the
//! drifted targets' and their references' catalogs, fetched in a second, smaller round).
//! `validate`, `status` (with `include_schema`), the drift metric and the wave gate's
//! explanation all come from here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use flotilla_core::Dialect;
use flotilla_core::catalog::Catalog;
use flotilla_proto as pb;

use crate::drift::{self, Difference, Observed};
use crate::fleet::AgentClient;
use flotilla_revision::Graph;

use super::{Engine, FleetEntry};
use flotilla_rpc::convert::CatalogProto;

/// What `validate` reports for a set of targets.
#[derive(Debug, Default)]
pub struct FleetValidation {
    pub targets: Vec<pb::TargetValidation>,
    pub groups: Vec<pb::FingerprintGroup>,
    pub schema_drift: Vec<pb::SchemaDrift>,
}

impl FleetValidation {
    /// Targets that drift: history (a revision the graph lacks, a checksum that differs) or
    /// schema (fingerprint differs from the reference). Dirty steps are not drift.
    pub fn drifted_targets(&self) -> BTreeSet<String> {
        let history = self.targets.iter().filter(|t| {
            t.issues.iter().any(|i| {
                matches!(
                    pb::IssueKind::try_from(i.kind),
                    Ok(pb::IssueKind::ChecksumMismatch | pb::IssueKind::UnknownRevision)
                )
            })
        });
        history
            .map(|t| t.target_id.clone())
            .chain(self.schema_drift.iter().map(|d| d.target_id.clone()))
            .collect()
    }
}

/// The one-line form of a schema drift (status DRIFT column, gate message).
pub fn drift_line(d: &pb::SchemaDrift) -> String {
    let what = if !d.error.is_empty() {
        d.error.clone()
    } else {
        d.changes
            .iter()
            .map(|c| c.description.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("schema differs from {}'s: {what}", d.reference_target_id)
}

/// The proto form of a catalog difference.
pub fn change_proto(d: &Difference) -> pb::SchemaChange {
    pb::SchemaChange {
        table: d.table.clone(),
        object: d.object.as_str().into(),
        name: d.name.clone(),
        change: d.change.as_str().into(),
        description: d.to_string(),
    }
}

/// The applied revisions no other applied revision descends from ("base" = none).
pub fn heads_of(applied: &[String], graph: &Graph) -> String {
    let mut heads: Vec<&str> = applied
        .iter()
        .filter(|r| {
            !applied
                .iter()
                .any(|o| o != *r && graph.ancestors(o).contains(r.as_str()))
        })
        .map(String::as_str)
        .collect();
    heads.sort();
    if heads.is_empty() {
        "base".into()
    } else {
        heads.join(",")
    }
}

type Catalogs = HashMap<String, Result<(String, Catalog), String>>;
/// An agent and the target ids to ask it about.
type AgentTargets = (Arc<dyn AgentClient>, Vec<String>);

impl Engine {
    /// Validate `entries` against the graph: per target its history issues and fingerprint,
    /// the (revision, fingerprint) groups and the schema drift, each with its diff.
    pub async fn validate_fleet(&self, graph: &Graph, entries: &[FleetEntry]) -> FleetValidation {
        // One Validate per (agent, dialect): the expected checksums depend on the dialect.
        let mut calls: BTreeMap<(String, Dialect), AgentTargets> = BTreeMap::new();
        let mut known: HashMap<&str, (Dialect, bool)> = HashMap::new();
        for e in entries {
            let Some(d) = e.dialect() else { continue };
            known.insert(&e.status.target_id, (d, e.is_canary()));
            calls
                .entry((e.agent.id().to_owned(), d))
                .or_insert_with(|| (e.agent.clone(), vec![]))
                .1
                .push(e.status.target_id.clone());
        }
        let mut out = FleetValidation::default();
        let results = futures::future::join_all(calls.into_iter().map(
            |((agent_id, dialect), (agent, ids))| async move {
                let expected = graph
                    .expected(dialect)
                    .into_iter()
                    .map(|(revision, checksum)| pb::ExpectedRevision { revision, checksum })
                    .collect();
                let res = agent
                    .validate(pb::ValidateRequest {
                        project: self.wire_project(),
                        target_ids: ids.clone(),
                        expected,
                        skip_fingerprint: false,
                        include_catalog: false,
                    })
                    .await;
                (agent_id, ids, res)
            },
        ))
        .await;
        for (agent_id, ids, res) in results {
            match res {
                Ok(resp) => out.targets.extend(resp.targets),
                Err(e) => out
                    .targets
                    .extend(ids.into_iter().map(|id| pb::TargetValidation {
                        target_id: id,
                        error: format!("agent {agent_id}: {}", e.message()),
                        ..Default::default()
                    })),
            }
        }
        out.targets.sort_by(|a, b| a.target_id.cmp(&b.target_id));

        let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for t in &out.targets {
            groups
                .entry((heads_of(&t.applied, graph), t.fingerprint.clone()))
                .or_default()
                .push(t.target_id.clone());
        }
        out.groups = groups
            .into_iter()
            .map(|((heads, fingerprint), target_ids)| pb::FingerprintGroup {
                heads,
                fingerprint,
                target_ids,
            })
            .collect();

        let observed: Vec<Observed> = out
            .targets
            .iter()
            .filter(|t| t.error.is_empty())
            .filter_map(|t| {
                let (dialect, canary) = known.get(t.target_id.as_str())?;
                Some(Observed {
                    target: t.target_id.clone(),
                    dialect: dialect.as_str().to_owned(),
                    applied: t.applied.clone(),
                    fingerprint: t.fingerprint.clone(),
                    canary: *canary,
                })
            })
            .collect();
        let drifted = drift::drifted(&observed);
        if drifted.is_empty() {
            return out;
        }
        let wanted: BTreeSet<&str> = drifted
            .iter()
            .flat_map(|d| [d.target.as_str(), d.reference_target.as_str()])
            .collect();
        let mut by_agent: BTreeMap<String, AgentTargets> = BTreeMap::new();
        for e in entries
            .iter()
            .filter(|e| wanted.contains(e.status.target_id.as_str()))
        {
            by_agent
                .entry(e.agent.id().to_owned())
                .or_insert_with(|| (e.agent.clone(), vec![]))
                .1
                .push(e.status.target_id.clone());
        }
        let catalogs = catalogs(by_agent.into_values().collect()).await;
        let applied: HashMap<&str, &[String]> = out
            .targets
            .iter()
            .map(|t| (t.target_id.as_str(), t.applied.as_slice()))
            .collect();
        for d in drifted {
            let (dialect, _) = known
                .get(d.target.as_str())
                .copied()
                .unwrap_or((Dialect::Sqlite, false));
            let mut sd = pb::SchemaDrift {
                target_id: d.target.clone(),
                dialect: dialect.as_str().into(),
                heads: heads_of(
                    applied.get(d.target.as_str()).copied().unwrap_or(&[]),
                    graph,
                ),
                fingerprint: d.fingerprint.clone(),
                reference_target_id: d.reference_target.clone(),
                reference_fingerprint: d.reference_fingerprint.clone(),
                ..Default::default()
            };
            match explain(&catalogs, &d.reference_target, &d.target) {
                Ok(changes) => sd.changes = changes.iter().map(change_proto).collect(),
                Err(e) => sd.error = e,
            }
            out.schema_drift.push(sd);
        }
        out
    }

    /// The normalized catalogs of `ids` (with the fingerprint read with each), from the
    /// agents that serve them, by the agent ids of the rollout's target records.
    pub(crate) async fn catalogs_of(&self, ids: &BTreeMap<String, Vec<String>>) -> Catalogs {
        let agents = match self.agents().await {
            Ok(a) => a,
            Err(e) => {
                return ids
                    .values()
                    .flatten()
                    .map(|id| (id.clone(), Err(format!("agents: {e}"))))
                    .collect();
            }
        };
        let mut calls = Vec::new();
        let mut out = Catalogs::new();
        for (agent_id, targets) in ids {
            match agents.iter().find(|a| a.id() == agent_id) {
                Some(a) => calls.push((a.clone(), targets.clone())),
                None => out.extend(targets.iter().map(|id| {
                    (
                        id.clone(),
                        Err(format!("agent {agent_id} is not registered")),
                    )
                })),
            }
        }
        out.extend(catalogs(calls).await);
        out
    }
}

/// Ask each agent for the normalized catalogs of its targets.
async fn catalogs(calls: Vec<AgentTargets>) -> Catalogs {
    let results = futures::future::join_all(calls.into_iter().map(|(agent, ids)| async move {
        let res = agent
            .validate(pb::ValidateRequest {
                // The catalog is the database's, whichever project asks.
                project: String::new(),
                target_ids: ids.clone(),
                expected: vec![],
                skip_fingerprint: false,
                include_catalog: true,
            })
            .await;
        (agent, ids, res)
    }))
    .await;
    let mut out = Catalogs::new();
    for (agent, ids, res) in results {
        match res {
            Ok(resp) => {
                for t in resp.targets {
                    let v = match (&t.catalog, t.error.is_empty()) {
                        (_, false) => Err(t.error.clone()),
                        (Some(c), true) => Ok((t.fingerprint.clone(), Catalog::from_proto(c))),
                        (None, true) => Err(format!(
                            "agent {} did not return a catalog (upgrade it for schema diffs)",
                            agent.id()
                        )),
                    };
                    out.insert(t.target_id, v);
                }
            }
            Err(e) => out.extend(
                ids.into_iter()
                    .map(|id| (id, Err(format!("agent {}: {}", agent.id(), e.message())))),
            ),
        }
    }
    out
}

/// The differences of `target`'s catalog from `reference`'s, or why there are none to show.
pub(crate) fn explain(
    catalogs: &Catalogs,
    reference: &str,
    target: &str,
) -> Result<Vec<Difference>, String> {
    let get = |id: &str| match catalogs.get(id) {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(format!("cannot read the catalog of {id}: {e}")),
        None => Err(format!("no catalog for {id}")),
    };
    let ((ref_fp, ref_cat), (fp, cat)) = (get(reference)?, get(target)?);
    let changes = drift::diff(ref_cat, cat);
    if changes.is_empty() {
        return Err(if ref_fp == fp {
            "the schemas changed while they were compared and are now equal; validate again".into()
        } else {
            "the fingerprints differ but the catalogs compare equal".into()
        });
    }
    Ok(changes)
}
