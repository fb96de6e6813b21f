//! The stamp of a SQLite database's files (the database, its WAL and its rollback journal):
//! what a cached status read depends on. Any committed write changes it.
//!
//! A database in rollback-journal mode also carries a *file change counter* in its header
//! (offset 24), which every committed write transaction increments (SQLite's file format,
//! section 1.3.8; not in WAL mode, where commits go to the WAL). The stamp holds it, so a
//! state read between two equal stamps of such a database is known current without waiting
//! for the files to settle (a write in the same timestamp tick still changes the counter).

use std::path::{Path, PathBuf};

/// A file's identity and metadata: any committed write changes it (size, mtime or ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileMeta {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileMeta {
    fn of(m: &std::fs::Metadata) -> FileMeta {
        use std::os::unix::fs::MetadataExt;
        FileMeta {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    fn newest_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// The database file with its WAL and rollback journal: what a cached state depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    db: FileMeta,
    wal: Option<FileMeta>,
    journal: Option<FileMeta>,
    /// The header's file change counter, for a database in rollback-journal mode (header
    /// bytes 18 and 19 both 1); None in WAL mode or when the header cannot be read.
    counter: Option<u32>,
}

/// The change counter of a database header in rollback-journal mode.
fn change_counter(header: &[u8]) -> Option<u32> {
    if header.len() < 28 || !header.starts_with(b"SQLite format 3\0") {
        return None;
    }
    if header[18] != 1 || header[19] != 1 {
        return None;
    }
    Some(u32::from_be_bytes([
        header[24], header[25], header[26], header[27],
    ]))
}

fn read_counter(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut header = [0u8; 28];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    change_counter(&header)
}

/// How long the files must have been unchanged before a state read from them is cached: a
/// write within the file system's timestamp granularity of the read could otherwise leave
/// every stamp as it was (git's "racy clean" problem, handled the same way).
pub(super) const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

impl FileStamp {
    /// Stat the three files; None when the database file does not exist.
    pub(super) async fn read(path: &Path) -> Option<FileStamp> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let counter = read_counter(&path);
            let db = std::fs::metadata(&path).ok()?;
            let sibling = |suffix: &str| {
                let mut s = path.clone().into_os_string();
                s.push(suffix);
                std::fs::metadata(PathBuf::from(s))
                    .ok()
                    .map(|m| FileMeta::of(&m))
            };
            Some(FileStamp {
                db: FileMeta::of(&db),
                wal: sibling("-wal"),
                journal: sibling("-journal"),
                counter,
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether the stamp holds a change counter (rollback-journal mode): then two equal
    /// stamps mean no write committed between them, however recent the files' times.
    pub(super) fn counted(&self) -> bool {
        self.counter.is_some()
    }

    /// Whether every file was last changed at least [`SETTLED`] before `now`.
    pub(super) fn settled(&self, now: std::time::SystemTime) -> bool {
        let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let newest = [Some(self.db), self.wal, self.journal]
            .into_iter()
            .flatten()
            .map(|m| m.newest_ns())
            .max()
            .unwrap_or(0);
        i128::try_from(now.saturating_sub(SETTLED).as_nanos()).is_ok_and(|t| newest < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_commit_in_rollback_mode_changes_the_counter_and_wal_mode_has_none() {
        use sqlx::{Connection, SqliteConnection};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap();
        let mut last = FileStamp::read(&path).await.unwrap();
        assert!(last.counted(), "{last:?}");
        for _ in 0..3 {
            // Same size, and likely the same timestamp tick: only the counter tells.
            sqlx::raw_sql("UPDATE t SET v = v + 1")
                .execute(&mut conn)
                .await
                .unwrap();
            let now = FileStamp::read(&path).await.unwrap();
            assert_eq!(now.db.len, last.db.len);
            assert_eq!(now.counter, last.counter.map(|c| c + 1), "{now:?}");
            last = now;
        }
        sqlx::raw_sql("PRAGMA journal_mode = WAL")
            .execute(&mut conn)
            .await
            .unwrap();
        let wal = FileStamp::read(&path).await.unwrap();
        assert!(!wal.counted(), "{wal:?}");
    }
}
