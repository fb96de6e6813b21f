//! Who holds the lock a step waits for: read on a second connection while the step waits
//! (PostgreSQL `pg_blocking_pids` + `pg_stat_activity`; MariaDB `METADATA_LOCK_INFO` when the
//! plugin is loaded, else the open InnoDB transactions), and how it reads in a failure message.

use std::fmt;

/// Longest query text quoted in a message.
pub const MAX_QUERY_CHARS: usize = 120;

/// A session that holds (or, where the server cannot tell, may hold) the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// Backend pid (PostgreSQL) or connection id (MySQL).
    pub pid: u64,
    /// What it runs, or last ran when idle; `None` when the server does not say.
    pub query: Option<String>,
    /// `active`, `idle in transaction`, `Sleep`...
    pub state: Option<String>,
}

/// The lock a session waits for and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockBlock {
    /// The table, when the server names it.
    pub table: Option<String>,
    pub blockers: Vec<Blocker>,
    /// The blockers are sessions with open transactions, not known lock holders (MariaDB
    /// without the `metadata_lock_info` plugin).
    pub guessed: bool,
}

impl LockBlock {
    /// "the lock on t" or "a lock".
    pub fn what(&self) -> String {
        match &self.table {
            Some(t) => format!("the lock on {t}"),
            None => "a lock".to_owned(),
        }
    }
}

/// `s` cut to [`MAX_QUERY_CHARS`] characters on one line.
pub fn truncate_query(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_QUERY_CHARS {
        return one_line;
    }
    let cut: String = one_line.chars().take(MAX_QUERY_CHARS).collect();
    format!("{cut}...")
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(state) = self.state.as_deref().filter(|s| !s.is_empty()) {
            write!(f, " ({state})")?;
        }
        match self.query.as_deref().filter(|q| !q.trim().is_empty()) {
            Some(q) => write!(f, " running {}", truncate_query(q)),
            None => write!(f, " (no statement shown)"),
        }
    }
}

/// "blocked by pid 12 (idle in transaction) running SELECT ..., pid 13 ..." — what a
/// failure message says about the holders.
impl fmt::Display for LockBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.blockers.is_empty() {
            return write!(f, "the holder was not seen");
        }
        let by = if self.guessed {
            "probably blocked by an open transaction:"
        } else {
            "blocked by"
        };
        write!(f, "{by} ")?;
        for (i, b) in self.blockers.iter().take(3).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{b}")?;
        }
        if self.blockers.len() > 3 {
            write!(f, " and {} more", self.blockers.len() - 3)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_as_the_holders_and_their_queries() {
        let b = LockBlock {
            table: Some("accounts".into()),
            blockers: vec![Blocker {
                pid: 42,
                query: Some(format!(
                    "SELECT *\n  FROM accounts WHERE {}",
                    "x = 1 AND ".repeat(20)
                )),
                state: Some("idle in transaction".into()),
            }],
            guessed: false,
        };
        let text = b.to_string();
        assert!(
            text.starts_with(
                "blocked by pid 42 (idle in transaction) running SELECT * FROM accounts WHERE x = 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("..."), "{text}");
        assert_eq!(b.what(), "the lock on accounts");
        let none = LockBlock::default();
        assert_eq!(none.to_string(), "the holder was not seen");
        assert_eq!(none.what(), "a lock");
    }
}
