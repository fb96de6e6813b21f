//! Drawings of the revision graph: a lane tree for the terminal (newest first, like
//! `git log --graph`) and Graphviz DOT.

use flotilla_revision::{Graph, Revision};

/// Lane glyphs.
const NODE: char = '●';
const LANE: char = '│';

/// The graph as lanes, heads at the top, parents below their children.
pub(crate) fn text(g: &Graph) -> String {
    if g.is_empty() {
        return "no revisions\n".into();
    }
    let heads = g.heads();
    let mut out = String::new();
    // Each lane waits for the revision it will draw next.
    let mut lanes: Vec<Option<&str>> = Vec::new();
    for r in g.revisions().rev() {
        let id = r.id.as_str();
        let cols: Vec<usize> = (0..lanes.len()).filter(|&i| lanes[i] == Some(id)).collect();
        let c = match cols.first() {
            Some(&c) => c,
            None => take_lane(&mut lanes, 0, id),
        };
        if let (true, Some(&last)) = (cols.len() > 1, cols.last()) {
            out.push_str(&connector(
                &lanes,
                c,
                last,
                |i| cols[1..].contains(&i),
                true,
            ));
            for &o in &cols[1..] {
                lanes[o] = None;
            }
            while lanes.len() > c + 1 && lanes.last() == Some(&None) {
                lanes.pop();
            }
        }
        let mut row: String = (0..lanes.len())
            .map(|i| match (i == c, lanes[i].is_some()) {
                (true, _) => NODE,
                (false, true) => LANE,
                (false, false) => ' ',
            })
            .flat_map(|g| [g, ' '])
            .collect();
        row.push_str(&label(r, heads.contains(&id)));
        out.push_str(row.trim_end());
        out.push('\n');

        lanes[c] = r.parents.first().map(String::as_str);
        let mut targets = Vec::new();
        for p in r.parents.iter().skip(1) {
            targets.push(take_lane(&mut lanes, c + 1, p));
        }
        if let Some(&last) = targets.iter().max() {
            out.push_str(&connector(&lanes, c, last, |i| targets.contains(&i), false));
        }
        while lanes.last() == Some(&None) {
            lanes.pop();
        }
    }
    out
}

/// Puts `id` in the first free lane at or right of `from` and returns its index.
fn take_lane<'a>(lanes: &mut Vec<Option<&'a str>>, from: usize, id: &'a str) -> usize {
    let free = (from..lanes.len()).find(|&i| lanes[i].is_none());
    match free {
        Some(i) => {
            lanes[i] = Some(id);
            i
        }
        None => {
            lanes.resize(from.max(lanes.len()), None);
            lanes.push(Some(id));
            lanes.len() - 1
        }
    }
}

/// A line joining lanes (`├─┴─┘`, several children meeting their parent) or forking them
/// (`├─┬─┐`, a merge revision's other parents).
fn connector(
    lanes: &[Option<&str>],
    c: usize,
    last: usize,
    is_target: impl Fn(usize) -> bool,
    join: bool,
) -> String {
    let mut s = String::new();
    for (i, lane) in lanes
        .iter()
        .enumerate()
        .take(last.max(lanes.len().saturating_sub(1)) + 1)
    {
        let glyph = if i == c {
            '├'
        } else if is_target(i) {
            match (i == last, join) {
                (true, true) => '┘',
                (true, false) => '┐',
                (false, true) => '┴',
                (false, false) => '┬',
            }
        } else if i > c && i < last {
            if lane.is_some() { '┼' } else { '─' }
        } else if lane.is_some() {
            LANE
        } else {
            ' '
        };
        s.push(glyph);
        s.push(if i >= c && i < last { '─' } else { ' ' });
    }
    let mut s = s.trim_end().to_owned();
    s.push('\n');
    s
}

/// What kind of revision it is, as shown after its id: merge, irreversible,
/// non-transactional.
pub(super) fn kind_marks(r: &Revision) -> impl Iterator<Item = &'static str> {
    [
        (r.is_merge(), "merge"),
        (!r.is_reversible(), "irreversible"),
        (!r.transactional, "non-transactional"),
    ]
    .into_iter()
    .filter_map(|(on, mark)| on.then_some(mark))
}

fn label(r: &Revision, head: bool) -> String {
    let mut marks = Vec::new();
    if head {
        marks.push("head");
    }
    if r.parents.is_empty() {
        marks.push("root");
    }
    marks.extend(kind_marks(r));
    let mut s = r.id.clone();
    if !marks.is_empty() {
        s.push_str(&format!(" ({})", marks.join(", ")));
    }
    if !r.description.is_empty() {
        s.push_str(&format!("  {}", r.description));
    }
    s
}

/// Graphviz: parents at the bottom, heads drawn bold, irreversible revisions red.
pub(crate) fn dot(g: &Graph) -> String {
    let heads = g.heads();
    let mut s = String::from(
        "digraph flotilla {\n  rankdir=BT;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for r in g.revisions() {
        let mut attrs = vec![format!(
            "label=\"{}\\n{}\"",
            escape(&r.id),
            escape(&r.description)
        )];
        if heads.contains(&r.id.as_str()) {
            attrs.push("style=bold".into());
        }
        if !r.is_reversible() {
            attrs.push("color=red".into());
        }
        if !r.transactional {
            attrs.push("shape=octagon".into());
        }
        s.push_str(&format!(
            "  \"{}\" [{}];\n",
            escape(&r.id),
            attrs.join(", ")
        ));
    }
    for r in g.revisions() {
        for p in &r.parents {
            s.push_str(&format!("  \"{}\" -> \"{}\";\n", escape(&r.id), escape(p)));
        }
    }
    s.push_str("}\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
