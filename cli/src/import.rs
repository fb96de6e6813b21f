//! `flotilla import`: converts another tool's migration history (Alembic, Flyway, sqlx,
//! golang-migrate) into Flotilla revision files, keeping the source's revision ids, parents,
//! descriptions and up/down SQL.
//!
//! Reading a source ([`flyway`], [`sqlx`], [`golang`]: plain file conversion; [`alembic`]:
//! Alembic's own offline mode) gives an [`ImportSet`]; [`write`] renders it (pure, byte for
//! byte the same on every run, so checksums are stable) and writes one file per revision.
//! Revisions that cannot be converted faithfully are [`Problem`]s: reported, never guessed.

use std::path::{Path, PathBuf};

use flotilla_core::Dialect;

pub mod alembic;
pub mod flyway;
pub mod golang;
pub mod sqlx;

/// The tools `flotilla import` and `flotilla adopt` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Tool {
    Alembic,
    Flyway,
    Sqlx,
    #[value(name = "golang-migrate")]
    GolangMigrate,
}

impl Tool {
    pub const ALL: [Tool; 4] = [Tool::Alembic, Tool::Flyway, Tool::Sqlx, Tool::GolangMigrate];

    /// The name used on the command line and in agent reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Alembic => "alembic",
            Tool::Flyway => "flyway",
            Tool::Sqlx => "sqlx",
            Tool::GolangMigrate => "golang-migrate",
        }
    }

    pub fn parse(s: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQL of one direction: the plain section, plus dialect sections where they differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sql {
    pub plain: String,
    pub by_dialect: Vec<(Dialect, String)>,
}

impl Sql {
    pub fn plain(sql: impl Into<String>) -> Sql {
        Sql {
            plain: sql.into(),
            by_dialect: vec![],
        }
    }
}

/// One revision as read from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub id: String,
    pub parents: Vec<String>,
    pub description: String,
    pub transactional: bool,
    pub up: Sql,
    /// `None`: the source has no down migration (irreversible).
    pub down: Option<Sql>,
    /// Alembic branch labels (kept as a comment: the file format has no key for them).
    pub branch_labels: Vec<String>,
    /// The source file, relative to the source directory.
    pub source: String,
}

/// A source file or revision that was not converted, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The revision id, when the source has one.
    pub revision: String,
    pub source: String,
    pub reason: String,
}

/// Everything read from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSet {
    pub tool: Tool,
    pub revisions: Vec<Imported>,
    /// Not imported.
    pub problems: Vec<Problem>,
    /// Imported with a caveat (e.g. no down section).
    pub warnings: Vec<Problem>,
}

/// Why an import failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a directory of {tool} migrations", path.display())]
    NotASource { tool: Tool, path: PathBuf },
    #[error("{tool} version {version} appears twice: {first} and {second}; remove one")]
    DuplicateVersion {
        tool: Tool,
        version: String,
        first: String,
        second: String,
    },
    #[error(
        "alembic is not installed for {python}: install it with `{python} -m pip install alembic sqlalchemy` (plus the database drivers your env.py imports), or point --python at the interpreter that has it"
    )]
    AlembicMissing { python: String },
    #[error("alembic failed: {message}")]
    Alembic { message: String },
    #[error(
        "alembic rendered revision {revision} as {rendered} when asked for {asked}: the project's \
         env.py does not render with the sqlalchemy.url it is given in offline mode{}; nothing \
         was written",
        if *database_url {
            ", and DATABASE_URL is set in this environment (the usual env.py prefers it): unset \
             it for the import (env -u DATABASE_URL flotilla import ...)"
        } else {
            ": make run_migrations_offline() use config.get_main_option(\"sqlalchemy.url\") \
             (not an environment variable such as DATABASE_URL)"
        }
    )]
    DialectMismatch {
        revision: String,
        asked: Dialect,
        rendered: String,
        /// `DATABASE_URL` is set in the importing process's environment.
        database_url: bool,
    },
    #[error(
        "{} revision(s) would revise one that was not imported, so the set would not load; \
         nothing was written: {}; fix the revisions not imported (or write them by hand into \
         the set) and import again",
        .dependents.len(),
        .broken.join("; ")
    )]
    BrokenChain {
        /// Each skipped revision: "X (why) is revised by A, B".
        broken: Vec<String>,
        dependents: Vec<String>,
    },
    #[error("{} already exists and was not written by this import; choose an empty --into directory or remove it", path.display())]
    Exists { path: PathBuf },
}

/// What reading a source needs besides its path.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Dialects to render (Alembic only); the first one's SQL is the plain section.
    pub dialects: Vec<Dialect>,
    /// Python interpreter that has Alembic installed (Alembic only).
    pub python: String,
    /// SQLAlchemy URLs (only the dialect part matters) per dialect, replacing the defaults
    /// `postgresql://`, `mysql://`, `sqlite://` (Alembic only).
    pub urls: Vec<(Dialect, String)>,
}

/// Read a source directory (or, for Alembic, a project directory or its `alembic.ini`).
pub fn read(tool: Tool, source: &Path, opts: &ReadOptions) -> Result<ImportSet, ImportError> {
    let mut set = match tool {
        Tool::Flyway => flyway::read(source)?,
        Tool::Sqlx => sqlx::read(source)?,
        Tool::GolangMigrate => golang::read(source)?,
        Tool::Alembic => alembic::read(source, opts)?,
    };
    set.revisions.sort_by(|a, b| a.id.cmp(&b.id));
    set.problems
        .sort_by(|a, b| (&a.source, &a.revision).cmp(&(&b.source, &b.revision)));
    Ok(set)
}

/// The `.sql` files under `dir` (recursive, sorted, dot entries skipped), paths relative to
/// `dir` with `/` separators.
pub(crate) fn sql_files(tool: Tool, dir: &Path) -> Result<Vec<(String, String)>, ImportError> {
    if !dir.is_dir() {
        return Err(ImportError::NotASource {
            tool,
            path: dir.to_owned(),
        });
    }
    let files = flotilla_revision::load_dir(dir).map_err(|e| ImportError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut out = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let text = String::from_utf8(bytes).map_err(|_| ImportError::Io {
            path: path.clone(),
            source: std::io::Error::other("not UTF-8"),
        })?;
        out.push((rel, text));
    }
    out.sort();
    Ok(out)
}

/// Link a linear history (sorted by version) into parent chains.
pub(crate) fn chain(mut revisions: Vec<Imported>) -> Vec<Imported> {
    let mut prev: Option<String> = None;
    for r in &mut revisions {
        r.parents = prev.iter().cloned().collect();
        prev = Some(r.id.clone());
    }
    revisions
}

/// `_`-separated words of a file name stem as a description.
pub(crate) fn describe(stem: &str) -> String {
    stem.split('_')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[a-z0-9]+` words of `description` joined by `_`, at most 48 characters.
fn slug(description: &str) -> String {
    let mut s = String::new();
    for word in description
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if s.len() + word.len() + 1 > 48 && !s.is_empty() {
            break;
        }
        if !s.is_empty() {
            s.push('_');
        }
        s.push_str(&word.to_ascii_lowercase());
    }
    s.truncate(48);
    s
}

/// The file name for a revision: `<id>_<slug>.sql` (or `<id>.sql`).
pub fn file_name(r: &Imported) -> String {
    match slug(&r.description) {
        s if s.is_empty() => format!("{}.sql", r.id),
        s => format!("{}_{s}.sql", r.id),
    }
}

fn push_sql(out: &mut String, direction: &str, sql: &Sql) {
    let mut section = |marker: String, text: &str| {
        out.push('\n');
        out.push_str(&marker);
        out.push('\n');
        let text = text.trim();
        if !text.is_empty() {
            out.push_str(text);
            out.push('\n');
        }
    };
    section(format!("-- migrate:{direction}"), &sql.plain);
    for (d, text) in &sql.by_dialect {
        section(format!("-- migrate:{direction} {d}"), text);
    }
}

/// The revision file text (pure and deterministic: no dates, sorted inputs).
pub fn render_file(tool: Tool, r: &Imported) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = format!("-- revision: {}\n", r.id);
    if !r.parents.is_empty() {
        out.push_str(&format!("-- revises: {}\n", r.parents.join(", ")));
    }
    let description = one_line(&r.description);
    if !description.is_empty() {
        out.push_str(&format!("-- description: {description}\n"));
    }
    out.push_str(&format!("-- transactional: {}\n", r.transactional));
    out.push_str(&format!(
        "-- imported from {tool} {} by flotilla import\n",
        one_line(&r.source)
    ));
    if !r.branch_labels.is_empty() {
        out.push_str(&format!(
            "-- alembic branch labels {}\n",
            r.branch_labels.join(", ")
        ));
    }
    push_sql(&mut out, "up", &r.up);
    if let Some(down) = &r.down {
        push_sql(&mut out, "down", down);
    }
    out
}

/// One written file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub revision: String,
    pub parents: Vec<String>,
    pub path: PathBuf,
    /// Up checksum per dialect (what targets record when they apply it).
    pub checksums: std::collections::BTreeMap<String, String>,
}

/// Marker of a file this import wrote (a second run may overwrite it).
const MARK: &str = "by flotilla import\n";

/// Render every revision, check each file with the Flotilla parser (a revision that does not
/// parse becomes a problem), and write them into `into`. A file of the same name that this
/// import did not write is refused; one it wrote is overwritten (same bytes on a rerun).
pub fn write(set: &mut ImportSet, into: &Path) -> Result<Vec<Written>, ImportError> {
    let mut files = Vec::new();
    let mut kept = Vec::new();
    for r in std::mem::take(&mut set.revisions) {
        let name = file_name(&r);
        let text = render_file(set.tool, &r);
        match flotilla_revision::parse_file(Path::new(&name), text.as_bytes()) {
            Ok(parsed) => {
                files.push((into.join(&name), text, parsed));
                kept.push(r);
            }
            Err(errs) => set.problems.push(Problem {
                revision: r.id.clone(),
                source: r.source.clone(),
                reason: format!(
                    "the converted file does not parse: {}",
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }),
        }
    }
    set.revisions = kept;
    refuse_broken_chains(set)?;
    std::fs::create_dir_all(into).map_err(|source| ImportError::Io {
        path: into.to_owned(),
        source,
    })?;
    for (path, _, _) in &files {
        if let Ok(old) = std::fs::read_to_string(path)
            && !old.contains(MARK)
        {
            return Err(ImportError::Exists { path: path.clone() });
        }
    }
    let mut out = Vec::with_capacity(files.len());
    for (path, text, parsed) in files {
        std::fs::write(&path, text.as_bytes()).map_err(|source| ImportError::Io {
            path: path.clone(),
            source,
        })?;
        out.push(Written {
            revision: parsed.id.clone(),
            parents: parsed.parents.clone(),
            checksums: Dialect::ALL
                .iter()
                .map(|d| (d.to_string(), parsed.up_checksum(*d)))
                .collect(),
            path,
        });
    }
    Ok(out)
}

/// Refuse a set where a revision to be written revises (directly or through others) one that
/// was not imported: the written set would not load.
fn refuse_broken_chains(set: &ImportSet) -> Result<(), ImportError> {
    use std::collections::{BTreeMap, BTreeSet};
    let written: BTreeSet<&str> = set.revisions.iter().map(|r| r.id.as_str()).collect();
    let skipped: BTreeMap<&str, &str> = set
        .problems
        .iter()
        .filter(|p| !p.revision.is_empty() && !written.contains(p.revision.as_str()))
        .map(|p| (p.revision.as_str(), p.reason.as_str()))
        .collect();
    // Which skipped revision each written one descends from, to a fixpoint (sets are small).
    let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    loop {
        let mut changed = false;
        for r in &set.revisions {
            for p in &r.parents {
                let mut roots: BTreeSet<&str> = BTreeSet::new();
                if skipped.contains_key(p.as_str()) {
                    roots.insert(p.as_str());
                }
                if let Some(up) = missing.get(p.as_str()) {
                    roots.extend(up.iter().copied());
                }
                let entry = missing.entry(r.id.as_str()).or_default();
                let before = entry.len();
                entry.extend(roots);
                changed |= entry.len() != before;
            }
        }
        if !changed {
            break;
        }
    }
    missing.retain(|_, roots| !roots.is_empty());
    if missing.is_empty() {
        return Ok(());
    }
    let broken = skipped
        .iter()
        .filter_map(|(id, why)| {
            let by: Vec<&str> = missing
                .iter()
                .filter(|(_, roots)| roots.contains(id))
                .map(|(r, _)| *r)
                .collect();
            (!by.is_empty()).then(|| format!("{id} ({why}) is revised by {}", by.join(", ")))
        })
        .collect();
    Err(ImportError::BrokenChain {
        broken,
        dependents: missing.keys().map(|s| s.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imported(id: &str, parents: &[&str]) -> Imported {
        Imported {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            description: String::new(),
            transactional: true,
            up: Sql::plain("SELECT 1;"),
            down: None,
            branch_labels: vec![],
            source: format!("{id}.py"),
        }
    }

    #[test]
    fn a_set_revising_a_skipped_revision_is_not_written() {
        let into = tempfile::tempdir().unwrap();
        let mut set = ImportSet {
            tool: Tool::Alembic,
            revisions: vec![
                imported("a", &[]),
                imported("c", &["b"]),
                imported("d", &["c"]),
            ],
            problems: vec![Problem {
                revision: "b".into(),
                source: "b.py".into(),
                reason: "upgrade: no SQL".into(),
            }],
            warnings: vec![],
        };
        let err = write(&mut set, into.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "2 revision(s) would revise one that was not imported, so the set would not load; \
             nothing was written: b (upgrade: no SQL) is revised by c, d; fix the revisions not \
             imported (or write them by hand into the set) and import again"
        );
        assert_eq!(std::fs::read_dir(into.path()).unwrap().count(), 0);
        // A skipped head breaks nothing: the rest is written.
        let mut set = ImportSet {
            tool: Tool::Alembic,
            revisions: vec![imported("a", &[])],
            problems: vec![Problem {
                revision: "b".into(),
                source: "b.py".into(),
                reason: "upgrade: no SQL".into(),
            }],
            warnings: vec![],
        };
        assert_eq!(write(&mut set, into.path()).unwrap().len(), 1);
    }

    #[test]
    fn rendered_files_parse_and_keep_ids_parents_and_sql() {
        let r = Imported {
            id: "ae1027a6acf".into(),
            parents: vec!["1975ea83b712".into(), "27c6a30d7c24".into()],
            description: "merge\n heads".into(),
            transactional: true,
            up: Sql {
                plain: "CREATE TABLE t (id int);\n".into(),
                by_dialect: vec![(Dialect::Mysql, "CREATE TABLE t (id integer);".into())],
            },
            down: Some(Sql::plain("DROP TABLE t;")),
            branch_labels: vec!["billing".into()],
            source: "versions/ae1027a6acf_merge.py".into(),
        };
        let text = render_file(Tool::Alembic, &r);
        expect_test::expect![[r#"
            -- revision: ae1027a6acf
            -- revises: 1975ea83b712, 27c6a30d7c24
            -- description: merge heads
            -- transactional: true
            -- imported from alembic versions/ae1027a6acf_merge.py by flotilla import
            -- alembic branch labels billing

            -- migrate:up
            CREATE TABLE t (id int);

            -- migrate:up mysql
            CREATE TABLE t (id integer);

            -- migrate:down
            DROP TABLE t;
        "#]]
        .assert_eq(&text);
        let parsed = flotilla_revision::parse_file(Path::new("x.sql"), text.as_bytes()).unwrap();
        assert_eq!(parsed.parents, r.parents);
        assert_eq!(parsed.up_sql(Dialect::Postgres), "CREATE TABLE t (id int);");
        assert_eq!(
            parsed.up_sql(Dialect::Mysql),
            "CREATE TABLE t (id integer);"
        );
        assert_eq!(parsed.down_sql(Dialect::Sqlite), Some("DROP TABLE t;"));
        assert_eq!(file_name(&r), "ae1027a6acf_merge_heads.sql");
    }
}
