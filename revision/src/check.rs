//! The whole-set check behind `flotilla check` and the upload of a set: parse every file,
//! build the graph, lint each revision; one sorted list of diagnostics.

use std::path::PathBuf;

use crate::graph::Graph;
use crate::lint::{Diagnostic, LintConfig, lint_revision_with};
use crate::parse::parse_file;

/// Lints a set of files with no `lint.toml`.
pub fn lint_sources(files: Vec<(PathBuf, Vec<u8>)>) -> (Option<Graph>, Vec<Diagnostic>) {
    lint_set(files, &LintConfig::default())
}

/// Lints a set of files: parse and set errors, then findings for every file that parsed.
/// Diagnostics are sorted by path and line. The graph is returned when the set is valid.
pub fn lint_set(
    files: Vec<(PathBuf, Vec<u8>)>,
    config: &LintConfig,
) -> (Option<Graph>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    // Each file is parsed once: the same revisions are linted and then validated as a set.
    let mut parsed = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for (path, bytes) in &files {
        match parse_file(path, bytes) {
            Ok(r) => {
                out.extend(lint_revision_with(&r, config));
                parsed.push(r);
            }
            Err(es) => errors.extend(es),
        }
    }
    drop(files);
    let graph = match Graph::from_revisions(parsed, errors) {
        Ok(g) => Some(g.with_lint_config(config.clone())),
        Err(errors) => {
            out.extend(errors.0.into_iter().map(Diagnostic::from));
            None
        }
    };
    out.sort_by(|a, b| (&a.path, a.line, a.severity).cmp(&(&b.path, b.line, b.severity)));
    (graph, out)
}
