//! Small shared vocabulary: dialects, step directions, checksums and target ids.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The SQL dialect of a target database.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl Dialect {
    pub const ALL: [Dialect; 3] = [Dialect::Postgres, Dialect::Mysql, Dialect::Sqlite];

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// OpenTelemetry's `db.system` name of the dialect (MariaDB is served as `mysql`).
    pub fn db_system(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgresql",
            Dialect::Mysql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a dialect name that is not postgres, mysql or sqlite.
#[derive(Debug, thiserror::Error)]
#[error("unknown dialect {0:?}: expected postgres, mysql or sqlite")]
pub struct UnknownDialect(pub String);

impl FromStr for Dialect {
    type Err = UnknownDialect;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "pg" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::Mysql),
            "sqlite" | "sqlite3" => Ok(Dialect::Sqlite),
            _ => Err(UnknownDialect(s.to_owned())),
        }
    }
}

/// Whether a step applies a revision (up) or removes it (down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hex SHA-256 of a section's text, exactly as written: the migration checksum.
pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// The checksum of an up step with its `-- migrate:check` and `-- migrate:verify` sections:
/// `checksum(up)` when both are empty (so revisions without them keep their checksums), else
/// the hex SHA-256 of `up`, then `"\n-- migrate:check\n"` + `check` when there is one, then
/// `"\n-- migrate:verify\n"` + `verify` when there is one. A parsed section never contains a
/// marker line, so the composition is unambiguous. Editing a check or verify is detected like
/// editing the up section.
pub fn step_checksum(up: &str, check: &str, verify: &str) -> String {
    if check.is_empty() && verify.is_empty() {
        return checksum(up);
    }
    let mut h = Sha256::new();
    h.update(up.as_bytes());
    if !check.is_empty() {
        h.update(b"\n-- migrate:check\n");
        h.update(check.as_bytes());
    }
    if !verify.is_empty() {
        h.update(b"\n-- migrate:verify\n");
        h.update(verify.as_bytes());
    }
    hex::encode(h.finalize())
}

/// True for a valid revision id: `[A-Za-z0-9_.-]{1,128}`.
pub fn is_valid_revision_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A secret string (database URL, password): `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value; call only where it is handed to a database driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            checksum(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn step_checksum_covers_check_and_verify_only_when_present() {
        assert_eq!(step_checksum("SELECT 1;", "", ""), checksum("SELECT 1;"));
        assert_eq!(
            step_checksum("A;", "B;", ""),
            checksum("A;\n-- migrate:check\nB;")
        );
        assert_eq!(
            step_checksum("A;", "B;", "C;"),
            checksum("A;\n-- migrate:check\nB;\n-- migrate:verify\nC;")
        );
        assert_ne!(step_checksum("A;", "B;", ""), step_checksum("A;", "", "B;"));
    }

    #[test]
    fn revision_ids() {
        assert!(is_valid_revision_id("0001_init.v2-a"));
        assert!(!is_valid_revision_id(""));
        assert!(!is_valid_revision_id("a b"));
        assert!(!is_valid_revision_id(&"a".repeat(129)));
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("postgres://u:hunter2@h/db");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
