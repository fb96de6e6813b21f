//! golang-migrate directories: `<version>_<title>.up.sql` + `<version>_<title>.down.sql`, in
//! version order. The revision id is the version as `schema_migrations` records it (the
//! integer, no leading zeros).

use std::collections::BTreeMap;
use std::path::Path;

use super::{ImportError, ImportSet, Imported, Problem, Sql, Tool, chain, describe, sql_files};

/// `000001_create_users.up.sql` → (1, "create users", true).
fn parse_name(name: &str) -> Option<(u64, String, bool)> {
    let stem = name.strip_suffix(".sql")?;
    let (stem, up) = match (stem.strip_suffix(".up"), stem.strip_suffix(".down")) {
        (Some(s), _) => (s, true),
        (_, Some(s)) => (s, false),
        _ => return None,
    };
    let (version, title) = stem.split_once('_').unwrap_or((stem, ""));
    let version: u64 = version.parse().ok()?;
    Some((version, describe(title), up))
}

pub fn read(dir: &Path) -> Result<ImportSet, ImportError> {
    let mut ups: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    let mut downs: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (rel, text) in sql_files(Tool::GolangMigrate, dir)? {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        match parse_name(name) {
            Some((version, desc, true)) => {
                if let Some((first, ..)) = ups.get(&version) {
                    return Err(ImportError::DuplicateVersion {
                        tool: Tool::GolangMigrate,
                        version: version.to_string(),
                        first: first.clone(),
                        second: rel,
                    });
                }
                ups.insert(version, (rel, desc, text));
            }
            Some((version, _, false)) => {
                downs.insert(version, (rel, text));
            }
            None => problems.push(Problem {
                revision: String::new(),
                source: rel,
                reason:
                    "not a golang-migrate name (<version>_<title>.up.sql / .down.sql): not imported"
                        .into(),
            }),
        }
    }
    let mut revisions = Vec::with_capacity(ups.len());
    for (version, (rel, desc, text)) in &ups {
        revisions.push(Imported {
            id: version.to_string(),
            parents: vec![],
            description: desc.clone(),
            transactional: true,
            up: Sql::plain(text.clone()),
            down: downs.get(version).map(|(_, t)| Sql::plain(t.clone())),
            branch_labels: vec![],
            source: rel.clone(),
        });
    }
    for (version, (rel, _)) in &downs {
        if !ups.contains_key(version) {
            problems.push(Problem {
                revision: version.to_string(),
                source: rel.clone(),
                reason: format!("down migration without {version}_*.up.sql: not imported"),
            });
        }
    }
    Ok(ImportSet {
        tool: Tool::GolangMigrate,
        revisions: chain(revisions),
        problems,
        warnings: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_name("000001_create_users.up.sql"),
            Some((1, "create users".into(), true))
        );
        assert_eq!(parse_name("2_x.down.sql"), Some((2, "x".into(), false)));
        assert_eq!(parse_name("3_y.sql"), None);
    }
}
