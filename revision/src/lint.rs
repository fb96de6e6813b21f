//! `flotilla check` and the rollout's destructive-step refusal: everything the parser refuses
//! (errors) plus findings of the SQL rules (`lint/rule.rs`, `lint/sql.rs`: statements parsed
//! with `sqlparser` per dialect) and of the file checks (irreversible revisions, a last
//! statement without `;`).
//!
//! A finding is silenced by the file's `-- lint: allow <rule>, ...` header or by the set's
//! `lint.toml` (`lint/config.rs`). Pure: the caller reads the files.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;

use flotilla_core::Dialect;

use super::parse::{ParseError, Revision, Section};

mod config;
mod scan;
mod sql;

pub use crate::rule::Rule;
pub use config::{FILE as CONFIG_FILE, LintConfig};
pub(crate) use scan::scan;
pub use sql::{Finding, Part};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding of `flotilla check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable machine-readable code: a parse error's (`unknown_key`, ...) or a rule's name
    /// (`destructive`, ...), or `irreversible` / `missing_semicolon`.
    pub code: &'static str,
    pub path: PathBuf,
    pub line: Option<usize>,
    pub revision: Option<String>,
    /// The dialects the finding applies to (empty for parse errors and file checks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dialects: Vec<Dialect>,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let path = self.path.display().to_string();
        write!(f, "{}", flotilla_core::text::escaped(&path))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {sev}[{}]: {}", self.code, self.message)?;
        if !self.dialects.is_empty() && self.dialects.len() < Dialect::ALL.len() {
            let names: Vec<&str> = self.dialects.iter().map(|d| d.as_str()).collect();
            write!(f, " (on {})", names.join(", "))?;
        }
        Ok(())
    }
}

impl From<ParseError> for Diagnostic {
    fn from(e: ParseError) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code: e.kind.code(),
            message: e.kind.to_string(),
            path: e.path,
            line: e.line,
            revision: None,
            dialects: vec![],
        }
    }
}

/// A rule finding in one revision, merged over the dialects that share the section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionFinding {
    pub finding: Finding,
    pub part: Part,
    pub dialects: Vec<Dialect>,
    /// Silenced by the file's `-- lint:` header or by `lint.toml`.
    pub allowed: bool,
}

/// Warnings for one parsed revision (no `lint.toml`).
pub fn lint_revision(r: &Revision) -> Vec<Diagnostic> {
    lint_revision_with(r, &LintConfig::default())
}

/// Warnings for one parsed revision: the rules' findings that are not allowed, and the file
/// checks.
pub fn lint_revision_with(r: &Revision, config: &LintConfig) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut warn = |line: usize, code: &'static str, dialects: Vec<Dialect>, message: String| {
        out.push(Diagnostic {
            severity: Severity::Warning,
            code,
            path: r.path.clone(),
            line: Some(line),
            revision: Some(r.id.clone()),
            dialects,
            message,
        });
    };
    let no_down: Vec<&str> = Dialect::ALL
        .iter()
        .filter(|d| r.down_sql(**d).is_none())
        .map(|d| d.as_str())
        .collect();
    if no_down.len() == Dialect::ALL.len() {
        warn(
            r.revision_line,
            "irreversible",
            vec![],
            format!(
                "revision {:?} has no down section: a downgrade across it is refused",
                r.id
            ),
        );
    } else if !no_down.is_empty() {
        warn(
            r.revision_line,
            "irreversible",
            vec![],
            format!(
                "revision {:?} has no down section for {}: a downgrade across it is refused there",
                r.id,
                no_down.join(", ")
            ),
        );
    }
    for f in findings(r, config) {
        if !f.allowed {
            let message = match f.part {
                Part::Up => f.finding.message,
                Part::Down => format!("down section: {}", f.finding.message),
            };
            warn(f.finding.line, f.finding.rule.as_str(), f.dialects, message);
        }
    }
    for (dir, dialect, section) in sections(r) {
        let name = match dialect {
            Some(d) => format!("{dir} {d}"),
            None => dir.to_owned(),
        };
        if let Some(last) = scan(&section.sql, section.text_line).last()
            && !last.terminated
        {
            warn(
                last.line,
                "missing_semicolon",
                vec![],
                format!(
                    "the last statement of the {name} section does not end with `;`: rendered scripts would run it together with the next one"
                ),
            );
        }
    }
    out
}

/// Every section written in the file with its direction and dialect (`None` = plain).
fn sections(r: &Revision) -> impl Iterator<Item = (&'static str, Option<Dialect>, &Section)> {
    r.up.all()
        .map(|(d, s)| ("up", d, s))
        .chain(r.down.all().map(|(d, s)| ("down", d, s)))
        .chain(r.check.all().map(|(d, s)| ("check", d, s)))
        .chain(r.verify.all().map(|(d, s)| ("verify", d, s)))
}

/// Sections of a revision (all parts and dialects together) from this size on are analyzed
/// on one thread per dialect.
const PARALLEL_BYTES: usize = 256 * 1024;

/// Every rule finding of a revision, in file order, each analyzed with the dialect(s) that
/// run its section and merged when they agree.
pub fn findings(r: &Revision, config: &LintConfig) -> Vec<RevisionFinding> {
    let mut out: Vec<RevisionFinding> = Vec::new();
    // Where each distinct finding is in `out`: a big file can have a finding per statement,
    // and looking each one up in `out` would be quadratic.
    let mut seen: HashMap<(Part, Finding), usize> = HashMap::new();
    let mut jobs = Vec::new();
    for (part, sections) in [(Part::Up, &r.up), (Part::Down, &r.down)] {
        for d in Dialect::ALL {
            if let Some(section) = sections.for_dialect(d) {
                jobs.push((part, d, section));
            }
        }
    }
    let analyze = |&(part, d, section): &(Part, Dialect, &Section)| {
        sql::analyze(&section.sql, section.text_line, d, r.transactional, part)
    };
    let bytes: usize = jobs.iter().map(|(_, _, s)| s.sql.len()).sum();
    // A big seed is parsed once per dialect: those parses run side by side (pure, no I/O).
    let results: Vec<Vec<Finding>> = if bytes >= PARALLEL_BYTES {
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| scope.spawn(move || analyze(job)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    } else {
        jobs.iter().map(analyze).collect()
    };
    for (&(part, d, _), found) in jobs.iter().zip(results) {
        for finding in found {
            match seen.entry((part, finding)) {
                Entry::Occupied(e) => out[*e.get()].dialects.push(d),
                Entry::Vacant(e) => {
                    let finding = e.key().1.clone();
                    e.insert(out.len());
                    out.push(RevisionFinding {
                        allowed: r.allows(finding.rule) || config.allow.contains(&finding.rule),
                        finding,
                        part,
                        dialects: vec![d],
                    });
                }
            }
        }
    }
    out.sort_by_key(|f| f.finding.line);
    out
}

/// The up section's destructive findings on `dialect` (allowed ones included: `allowed`
/// says which). The rollout refuses the ones not allowed; the agent backs up their tables.
pub fn destructive(r: &Revision, dialect: Dialect, config: &LintConfig) -> Vec<RevisionFinding> {
    let Some(section) = r.up.for_dialect(dialect) else {
        return vec![];
    };
    sql::analyze(
        &section.sql,
        section.text_line,
        dialect,
        r.transactional,
        Part::Up,
    )
    .into_iter()
    .filter(|f| f.rule == Rule::Destructive)
    .map(|finding| RevisionFinding {
        allowed: r.allows(Rule::Destructive) || config.allow.contains(&Rule::Destructive),
        finding,
        part: Part::Up,
        dialects: vec![dialect],
    })
    .collect()
}

/// The tables the agent backs up before running `r`'s up section on `dialect`: those of its
/// destructive findings (allowed or not), and with `-- backup: true` every existing table the
/// section changes.
pub fn backup_tables(r: &Revision, dialect: Dialect, config: &LintConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in destructive(r, dialect, config) {
        if let Some(t) = f.finding.table
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    if r.backup
        && let Some(section) = r.up.for_dialect(dialect)
    {
        for t in sql::touched_tables(&section.sql, dialect) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}
