//! Property tests of the planner over random valid DAGs and random applied sets closed under
//! ancestors: upgrades respect every parent edge, downgrades are their reverse, and going to a
//! goal and back restores the applied set.

use std::collections::BTreeSet;
use std::path::PathBuf;

use flotilla_core::{Dialect, Direction};
use flotilla_revision::{AppliedRevision, Goal, Graph, Plan, TargetHistory, plan};
use proptest::prelude::*;

/// A random DAG: node `i` may revise any nodes `< i`. Ids are shuffled names so that the
/// id order (the topological tie-break) differs from the creation order.
#[derive(Debug, Clone)]
struct Dag {
    ids: Vec<String>,
    parents: Vec<Vec<usize>>,
}

fn dag() -> impl Strategy<Value = Dag> {
    (1usize..14)
        .prop_flat_map(|n| {
            let parents = (0..n)
                .map(|i| {
                    if i == 0 {
                        Just(Vec::new()).boxed()
                    } else {
                        proptest::collection::btree_set(0..i, 0..=3.min(i))
                            .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                            .boxed()
                    }
                })
                .collect::<Vec<_>>();
            let names = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (parents, names)
        })
        .prop_map(|(parents, names)| Dag {
            ids: names.iter().map(|k| format!("r{k:02}")).collect(),
            parents,
        })
}

impl Dag {
    fn graph(&self) -> Graph {
        let files = self
            .ids
            .iter()
            .zip(&self.parents)
            .map(|(id, ps)| {
                let revises: Vec<&str> = ps.iter().map(|&p| self.ids[p].as_str()).collect();
                let text = format!(
                    "-- revision: {id}\n-- revises: {}\n-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n",
                    revises.join(", ")
                );
                (PathBuf::from(format!("{id}.sql")), text.into_bytes())
            })
            .collect();
        match Graph::from_sources(files) {
            Ok(g) => g,
            Err(e) => panic!("generated graph must be valid: {e}"),
        }
    }
}

fn history(g: &Graph, applied: &BTreeSet<String>) -> TargetHistory {
    TargetHistory {
        applied: g
            .revisions()
            .filter(|r| applied.contains(&r.id))
            .map(|r| AppliedRevision {
                revision: r.id.clone(),
                checksum: r.up_checksum(Dialect::Sqlite),
            })
            .collect(),
        dirty: None,
    }
}

/// Runs a plan on an applied set.
fn apply(start: &BTreeSet<String>, p: &Plan) -> BTreeSet<String> {
    let mut s = start.clone();
    for step in &p.steps {
        match step.direction {
            Direction::Up => assert!(s.insert(step.revision.clone()), "applied twice"),
            Direction::Down => assert!(s.remove(&step.revision), "removed twice"),
        }
    }
    s
}

/// The applied set must be closed under ancestors after every step, and every up step's
/// parents must be applied before it (every down step's children removed before it).
fn assert_respects_edges(g: &Graph, start: &BTreeSet<String>, p: &Plan) {
    let mut s = start.clone();
    for step in &p.steps {
        let r = g.get(&step.revision).expect("planned revision exists");
        match step.direction {
            Direction::Up => {
                for parent in &r.parents {
                    assert!(s.contains(parent), "{} before its parent {parent}", r.id);
                }
                s.insert(r.id.clone());
            }
            Direction::Down => {
                for child in g.children(&r.id) {
                    assert!(
                        !s.contains(child),
                        "{} removed before its child {child}",
                        r.id
                    );
                }
                s.remove(&r.id);
            }
        }
    }
}

fn closure(g: &Graph, picks: &[usize]) -> BTreeSet<String> {
    let ids: Vec<&str> = g.revisions().map(|r| r.id.as_str()).collect();
    picks
        .iter()
        .flat_map(|&k| g.ancestors(ids[k % ids.len()]))
        .collect()
}

proptest! {
    #[test]
    fn upgrade_respects_edges_and_downgrade_reverses_it(
        dag in dag(),
        picks in proptest::collection::vec(0usize..64, 0..4),
        goal_pick in 0usize..64,
    ) {
        let g = dag.graph();
        let ids: Vec<String> = g.revisions().map(|r| r.id.clone()).collect();
        // Topological order really is one.
        for (i, r) in g.revisions().enumerate() {
            for p in &r.parents {
                prop_assert!(g.position(p).is_some_and(|pi| pi < i));
            }
        }
        let start = closure(&g, &picks);

        // Everything up, from any ancestor-closed start.
        let up = plan(&g, &history(&g, &start), &Goal::Heads, Dialect::Sqlite).expect("heads");
        prop_assert!(up.steps.iter().all(|s| s.direction == Direction::Up));
        assert_respects_edges(&g, &start, &up);
        let all: BTreeSet<String> = ids.iter().cloned().collect();
        prop_assert_eq!(apply(&start, &up), all.clone());

        // Everything down: the reverse order of the applied set's topological order.
        let down = plan(&g, &history(&g, &all), &Goal::Base, Dialect::Sqlite).expect("base");
        assert_respects_edges(&g, &all, &down);
        let down_ids: Vec<&str> = down.steps.iter().map(|s| s.revision.as_str()).collect();
        let rev_topo: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
        prop_assert_eq!(down_ids, rev_topo);

        // Upgrade from `start` to a goal, then back: the reverse plan, and the identity.
        let goal = &ids[goal_pick % ids.len()];
        let start = g.ancestors(&ids[picks.first().copied().unwrap_or(0) % ids.len()]);
        let there = plan(&g, &history(&g, &start), &Goal::Revision(goal.clone()), Dialect::Sqlite)
            .expect("to goal");
        assert_respects_edges(&g, &start, &there);
        let reached = apply(&start, &there);
        prop_assert_eq!(&reached, &g.ancestors(goal));
        let back_goal = start.iter().find(|id| g.ancestors(id) == start).cloned();
        let back_goal = back_goal.map_or(Goal::Base, Goal::Revision);
        let back = plan(&g, &history(&g, &reached), &back_goal, Dialect::Sqlite).expect("back");
        assert_respects_edges(&g, &reached, &back);
        prop_assert_eq!(apply(&reached, &back), start.clone());
        if start.is_subset(&reached) {
            // A pure upgrade: coming back is exactly its reverse.
            let fwd: Vec<(&str, Direction)> = there.steps.iter().map(|s| (s.revision.as_str(), s.direction)).collect();
            let mut bwd: Vec<(&str, Direction)> = back.steps.iter().map(|s| (s.revision.as_str(), s.direction)).collect();
            bwd.reverse();
            prop_assert!(fwd.iter().all(|(_, d)| *d == Direction::Up));
            prop_assert!(bwd.iter().all(|(_, d)| *d == Direction::Down));
            let fwd_ids: Vec<&str> = fwd.iter().map(|(r, _)| *r).collect();
            let bwd_ids: Vec<&str> = bwd.iter().map(|(r, _)| *r).collect();
            prop_assert_eq!(fwd_ids, bwd_ids);
        }

        // Relative goals: -N from any closed set stays closed and respects edges.
        let n = i32::try_from(start.len().min(3)).unwrap_or(0);
        let rel = plan(&g, &history(&g, &start), &Goal::Relative(-n), Dialect::Sqlite).expect("-n");
        assert_respects_edges(&g, &start, &rel);
        prop_assert_eq!(rel.steps.len(), start.len().min(3));
    }
}
