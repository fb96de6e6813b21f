//! The revision graph: a validated migration set (no duplicate ids, no unknown parents, no
//! cycles) with roots, heads, branch and merge points, ancestors, a deterministic topological
//! order (parents first, ties broken by revision id) and the set's digest.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use flotilla_core::Dialect;
use sha2::{Digest, Sha256};

use super::lint::LintConfig;
use super::parse::{ParseError, ParseErrorKind, ParseErrors, Revision, load_dir, parse_file};

/// A validated migration set. Revisions are stored in topological order.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    revisions: Vec<Revision>,
    index: HashMap<String, usize>,
    /// Children of each revision (indexes), in topological order.
    children: Vec<Vec<usize>>,
    /// The set's `lint.toml` (not part of the digest: it changes no SQL).
    lint: LintConfig,
    /// The tables to back up before each revision's up step, per dialect, filled on first
    /// use: a lint result, parsed once per graph (not once per target and step).
    backups: std::sync::OnceLock<HashMap<(usize, Dialect), Vec<String>>>,
}

impl Graph {
    /// Reads and validates every `*.sql` file under `dir`, and its `lint.toml` if any.
    pub fn load_dir(dir: &Path) -> Result<Graph, ParseErrors> {
        let config = LintConfig::load(dir);
        let graph = Graph::from_sources(load_dir(dir)?);
        match (graph, config) {
            (Ok(g), Ok(c)) => Ok(g.with_lint_config(c)),
            (Ok(_), Err(e)) => Err(ParseErrors(vec![e])),
            (Err(es), Ok(_)) => Err(es),
            (Err(mut es), Err(e)) => {
                es.0.insert(0, e);
                Err(es)
            }
        }
    }

    /// The graph with the set's lint settings.
    pub fn with_lint_config(mut self, lint: LintConfig) -> Graph {
        self.lint = lint;
        self.backups = Default::default();
        self
    }

    /// The tables the agent backs up before `revision`'s up step on `dialect`
    /// (`lint::backup_tables`); empty for an unknown revision.
    pub fn backup_tables(&self, revision: &str, dialect: Dialect) -> &[String] {
        let all = self.backups.get_or_init(|| {
            let mut all = HashMap::new();
            for (i, r) in self.revisions.iter().enumerate() {
                for d in Dialect::ALL {
                    let tables = super::lint::backup_tables(r, d, &self.lint);
                    if !tables.is_empty() {
                        all.insert((i, d), tables);
                    }
                }
            }
            all
        });
        self.index
            .get(revision)
            .and_then(|i| all.get(&(*i, dialect)))
            .map_or(&[], Vec::as_slice)
    }

    /// The set's lint settings (`lint.toml`).
    pub fn lint_config(&self) -> &LintConfig {
        &self.lint
    }

    /// Parses and validates a set of files; every problem is reported, the set is refused as a
    /// whole when there is any.
    pub fn from_sources(files: Vec<(PathBuf, Vec<u8>)>) -> Result<Graph, ParseErrors> {
        let mut errors = Vec::new();
        let mut parsed: Vec<Revision> = Vec::new();
        for (path, bytes) in &files {
            match parse_file(path, bytes) {
                Ok(r) => parsed.push(r),
                Err(es) => errors.extend(es),
            }
        }
        Graph::from_revisions(parsed, errors)
    }

    /// Validates parsed revisions as a set, adding to `errors` from parsing.
    pub(crate) fn from_revisions(
        parsed: Vec<Revision>,
        mut errors: Vec<ParseError>,
    ) -> Result<Graph, ParseErrors> {
        let mut revisions: Vec<Revision> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for r in parsed {
            if let Some(&first) = index.get(&r.id) {
                let first: &Revision = &revisions[first];
                errors.push(ParseError {
                    path: r.path.clone(),
                    line: Some(r.revision_line),
                    kind: ParseErrorKind::DuplicateRevision {
                        id: r.id.clone(),
                        first: first.path.clone(),
                        first_line: first.revision_line,
                    },
                });
                continue;
            }
            index.insert(r.id.clone(), revisions.len());
            revisions.push(r);
        }
        // Parent edges between known revisions; unknown parents are errors.
        let mut parent_idx: Vec<Vec<usize>> = Vec::with_capacity(revisions.len());
        for r in &revisions {
            let mut ps = Vec::new();
            for p in &r.parents {
                match index.get(p) {
                    Some(&i) => ps.push(i),
                    None => errors.push(ParseError {
                        path: r.path.clone(),
                        line: Some(r.revises_line),
                        kind: ParseErrorKind::UnknownParent {
                            revision: r.id.clone(),
                            parent: p.clone(),
                        },
                    }),
                }
            }
            parent_idx.push(ps);
        }
        let (order, leftover) = topo_order(&revisions, &parent_idx);
        for cycle in cycles(&revisions, &parent_idx, &leftover) {
            let first = &revisions[cycle[0]];
            errors.push(ParseError {
                path: first.path.clone(),
                line: Some(first.revises_line),
                kind: ParseErrorKind::Cycle {
                    revisions: cycle.iter().map(|&i| revisions[i].id.clone()).collect(),
                },
            });
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
            return Err(ParseErrors(errors));
        }

        // Reorder into topological order.
        let mut slots: Vec<Option<Revision>> = revisions.into_iter().map(Some).collect();
        let mut sorted = Vec::with_capacity(order.len());
        for &i in &order {
            if let Some(r) = slots[i].take() {
                sorted.push(r);
            }
        }
        let index: HashMap<String, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let mut children = vec![Vec::new(); sorted.len()];
        for (i, r) in sorted.iter().enumerate() {
            for p in &r.parents {
                if let Some(&pi) = index.get(p) {
                    children[pi].push(i);
                }
            }
        }
        Ok(Graph {
            revisions: sorted,
            index,
            children,
            lint: LintConfig::default(),
            backups: Default::default(),
        })
    }

    pub fn get(&self, id: &str) -> Option<&Revision> {
        self.index.get(id).map(|&i| &self.revisions[i])
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Every revision, parents before children, ties broken by revision id.
    pub fn revisions(&self) -> impl DoubleEndedIterator<Item = &Revision> + ExactSizeIterator {
        self.revisions.iter()
    }

    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// Position of `id` in the topological order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Revisions no other revision revises, sorted by id.
    pub fn heads(&self) -> Vec<&str> {
        self.sorted_ids(|i| self.children[i].is_empty())
    }

    /// Revisions with no parent, sorted by id.
    pub fn roots(&self) -> Vec<&str> {
        self.sorted_ids(|i| self.revisions[i].parents.is_empty())
    }

    /// Branch points: revisions with several children, sorted by id.
    pub fn branch_points(&self) -> Vec<&str> {
        self.sorted_ids(|i| self.children[i].len() > 1)
    }

    /// Merge points: revisions with several parents, sorted by id.
    pub fn merge_points(&self) -> Vec<&str> {
        self.sorted_ids(|i| self.revisions[i].parents.len() > 1)
    }

    /// Children of `id` in topological order (empty for an unknown id).
    pub fn children(&self, id: &str) -> Vec<&str> {
        self.index.get(id).map_or_else(Vec::new, |&i| {
            self.children[i]
                .iter()
                .map(|&c| self.revisions[c].id.as_str())
                .collect()
        })
    }

    fn sorted_ids(&self, keep: impl Fn(usize) -> bool) -> Vec<&str> {
        let mut ids: Vec<&str> = (0..self.revisions.len())
            .filter(|&i| keep(i))
            .map(|i| self.revisions[i].id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// `id` and every revision it (transitively) revises. Inclusive of `id`; empty when `id`
    /// is not in the graph.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let Some(&start) = self.index.get(id) else {
            return seen;
        };
        let mut queue = VecDeque::from([start]);
        while let Some(i) = queue.pop_front() {
            let r = &self.revisions[i];
            if seen.insert(r.id.clone()) {
                queue.extend(r.parents.iter().filter_map(|p| self.index.get(p).copied()));
            }
        }
        seen
    }

    /// Digest of the whole set: lowercase hex SHA-256 over, for every revision in topological
    /// order, the lines `revision <id>`, `parents <p1,p2,...>`, `transactional <true|false>`
    /// and, for each dialect (postgres, mysql, sqlite), `up <dialect> <checksum>` and
    /// `down <dialect> <checksum|->`, each line ending in `\n`. Equal digests mean the same
    /// revisions, edges and SQL on every dialect.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for r in &self.revisions {
            h.update(format!("revision {}\n", r.id));
            h.update(format!("parents {}\n", r.parents.join(",")));
            h.update(format!("transactional {}\n", r.transactional));
            for d in Dialect::ALL {
                h.update(format!("up {d} {}\n", r.up_checksum(d)));
                let down = r.down_checksum(d).unwrap_or_else(|| "-".into());
                h.update(format!("down {d} {down}\n"));
            }
        }
        hex::encode(h.finalize())
    }

    /// `(revision, up checksum)` for every revision in topological order: what a target of
    /// dialect `d` must have recorded for the revisions it has applied (the agent's Validate).
    pub fn expected(&self, d: Dialect) -> Vec<(String, String)> {
        self.revisions
            .iter()
            .map(|r| (r.id.clone(), r.up_checksum(d)))
            .collect()
    }
}

/// Kahn's algorithm, always taking the ready revision with the smallest id. Returns the order
/// and the revisions that never became ready (in or behind a cycle).
fn topo_order(revisions: &[Revision], parents: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let mut pending: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut children = vec![Vec::new(); revisions.len()];
    for (i, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(i);
        }
    }
    let mut ready: BTreeSet<(&str, usize)> = (0..revisions.len())
        .filter(|&i| pending[i] == 0)
        .map(|i| (revisions[i].id.as_str(), i))
        .collect();
    let mut order = Vec::with_capacity(revisions.len());
    while let Some((_, i)) = ready.pop_first() {
        order.push(i);
        for &c in &children[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.insert((revisions[c].id.as_str(), c));
            }
        }
    }
    let leftover = (0..revisions.len()).filter(|&i| pending[i] > 0).collect();
    (order, leftover)
}

/// The cycles among `leftover` revisions: one per strongly connected component that has a
/// cycle, as a path starting at its smallest id and following `revises` edges.
fn cycles(revisions: &[Revision], parents: &[Vec<usize>], leftover: &[usize]) -> Vec<Vec<usize>> {
    let in_left: BTreeSet<usize> = leftover.iter().copied().collect();
    let reach = |from: usize| -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(i) = stack.pop() {
            for &p in &parents[i] {
                if in_left.contains(&p) && seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        seen
    };
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut sorted: Vec<usize> = leftover.to_vec();
    sorted.sort_by(|&a, &b| revisions[a].id.cmp(&revisions[b].id));
    let mut out = Vec::new();
    for &start in &sorted {
        if done.contains(&start) {
            continue;
        }
        let forward = reach(start);
        if !forward.contains(&start) {
            continue; // behind a cycle, not in one
        }
        // The component: nodes reachable from start that reach start back.
        let component: BTreeSet<usize> = forward
            .iter()
            .copied()
            .filter(|&n| reach(n).contains(&start))
            .collect();
        done.extend(component.iter().copied());
        // Shortest path start → ... → start inside the component (BFS over parent edges).
        let mut prev: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(i) = queue.pop_front() {
            for &p in &parents[i] {
                if p == start {
                    closing = Some(i);
                    break 'bfs;
                }
                if component.contains(&p) && !prev.contains_key(&p) {
                    prev.insert(p, i);
                    queue.push_back(p);
                }
            }
        }
        let mut path = Vec::new();
        let mut cur = closing;
        while let Some(c) = cur {
            path.push(c);
            cur = if c == start {
                None
            } else {
                prev.get(&c).copied()
            };
        }
        path.reverse();
        out.push(path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Result<Graph, ParseErrors> {
        Graph::from_sources(
            files
                .iter()
                .map(|(id, revises)| {
                    (
                        PathBuf::from(format!("{id}.sql")),
                        format!("-- revision: {id}\n-- revises: {revises}\n-- migrate:up\nSELECT '{id}';\n-- migrate:down\n")
                            .into_bytes(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn topo_order_breaks_ties_by_id() {
        let g = graph(&[("m", "c, b"), ("c", "a"), ("b", "a"), ("a", ""), ("z", "")]).unwrap();
        let ids: Vec<_> = g.revisions().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "m", "z"]);
        assert_eq!(g.heads(), ["m", "z"]);
        assert_eq!(g.roots(), ["a", "z"]);
        assert_eq!(g.branch_points(), ["a"]);
        assert_eq!(g.merge_points(), ["m"]);
        assert_eq!(
            g.ancestors("m").into_iter().collect::<Vec<_>>(),
            ["a", "b", "c", "m"]
        );
        assert!(g.ancestors("nope").is_empty());
        assert_eq!(g.digest().len(), 64);
    }

    #[test]
    fn cycle_is_named_in_order() {
        let e = graph(&[("a", ""), ("b", "a, d"), ("c", "b"), ("d", "c"), ("e", "d")]).unwrap_err();
        assert_eq!(
            e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["b.sql:2: revisions form a cycle: b -> d -> c -> b"]
        );
    }
}
