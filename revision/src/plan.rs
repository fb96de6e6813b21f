//! The planner: a target's applied history + a goal → the ordered steps, or why the target is
//! blocked. Pure: no I/O.
//!
//! A goal names a state: the ancestors (inclusive) of a revision, of the single head, or
//! nothing (`base`). Downgrade steps come first (applied revisions outside the goal state, in
//! reverse topological order), then upgrade steps (revisions of the goal state not yet
//! applied, in topological order). Relative goals take the first N steps of the upgrade
//! towards the single head (`+N`) or of the downgrade to base (`-N`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use flotilla_core::{Dialect, Direction};

use super::graph::Graph;
use super::parse::check_revision_id;

/// Where a plan should take a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Goal {
    /// The single head (blocked when the graph has several).
    Head,
    /// Every head at once (the union of their ancestors).
    Heads,
    /// Nothing applied: downgrade everything.
    Base,
    /// Exactly the ancestors of this revision, itself included.
    Revision(String),
    /// `+N`: N steps up towards the single head; `-N`: N steps down from the current state.
    Relative(i32),
}

/// A goal string that is none of `head`, `heads`, `base`, `+N`, `-N` or a revision id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid goal {}: expected head, heads, base, +N, -N or a revision id",
    flotilla_core::text::quoted(.0)
)]
pub struct InvalidGoal(pub String);

impl FromStr for Goal {
    type Err = InvalidGoal;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "head" => return Ok(Goal::Head),
            "heads" => return Ok(Goal::Heads),
            "base" => return Ok(Goal::Base),
            _ => {}
        }
        if let Some(n) = s.strip_prefix('+').or_else(|| s.strip_prefix('-'))
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            let n: i32 = n.parse().map_err(|_| InvalidGoal(s.to_owned()))?;
            return Ok(Goal::Relative(if s.starts_with('-') { -n } else { n }));
        }
        check_revision_id(s)
            .map(|()| Goal::Revision(s.to_owned()))
            .map_err(|_| InvalidGoal(s.to_owned()))
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::Head => f.write_str("head"),
            Goal::Heads => f.write_str("heads"),
            Goal::Base => f.write_str("base"),
            Goal::Revision(id) => f.write_str(id),
            Goal::Relative(n) => write!(f, "{n:+}"),
        }
    }
}

/// One revision a target has applied, with the checksum it recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedRevision {
    pub revision: String,
    pub checksum: String,
}

/// What the planner needs to know about a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetHistory {
    /// The applied set, in application order.
    pub applied: Vec<AppliedRevision>,
    /// The revision of an unresolved dirty (half-applied, non-transactional) step.
    pub dirty: Option<String>,
}

/// One step to run on a target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedStep {
    pub revision: String,
    pub direction: Direction,
    pub sql: String,
    /// `checksum(sql)`, or for an up step with check/verify sections `step_checksum` over the
    /// three texts: the agent recomputes it and refuses a mismatch.
    pub checksum: String,
    pub transactional: bool,
}

/// The steps that take a target to its goal.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub steps: Vec<PlannedStep>,
    /// Heads of the applied set once every step has run (sorted by id; empty = base).
    pub goal_heads: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Why a target must not be touched. Nothing runs on a blocked target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error(
        "target has revision {revision:?} applied, which the migration set does not contain: restore its file or repair the target"
    )]
    UnknownRevision { revision: String },
    #[error(
        "revision {revision:?} was applied with checksum {found} but its file now has {expected}: revert the edit and write a new revision instead"
    )]
    ChecksumMismatch {
        revision: String,
        expected: String,
        found: String,
    },
    #[error(
        "revision {revision:?} is dirty (a non-transactional step did not finish): inspect the target, then repair it"
    )]
    Dirty { revision: String },
    #[error(
        "target has revision {revision:?} applied but not its parent {parent:?}: repair or stamp the target"
    )]
    MissingParent { revision: String, parent: String },
    #[error("several heads ({}): name a revision as the goal, or merge them", .heads.join(", "))]
    SeveralHeads { heads: Vec<String> },
    #[error("revision {revision:?} has no down section for {dialect}: it cannot be downgraded")]
    Irreversible { revision: String, dialect: Dialect },
    #[error("unknown goal revision {}", flotilla_core::text::quoted(goal))]
    UnknownGoal { goal: String },
    #[error(
        "goal {goal}: only {available} of the {requested} steps asked for are possible from the applied revisions"
    )]
    RelativeOutOfRange {
        goal: String,
        requested: u32,
        available: usize,
    },
}

impl Blocked {
    /// A stable machine-readable reason (for status APIs and JSON output).
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::UnknownRevision { .. } => "unknown_revision",
            Blocked::ChecksumMismatch { .. } => "checksum_mismatch",
            Blocked::Dirty { .. } => "dirty",
            Blocked::MissingParent { .. } => "missing_parent",
            Blocked::SeveralHeads { .. } => "several_heads",
            Blocked::Irreversible { .. } => "irreversible",
            Blocked::UnknownGoal { .. } => "unknown_goal",
            Blocked::RelativeOutOfRange { .. } => "relative_out_of_range",
        }
    }
}

/// Plans the steps that take a target with `history` to `goal` on `dialect`.
pub fn plan(
    graph: &Graph,
    history: &TargetHistory,
    goal: &Goal,
    dialect: Dialect,
) -> Result<Plan, Blocked> {
    if let Some(revision) = &history.dirty {
        return Err(Blocked::Dirty {
            revision: revision.clone(),
        });
    }
    let mut applied: BTreeSet<&str> = BTreeSet::new();
    for a in &history.applied {
        let Some(r) = graph.get(&a.revision) else {
            return Err(Blocked::UnknownRevision {
                revision: a.revision.clone(),
            });
        };
        let expected = r.up_checksum_ref(dialect);
        if expected != a.checksum {
            return Err(Blocked::ChecksumMismatch {
                revision: a.revision.clone(),
                expected: expected.to_owned(),
                found: a.checksum.clone(),
            });
        }
        applied.insert(r.id.as_str());
    }
    for r in graph.revisions() {
        if applied.contains(r.id.as_str())
            && let Some(p) = r.parents.iter().find(|p| !applied.contains(p.as_str()))
        {
            return Err(Blocked::MissingParent {
                revision: r.id.clone(),
                parent: p.clone(),
            });
        }
    }

    let single_head = || match graph.heads().as_slice() {
        [] => Ok(None),
        [h] => Ok(Some((*h).to_owned())),
        hs => Err(Blocked::SeveralHeads {
            heads: hs.iter().map(|h| (*h).to_owned()).collect(),
        }),
    };
    let state_of = |head: Option<String>| head.map_or_else(BTreeSet::new, |h| graph.ancestors(&h));
    let (goal_state, limit): (BTreeSet<String>, Option<(Direction, u32)>) = match goal {
        Goal::Head => (state_of(single_head()?), None),
        Goal::Heads => (
            graph
                .heads()
                .iter()
                .flat_map(|h| graph.ancestors(h))
                .collect(),
            None,
        ),
        Goal::Base => (BTreeSet::new(), None),
        Goal::Revision(id) => {
            if !graph.contains(id) {
                return Err(Blocked::UnknownGoal { goal: id.clone() });
            }
            (graph.ancestors(id), None)
        }
        Goal::Relative(n) if *n >= 0 => (
            state_of(single_head()?),
            Some((Direction::Up, n.unsigned_abs())),
        ),
        Goal::Relative(n) => (BTreeSet::new(), Some((Direction::Down, n.unsigned_abs()))),
    };

    // Downgrades first, children before parents; then upgrades, parents before children.
    let mut moves: Vec<(&super::Revision, Direction)> = graph
        .revisions()
        .rev()
        .filter(|r| applied.contains(r.id.as_str()) && !goal_state.contains(&r.id))
        .map(|r| (r, Direction::Down))
        .collect();
    moves.extend(
        graph
            .revisions()
            .filter(|r| goal_state.contains(&r.id) && !applied.contains(r.id.as_str()))
            .map(|r| (r, Direction::Up)),
    );
    if let Some((_, n)) = limit {
        let wanted = usize::try_from(n).unwrap_or(usize::MAX);
        if wanted > moves.len() {
            return Err(Blocked::RelativeOutOfRange {
                goal: goal.to_string(),
                requested: n,
                available: moves.len(),
            });
        }
        moves.truncate(wanted);
    }

    let mut steps = Vec::with_capacity(moves.len());
    let mut state: BTreeSet<&str> = applied;
    for (r, direction) in moves {
        let (sql, checksum) = match direction {
            Direction::Up => {
                state.insert(r.id.as_str());
                (r.up_sql(dialect), r.up_checksum_ref(dialect))
            }
            Direction::Down => {
                state.remove(r.id.as_str());
                let irreversible = || Blocked::Irreversible {
                    revision: r.id.clone(),
                    dialect,
                };
                (
                    r.down_sql(dialect).ok_or_else(irreversible)?,
                    r.down_checksum_ref(dialect).ok_or_else(irreversible)?,
                )
            }
        };
        steps.push(PlannedStep {
            revision: r.id.clone(),
            direction,
            sql: sql.to_owned(),
            checksum: checksum.to_owned(),
            transactional: r.transactional,
        });
    }
    let goal_heads = heads_of(graph, &state);
    Ok(Plan { steps, goal_heads })
}

/// Members of `set` that no other member revises, sorted by id.
pub fn heads_of(graph: &Graph, set: &BTreeSet<&str>) -> Vec<String> {
    set.iter()
        .filter(|id| !graph.children(id).iter().any(|c| set.contains(c)))
        .map(|id| (*id).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_parsing() {
        let g = |s: &str| s.parse::<Goal>();
        assert_eq!(g("head"), Ok(Goal::Head));
        assert_eq!(g("heads"), Ok(Goal::Heads));
        assert_eq!(g("base"), Ok(Goal::Base));
        assert_eq!(g("+2"), Ok(Goal::Relative(2)));
        assert_eq!(g("-1"), Ok(Goal::Relative(-1)));
        assert_eq!(g("0003_x"), Ok(Goal::Revision("0003_x".into())));
        assert_eq!(g("-1a"), Ok(Goal::Revision("-1a".into())));
        assert!(g("a b").is_err());
        assert!(g("+99999999999").is_err());
        assert_eq!(Goal::Relative(3).to_string(), "+3");
        assert_eq!(Goal::Relative(-3).to_string(), "-3");
    }
}
