//! The migration file parser: bytes of one `.sql` file → a [`Revision`], with errors that name
//! the file and line. Pure except [`load_dir`], which only reads files and hands their bytes on.
//!
//! # File format (public contract, also in README.md)
//!
//! A header of `-- key: value` lines (keys `revision`, `revises`, `description`,
//! `transactional`, `lint` (`allow <rule>[, <rule>...]`), `backup` (`true`/`false`),
//! `lock-timeout` and `statement-timeout` (`500ms`, `2s`, `10m`, `1h`); other comment lines
//! without a `key:` and blank lines are allowed), then
//! sections opened by marker lines `-- migrate:up`, `-- migrate:down`, `-- migrate:check` and
//! `-- migrate:verify` (`parse/guard.rs`), optionally followed by a dialect (`postgres`,
//! `mysql`, `sqlite`) that overrides the plain section for that dialect.
//!
//! # Checksum rule
//!
//! A section's text is the lines after its marker line up to (not including) the next marker
//! line or the end of the file, joined with `"\n"` (a `"\r"` before a line break is dropped, so
//! CRLF and LF checkouts agree), with leading blank lines removed and trailing whitespace
//! (including the final line breaks) trimmed. Everything else (comments, indentation, blank
//! lines between statements) is kept byte for byte. The checksum is the lowercase hex SHA-256
//! of that text, and `Revision::up_sql` returns exactly that text. An up step whose dialect has
//! a check or verify section records `flotilla_core::step_checksum` over the three texts
//! instead (`Revision::up_checksum`); revisions without them keep the up section's checksum.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_core::limits::MAX_STEP_SQL_BYTES;
use flotilla_core::{Dialect, checksum, is_valid_revision_id};

mod error;
mod guard;
mod load;

use crate::rule::Rule;

pub use error::{ParseError, ParseErrorKind, ParseErrors};
pub use load::load_dir;

/// `checksum("")`, for a dialect without an up section (validation prevents it).
const EMPTY_CHECKSUM: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One section body and the line of its marker (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub(crate) sql: String,
    /// `checksum(sql)`, computed once at parse time (planning compares it per target).
    pub(crate) checksum: String,
    /// Line of the marker.
    pub(crate) line: usize,
    /// Line of the first line of `sql`.
    pub(crate) text_line: usize,
}

/// The plain section of one direction plus its dialect overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sections {
    pub(crate) plain: Option<Section>,
    pub(crate) by_dialect: BTreeMap<Dialect, Section>,
}

impl Sections {
    pub(crate) fn for_dialect(&self, d: Dialect) -> Option<&Section> {
        self.by_dialect.get(&d).or(self.plain.as_ref())
    }

    /// Every section written in the file, with its dialect (`None` = plain).
    pub(crate) fn all(&self) -> impl Iterator<Item = (Option<Dialect>, &Section)> {
        self.plain
            .iter()
            .map(|s| (None, s))
            .chain(self.by_dialect.iter().map(|(d, s)| (Some(*d), s)))
    }
}

/// One migration: a validated file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub id: String,
    /// Parents as written in `revises` (empty for a root, several for a merge point).
    pub parents: Vec<String>,
    pub description: String,
    pub transactional: bool,
    pub path: PathBuf,
    pub(crate) up: Sections,
    pub(crate) down: Sections,
    /// `-- migrate:check`: queries run under the lock before the up step; they must pass.
    pub(crate) check: Sections,
    /// `-- migrate:verify`: queries run after the up step, in its transaction.
    pub(crate) verify: Sections,
    /// The up checksum of dialects with a check or verify section (`guard::checksums`).
    guarded: BTreeMap<Dialect, String>,
    /// Line of the `revision` header (1-based).
    pub(crate) revision_line: usize,
    /// Line of the `revises` header, or of the `revision` header when there is none.
    pub(crate) revises_line: usize,
    /// Lint rules this file allows (`-- lint: allow destructive, locking`).
    pub(crate) lint_allow: BTreeSet<Rule>,
    /// `-- backup: true`: the agent backs up the tables the up section touches before it runs,
    /// even when the linter finds nothing destructive.
    pub backup: bool,
    /// `-- lock-timeout: 500ms`: the longest wait of one of its statements for a lock (wins
    /// over the rollout's and the agent's bound).
    pub lock_timeout: Option<Duration>,
    /// `-- statement-timeout: 10m`: the longest run of one statement (PostgreSQL).
    pub statement_timeout: Option<Duration>,
}

impl Revision {
    /// The up SQL for `d`: the dialect section if there is one, else the plain section.
    pub fn up_sql(&self, d: Dialect) -> &str {
        // Validation guarantees an up section for every dialect.
        self.up.for_dialect(d).map_or("", |s| s.sql.as_str())
    }

    /// The down SQL for `d`; `None` when the revision is irreversible on that dialect.
    pub fn down_sql(&self, d: Dialect) -> Option<&str> {
        self.down.for_dialect(d).map(|s| s.sql.as_str())
    }

    /// `checksum(up_sql(d))`: what a target records when it applies this revision.
    pub fn up_checksum(&self, d: Dialect) -> String {
        self.up_checksum_ref(d).to_owned()
    }

    /// `up_checksum` without the copy.
    pub fn up_checksum_ref(&self, d: Dialect) -> &str {
        if let Some(c) = self.guarded.get(&d) {
            return c;
        }
        self.up
            .for_dialect(d)
            .map_or(EMPTY_CHECKSUM, |s| s.checksum.as_str())
    }

    /// The `-- migrate:check` queries for `d` (run before the up step), if any.
    pub fn check_sql(&self, d: Dialect) -> Option<&str> {
        self.check.for_dialect(d).map(|s| s.sql.as_str())
    }

    /// The `-- migrate:verify` queries for `d` (run after the up step), if any.
    pub fn verify_sql(&self, d: Dialect) -> Option<&str> {
        self.verify.for_dialect(d).map(|s| s.sql.as_str())
    }

    pub fn down_checksum(&self, d: Dialect) -> Option<String> {
        self.down_checksum_ref(d).map(str::to_owned)
    }

    /// `down_checksum` without the copy.
    pub fn down_checksum_ref(&self, d: Dialect) -> Option<&str> {
        self.down.for_dialect(d).map(|s| s.checksum.as_str())
    }

    /// True when every dialect has a down section.
    pub fn is_reversible(&self) -> bool {
        Dialect::ALL.iter().all(|d| self.down_sql(*d).is_some())
    }

    /// True for a merge point (several parents).
    pub fn is_merge(&self) -> bool {
        self.parents.len() > 1
    }

    /// True when the file's `-- lint:` header allows `rule`.
    pub fn allows(&self, rule: Rule) -> bool {
        self.lint_allow.contains(&rule)
    }
}

/// Header values are mapped to these fixed keys.
const KEYS: [&str; 8] = [
    "revision",
    "revises",
    "description",
    "transactional",
    "lint",
    "backup",
    "lock-timeout",
    "statement-timeout",
];
/// Ids that would read as a goal keyword.
const RESERVED: [&str; 3] = ["head", "heads", "base"];

/// Checks an id against the format: `[A-Za-z0-9_.-]{1,128}`, not a goal keyword, not `-N`.
pub(crate) fn check_revision_id(id: &str) -> Result<(), &'static str> {
    if !is_valid_revision_id(id) {
        return Err("expected 1 to 128 characters from A-Z a-z 0-9 _ . -");
    }
    if RESERVED.contains(&id) {
        return Err("head, heads and base are reserved words");
    }
    if id.starts_with('-') && id[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err("-N is a relative goal, not an id");
    }
    Ok(())
}

/// A marker line: `-- migrate:<direction> [dialect]`.
enum Marker {
    Up(Option<Dialect>),
    Down(Option<Dialect>),
    Check(Option<Dialect>),
    Verify(Option<Dialect>),
}

/// `Some(Ok)` for a valid marker, `Some(Err(text))` for a line that looks like a marker but
/// is not one, `None` for any other line.
fn parse_marker(line: &str) -> Option<Result<Marker, String>> {
    let rest = line.trim_start().strip_prefix("--")?.trim_start();
    let rest = rest.strip_prefix("migrate:")?;
    let mut words = rest.split_whitespace();
    let bad = || Err(line.trim().to_owned());
    let dir = words.next();
    let dialect = match words.next() {
        None => None,
        Some(w) => match w.parse::<Dialect>() {
            Ok(d) => Some(d),
            Err(_) => return Some(bad()),
        },
    };
    if words.next().is_some() {
        return Some(bad());
    }
    Some(match dir {
        Some("up") => Ok(Marker::Up(dialect)),
        Some("down") => Ok(Marker::Down(dialect)),
        Some("check") => Ok(Marker::Check(dialect)),
        Some("verify") => Ok(Marker::Verify(dialect)),
        _ => bad(),
    })
}

/// A header line `-- key: value` → (key, value). Comment lines without `key:` give `None`.
fn parse_header(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix("--")?.trim_start();
    let colon = rest.find(':')?;
    let key = &rest[..colon];
    let is_key = key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    is_key.then(|| (key, rest[colon + 1..].trim()))
}

/// A section's text per the checksum rule in the module docs.
/// Also returns how many leading blank lines were dropped.
fn section_text(lines: &[&str]) -> (String, usize) {
    let start = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .unwrap_or(lines.len());
    (lines[start..].join("\n").trim_end().to_owned(), start)
}

/// Parses one file. `path` is used for error messages and kept on the revision.
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<Revision, Vec<ParseError>> {
    let err = |line: Option<usize>, kind| ParseError {
        path: path.to_owned(),
        line,
        kind,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.valid_up_to();
            let before = &bytes[..offset];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1);
            let column = offset - line_start + 1;
            return Err(vec![err(Some(line), ParseErrorKind::NotUtf8 { column })]);
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // A final "\n" does not open another line.
    let n_lines = if text.ends_with('\n') {
        lines.len() - 1
    } else {
        lines.len()
    };
    let lines = &lines[..n_lines];

    let mut errors = Vec::new();
    let mut headers: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    let mut markers: Vec<(usize, Marker)> = Vec::new(); // (0-based index, marker)
    for (i, line) in lines.iter().enumerate() {
        let lineno = i + 1;
        match parse_marker(line) {
            Some(Ok(m)) => {
                markers.push((i, m));
                continue;
            }
            Some(Err(marker)) => {
                errors.push(err(Some(lineno), ParseErrorKind::UnknownMarker { marker }));
                continue;
            }
            None => {}
        }
        if !markers.is_empty() {
            continue; // section text
        }
        if line.trim().is_empty() {
            continue;
        }
        match parse_header(line) {
            Some((key, value)) => {
                if !KEYS.contains(&key) {
                    errors.push(err(
                        Some(lineno),
                        ParseErrorKind::UnknownKey { key: key.into() },
                    ));
                } else if headers.contains_key(key) {
                    errors.push(err(
                        Some(lineno),
                        ParseErrorKind::DuplicateKey { key: key.into() },
                    ));
                } else {
                    headers.insert(key, (value, lineno));
                }
            }
            None if line.trim_start().starts_with("--") => {} // a free comment
            None => errors.push(err(Some(lineno), ParseErrorKind::OutsideSection)),
        }
    }

    let id = match headers.get("revision") {
        None => {
            errors.push(err(Some(1), ParseErrorKind::MissingRevision));
            None
        }
        Some((id, line)) => match check_revision_id(id) {
            Ok(()) => Some(((*id).to_owned(), *line)),
            Err(why) => {
                errors.push(err(
                    Some(*line),
                    ParseErrorKind::BadRevisionId {
                        id: (*id).into(),
                        why,
                    },
                ));
                None
            }
        },
    };

    let mut parents = Vec::new();
    let mut revises_line = id.as_ref().map_or(1, |(_, l)| *l);
    if let Some((value, line)) = headers.get("revises") {
        revises_line = *line;
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Err(why) = check_revision_id(p) {
                errors.push(err(
                    Some(*line),
                    ParseErrorKind::BadRevisionId { id: p.into(), why },
                ));
            } else if !parents.iter().any(|q: &String| q == p) {
                parents.push(p.to_owned());
            }
        }
    }

    let transactional = match headers.get("transactional") {
        None => true,
        Some((v, line)) => match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                errors.push(err(
                    Some(*line),
                    ParseErrorKind::BadTransactional { value: (*v).into() },
                ));
                true
            }
        },
    };

    let mut lint_allow = BTreeSet::new();
    if let Some((value, line)) = headers.get("lint") {
        match parse_lint_allow(value) {
            Ok(rules) => lint_allow = rules,
            Err(kind) => errors.push(err(Some(*line), kind)),
        }
    }

    let backup = match headers.get("backup") {
        None => false,
        Some((v, line)) => match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                errors.push(err(
                    Some(*line),
                    ParseErrorKind::BadBackup { value: (*v).into() },
                ));
                false
            }
        },
    };

    let mut timeout = |key: &'static str| {
        let (v, line) = headers.get(key)?;
        match flotilla_core::bounds::parse_duration(v) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                errors.push(err(
                    Some(*line),
                    ParseErrorKind::BadTimeout {
                        key,
                        value: (*v).into(),
                        why: "it must be more than 0".into(),
                    },
                ));
                None
            }
            Err(why) => {
                errors.push(err(
                    Some(*line),
                    ParseErrorKind::BadTimeout {
                        key,
                        value: (*v).into(),
                        why,
                    },
                ));
                None
            }
        }
    };
    let lock_timeout = timeout("lock-timeout");
    let statement_timeout = timeout("statement-timeout");

    let mut up = Sections::default();
    let mut down = Sections::default();
    let mut check = Sections::default();
    let mut verify = Sections::default();
    for (k, (i, marker)) in markers.iter().enumerate() {
        let end = markers.get(k + 1).map_or(lines.len(), |(j, _)| *j);
        let (sql, skipped) = section_text(&lines[i + 1..end]);
        if sql.len() > MAX_STEP_SQL_BYTES {
            // The agent would refuse the step: refuse the file now, before anything runs.
            errors.push(err(
                Some(i + 1),
                ParseErrorKind::SectionTooLarge {
                    section: lines[*i].trim().to_owned(),
                    bytes: sql.len(),
                    limit: MAX_STEP_SQL_BYTES,
                },
            ));
        }
        let section = Section {
            checksum: checksum(&sql),
            sql,
            line: i + 1,
            text_line: i + 2 + skipped,
        };
        let (sections, dialect, name) = match marker {
            Marker::Up(d) => (&mut up, *d, "up"),
            Marker::Down(d) => (&mut down, *d, "down"),
            Marker::Check(d) => (&mut check, *d, "check"),
            Marker::Verify(d) => (&mut verify, *d, "verify"),
        };
        let duplicate = match dialect {
            None => sections.plain.is_some(),
            Some(d) => sections.by_dialect.contains_key(&d),
        };
        if duplicate {
            let section = match dialect {
                None => format!("-- migrate:{name}"),
                Some(d) => format!("-- migrate:{name} {d}"),
            };
            errors.push(err(
                Some(i + 1),
                ParseErrorKind::DuplicateSection { section },
            ));
            continue;
        }
        match dialect {
            None => sections.plain = Some(section),
            Some(d) => {
                sections.by_dialect.insert(d, section);
            }
        }
    }
    if up.plain.is_none() {
        if up.by_dialect.is_empty() {
            let line = markers.first().map_or(n_lines.max(1), |(i, _)| i + 1);
            errors.push(err(Some(line), ParseErrorKind::MissingUp));
        } else {
            let line = up.by_dialect.values().map(|s| s.line).min().unwrap_or(1);
            for d in Dialect::ALL {
                if !up.by_dialect.contains_key(&d) {
                    errors.push(err(Some(line), ParseErrorKind::MissingUpFor { dialect: d }));
                }
            }
        }
    }

    errors.extend(guard::errors(path, "check", &check));
    errors.extend(guard::errors(path, "verify", &verify));

    if !errors.is_empty() {
        return Err(errors);
    }
    let Some((id, revision_line)) = id else {
        return Err(errors); // unreachable: a missing id pushed an error
    };
    Ok(Revision {
        id,
        parents,
        description: headers
            .get("description")
            .map_or_else(String::new, |(v, _)| (*v).to_owned()),
        transactional,
        path: path.to_owned(),
        guarded: guard::checksums(&up, &check, &verify),
        up,
        down,
        check,
        verify,
        revision_line,
        revises_line,
        lint_allow,
        backup,
        lock_timeout,
        statement_timeout,
    })
}

/// The value of a `-- lint:` header: `allow` then one or more rule names separated by commas
/// or spaces (`allow destructive, locking`).
fn parse_lint_allow(value: &str) -> Result<BTreeSet<Rule>, ParseErrorKind> {
    let bad = || ParseErrorKind::BadLint {
        value: value.to_owned(),
    };
    let rest = value.strip_prefix("allow").ok_or_else(bad)?;
    if !rest.starts_with(char::is_whitespace) {
        return Err(bad());
    }
    let mut rules = BTreeSet::new();
    for name in rest
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let rule = name
            .parse::<Rule>()
            .map_err(|()| ParseErrorKind::UnknownLintRule {
                rule: name.to_owned(),
            })?;
        rules.insert(rule);
    }
    if rules.is_empty() {
        return Err(bad());
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_checksum_constant_is_the_checksum_of_nothing() {
        assert_eq!(EMPTY_CHECKSUM, checksum(""));
    }

    fn parse(text: &str) -> Result<Revision, Vec<String>> {
        parse_file(Path::new("m.sql"), text.as_bytes())
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn sections_and_checksum_text() {
        let r = parse(
            "-- revision: a\r\n-- a free comment\n\n-- migrate:up\n\n\nCREATE TABLE t (x int);\n\n  -- keep\nSELECT 1;  \n\n-- migrate:up sqlite\nSELECT 2;\n-- migrate:down\nDROP TABLE t;\n",
        )
        .unwrap();
        assert_eq!(
            r.up_sql(Dialect::Postgres),
            "CREATE TABLE t (x int);\n\n  -- keep\nSELECT 1;"
        );
        assert_eq!(r.up_sql(Dialect::Sqlite), "SELECT 2;");
        assert_eq!(r.down_sql(Dialect::Mysql), Some("DROP TABLE t;"));
        assert_eq!(r.up_checksum(Dialect::Sqlite), checksum("SELECT 2;"));
        assert!(r.transactional);
        assert!(r.parents.is_empty());
    }

    #[test]
    fn parents_and_flags() {
        let r =
            parse("-- revision: m\n-- revises: a, b,a\n-- transactional: false\n-- migrate:up\n")
                .unwrap();
        assert_eq!(r.parents, ["a", "b"]);
        assert!(!r.transactional);
        assert_eq!(r.up_sql(Dialect::Mysql), "");
        assert_eq!(r.down_sql(Dialect::Mysql), None);
    }

    #[test]
    fn dialect_only_up_must_cover_every_dialect() {
        let e = parse("-- revision: a\n-- migrate:up postgres\nSELECT 1;\n").unwrap_err();
        assert_eq!(
            e,
            [
                "m.sql:2: no up section for mysql: add a plain `-- migrate:up` or `-- migrate:up mysql`",
                "m.sql:2: no up section for sqlite: add a plain `-- migrate:up` or `-- migrate:up sqlite`",
            ]
        );
    }

    #[test]
    fn reserved_ids() {
        assert!(check_revision_id("head").is_err());
        assert!(check_revision_id("-3").is_err());
        assert!(check_revision_id("-3a").is_ok());
        assert!(check_revision_id("0001_init").is_ok());
    }

    #[test]
    fn timeout_headers_bound_the_step_and_leave_the_checksum_alone() {
        let body = "-- migrate:up\nALTER TABLE t ADD COLUMN c INT;\n";
        let plain = parse(&format!("-- revision: a\n{body}")).unwrap();
        let r = parse(&format!(
            "-- revision: a\n-- lock-timeout: 500ms\n-- statement-timeout: 10m\n{body}"
        ))
        .unwrap();
        assert_eq!(r.lock_timeout, Some(Duration::from_millis(500)));
        assert_eq!(r.statement_timeout, Some(Duration::from_secs(600)));
        assert_eq!(plain.lock_timeout, None);
        assert_eq!(
            r.up_checksum(Dialect::Postgres),
            plain.up_checksum(Dialect::Postgres)
        );
        let e = parse(&format!(
            "-- revision: a\n-- lock-timeout: soon\n-- statement-timeout: 0s\n{body}"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            [
                "m.sql:2: bad lock-timeout value \"soon\": bad duration \"soon\": write a number and a unit, like 500ms or 2s (write it like 500ms, 2s or 10m)",
                "m.sql:3: bad statement-timeout value \"0s\": it must be more than 0 (write it like 500ms, 2s or 10m)",
            ]
        );
    }
}
