//! `flotilla history` without `--target`: the revision graph newest first, like
//! `alembic history` (`parent -> revision (head), description`); `--verbose` adds each
//! revision's parents, children, branch/merge marks, path, transactional flag and up
//! checksums per dialect, like `alembic history --verbose`.

use flotilla_core::Dialect;

use super::{revision_json, to_json, tree};
use crate::error::CliError;
use flotilla_revision::Graph;

pub(crate) fn history(g: &Graph, verbose: bool, json: bool) -> Result<String, CliError> {
    let heads = g.heads();
    if json {
        let list: Vec<_> = g
            .revisions()
            .rev()
            .map(|r| {
                let mut v = revision_json(g, r, &heads);
                if verbose {
                    v["checksums"] = Dialect::ALL
                        .iter()
                        .map(|d| (d.to_string(), r.up_checksum(*d).into()))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                v
            })
            .collect();
        return to_json(&serde_json::Value::Array(list));
    }
    let mut s = String::new();
    for r in g.revisions().rev() {
        let mut marks = Vec::new();
        if heads.contains(&r.id.as_str()) {
            marks.push("head");
        }
        marks.extend(tree::kind_marks(r));
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!(" ({})", marks.join(", "))
        };
        let parents = if r.parents.is_empty() {
            "<base>".to_owned()
        } else {
            r.parents.join(", ")
        };
        if !verbose {
            s.push_str(&format!(
                "{parents} -> {}{marks}, {}\n",
                r.id, r.description
            ));
            continue;
        }
        let children = g.children(&r.id);
        s.push_str(&format!("Rev: {}{marks}\n", r.id));
        s.push_str(&format!("Parent: {parents}\n"));
        if !children.is_empty() {
            s.push_str(&format!("Children: {}\n", children.join(", ")));
        }
        s.push_str(&format!("Path: {}\n", r.path.display()));
        s.push_str(&format!(
            "Transactional: {}  Reversible: {}\n",
            r.transactional,
            r.is_reversible()
        ));
        for d in Dialect::ALL {
            s.push_str(&format!("Checksum {d}: {}\n", r.up_checksum(d)));
        }
        s.push_str(&format!("\n    {}\n\n", r.description));
    }
    if s.is_empty() {
        s.push_str("no revisions\n");
    }
    Ok(s)
}
