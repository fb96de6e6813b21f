//! Backups taken before destructive steps: the record kept on the target
//! (`flotilla_backups`), the names of the copies, and the restore plan. Pure; the drivers
//! (`driver/{postgres,mysql,sqlite}/backup.rs`) run the SQL.
//!
//! PostgreSQL and MySQL copy each table into a table `flotilla_bk_*` beside it (same schema or
//! database, so schema-per-tenant targets never collide, no privilege beyond the `CREATE`
//! the migrations need, and the schema fingerprint ignores it like every `flotilla_*` table);
//! SQLite copies the whole database with `VACUUM INTO` a file in `<db>.flotilla-backups/`
//! beside it. A restore puts the data back: a missing table is recreated from the copy; for an
//! existing table the columns the copy has and the table lacks are added back and filled by
//! primary key, and the copy's rows whose key is missing are inserted (a table without a
//! primary key gets its rows back only when it is empty). Nothing is deleted.

use sha2::{Digest, Sha256};

/// One backed-up table, as `flotilla_backups` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub id: i64,
    pub rollout_id: String,
    pub revision: String,
    /// The table as the step's SQL names it.
    pub table: String,
    /// The copy: a table name (PostgreSQL, MySQL) or a file path (SQLite).
    pub location: String,
    pub rows: u64,
    pub bytes: u64,
    pub created_at_ms: i64,
    /// 0 until restored.
    pub restored_at_ms: i64,
}

/// Longest table name a step may ask to back up.
pub const MAX_TABLE_LEN: usize = 192;

/// A table name as SQL writes it: identifier characters, `.` between parts, quotes.
pub fn is_valid_table(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TABLE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$' | b'"' | b'`'))
}

/// The unquoted, unqualified name (`"public"."Users"` → `Users`): what catalogs list.
pub fn bare_name(table: &str) -> String {
    let last = table.rsplit('.').next().unwrap_or(table);
    last.trim_matches(|c| c == '"' || c == '`').to_owned()
}

fn slug(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(max);
    out
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..4])
}

/// The copy's table name: `flotilla_bk_<rollout>_<revision>_<table>_<hash>`, readable parts
/// shortened so it fits PostgreSQL's 63 and MySQL's 64 bytes; the hash of the full names
/// keeps it unique.
pub fn backup_table_name(rollout_id: &str, revision: &str, table: &str) -> String {
    format!(
        "flotilla_bk_{}_{}_{}_{}",
        slug(rollout_id, 8),
        slug(revision, 14),
        slug(&bare_name(table), 14),
        short_hash(&[rollout_id, revision, table])
    )
}

/// The SQLite copy's file name inside `<db>.flotilla-backups/`.
pub fn backup_file_name(rollout_id: &str, revision: &str) -> String {
    format!(
        "{}_{}_{}.db",
        slug(rollout_id, 40),
        slug(revision, 60),
        short_hash(&[rollout_id, revision])
    )
}

/// Which backups a prune removes: all but those of the newest `keep` rollouts (by the
/// newest backup of each rollout).
pub fn to_prune(records: &[BackupRecord], keep: usize) -> Vec<BackupRecord> {
    let mut rollouts: Vec<(&str, i64)> = Vec::new();
    for r in records {
        match rollouts.iter_mut().find(|(id, _)| *id == r.rollout_id) {
            Some((_, at)) => *at = (*at).max(r.created_at_ms),
            None => rollouts.push((&r.rollout_id, r.created_at_ms)),
        }
    }
    rollouts.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
    let kept: Vec<&str> = rollouts.iter().take(keep).map(|(id, _)| *id).collect();
    records
        .iter()
        .filter(|r| !kept.contains(&r.rollout_id.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_identifier_limits_and_differ() {
        let a = backup_table_name(
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            &"r".repeat(128),
            "\"public\".\"Users\"",
        );
        assert!(a.len() <= 63, "{a}");
        assert!(
            a.starts_with("flotilla_bk_0190a1b2_rrrrrrrrrrrrrr_users_"),
            "{a}"
        );
        let b = backup_table_name(
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
            &"r".repeat(128),
            "users",
        );
        assert_ne!(a, b);
        assert_eq!(bare_name("`db`.`t`"), "t");
        assert!(is_valid_table("\"public\".\"Users\""));
        assert!(!is_valid_table("users; DROP TABLE x"));
    }

    #[test]
    fn prune_keeps_the_newest_rollouts() {
        let rec = |rollout: &str, at: i64| BackupRecord {
            id: at,
            rollout_id: rollout.into(),
            revision: "r".into(),
            table: "t".into(),
            location: String::new(),
            rows: 0,
            bytes: 0,
            created_at_ms: at,
            restored_at_ms: 0,
        };
        let all = [rec("a", 1), rec("b", 2), rec("b", 3), rec("c", 4)];
        let gone: Vec<String> = to_prune(&all, 2)
            .into_iter()
            .map(|r| r.rollout_id)
            .collect();
        assert_eq!(gone, ["a"]);
        assert_eq!(to_prune(&all, 0).len(), 4);
    }
}
