//! Flyway directories: `V<version>__<description>.sql` (versioned, in version order),
//! `U<version>__<description>.sql` (undo: the down section). Repeatable `R__*.sql` files and
//! other names are problems. `executeInTransaction=false` in a `<file>.conf` makes the
//! revision non-transactional. The revision id is the version with `_` read as `.`, as
//! Flyway records it in `flyway_schema_history`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;

use super::{ImportError, ImportSet, Imported, Problem, Sql, Tool, chain, describe, sql_files};

/// A Flyway version compared as Flyway does: dot-separated numbers.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<String> {
        s.split('.')
            .map(|p| p.trim_start_matches('0').to_owned())
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).map_or("", String::as_str);
        let y = pb.get(i).map_or("", String::as_str);
        match x.len().cmp(&y.len()).then_with(|| x.cmp(y)) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

/// `V1_2__add_users.sql` → (`'V'`, `"1.2"`, `"add users"`).
fn parse_name(name: &str) -> Option<(char, String, String)> {
    let stem = name.strip_suffix(".sql")?;
    let prefix = stem.chars().next()?;
    let (version, description) = stem[1..].split_once("__")?;
    if !matches!(prefix, 'V' | 'U') {
        return None;
    }
    let version = version.replace('_', ".");
    let valid = !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| (prefix, version, describe(description)))
}

pub fn read(dir: &Path) -> Result<ImportSet, ImportError> {
    let mut ups: BTreeMap<String, (String, String, String)> = BTreeMap::new(); // version -> (file, desc, sql)
    let mut downs: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (rel, text) in sql_files(Tool::Flyway, dir)? {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        match parse_name(name) {
            Some(('V', version, desc)) => {
                if let Some((first, ..)) = ups.get(&version) {
                    return Err(ImportError::DuplicateVersion {
                        tool: Tool::Flyway,
                        version,
                        first: first.clone(),
                        second: rel,
                    });
                }
                ups.insert(version, (rel, desc, text));
            }
            Some((_, version, _)) => {
                downs.insert(version, (rel, text));
            }
            None => problems.push(Problem {
                revision: String::new(),
                reason: if name.starts_with("R__") {
                    "repeatable migrations have no version: not imported; re-create it as a revision".into()
                } else {
                    "not a Flyway migration name (V<version>__<description>.sql): not imported"
                        .into()
                },
                source: rel,
            }),
        }
    }
    let mut versions: Vec<&String> = ups.keys().collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    let mut revisions = Vec::with_capacity(versions.len());
    for version in versions {
        let (rel, desc, text) = &ups[version];
        let conf = dir.join(format!("{rel}.conf"));
        let transactional = !std::fs::read_to_string(&conf).is_ok_and(|c| {
            c.lines().any(|l| {
                l.split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "executeInTransaction" && v.trim().eq_ignore_ascii_case("false")
                })
            })
        });
        revisions.push(Imported {
            id: version.clone(),
            parents: vec![],
            description: desc.clone(),
            transactional,
            up: Sql::plain(text.clone()),
            down: downs.get(version).map(|(_, t)| Sql::plain(t.clone())),
            branch_labels: vec![],
            source: rel.clone(),
        });
    }
    for (version, (rel, _)) in &downs {
        if !ups.contains_key(version) {
            problems.push(Problem {
                revision: version.clone(),
                source: rel.clone(),
                reason: format!("undo migration without V{version}__*.sql: not imported"),
            });
        }
    }
    Ok(ImportSet {
        tool: Tool::Flyway,
        revisions: chain(revisions),
        problems,
        warnings: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_version_order() {
        assert_eq!(
            parse_name("V1_2__add_users.sql"),
            Some(('V', "1.2".into(), "add users".into()))
        );
        assert_eq!(parse_name("R__views.sql"), None);
        assert_eq!(parse_name("V1__.sql"), Some(('V', "1".into(), "".into())));
        assert_eq!(parse_name("Vx__a.sql"), None);
        let mut v = vec!["10", "2", "1.10", "1.2", "1.2.1"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1.2", "1.2.1", "1.10", "2", "10"]);
    }
}
