//! sqlx directories: `<version>_<description>.sql` (irreversible) or `<version>_<description>
//! .up.sql` + `.down.sql`, in version order. A first line `-- no-transaction` makes the
//! revision non-transactional. The revision id is the version as `_sqlx_migrations` records
//! it (the integer, no leading zeros).

use std::collections::BTreeMap;
use std::path::Path;

use super::{ImportError, ImportSet, Imported, Problem, Sql, Tool, chain, describe, sql_files};

/// `20240101_add_users.up.sql` → (version, description, Some(true) up / Some(false) down /
/// None simple).
fn parse_name(name: &str) -> Option<(i64, String, Option<bool>)> {
    let stem = name.strip_suffix(".sql")?;
    let (stem, kind) = if let Some(s) = stem.strip_suffix(".up") {
        (s, Some(true))
    } else if let Some(s) = stem.strip_suffix(".down") {
        (s, Some(false))
    } else {
        (stem, None)
    };
    let (version, description) = stem.split_once('_')?;
    let version: i64 = version.parse().ok()?;
    Some((version, describe(description), kind))
}

fn no_transaction(sql: &str) -> bool {
    sql.lines()
        .next()
        .is_some_and(|l| l.trim() == "-- no-transaction")
}

pub fn read(dir: &Path) -> Result<ImportSet, ImportError> {
    let mut ups: BTreeMap<i64, (String, String, String)> = BTreeMap::new();
    let mut downs: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (rel, text) in sql_files(Tool::Sqlx, dir)? {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        match parse_name(name) {
            Some((version, _, Some(false))) => {
                downs.insert(version, (rel, text));
            }
            Some((version, desc, _)) => {
                if let Some((first, ..)) = ups.get(&version) {
                    return Err(ImportError::DuplicateVersion {
                        tool: Tool::Sqlx,
                        version: version.to_string(),
                        first: first.clone(),
                        second: rel,
                    });
                }
                ups.insert(version, (rel, desc, text));
            }
            None => problems.push(Problem {
                revision: String::new(),
                source: rel,
                reason: "not a sqlx migration name (<version>_<description>[.up|.down].sql): not imported".into(),
            }),
        }
    }
    let mut revisions = Vec::with_capacity(ups.len());
    for (version, (rel, desc, text)) in &ups {
        revisions.push(Imported {
            id: version.to_string(),
            parents: vec![],
            description: desc.clone(),
            transactional: !no_transaction(text),
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
        tool: Tool::Sqlx,
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
            parse_name("20240101120000_add_users.up.sql"),
            Some((20240101120000, "add users".into(), Some(true)))
        );
        assert_eq!(parse_name("0002_x.sql"), Some((2, "x".into(), None)));
        assert_eq!(
            parse_name("3_y.down.sql"),
            Some((3, "y".into(), Some(false)))
        );
        assert_eq!(parse_name("init.sql"), None);
        assert!(no_transaction(
            "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);"
        ));
    }
}
