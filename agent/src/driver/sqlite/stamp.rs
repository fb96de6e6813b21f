//! The stamp of a SQLite database's files (the database, its WAL and its rollback journal):
//! what a cached status read depends on. Any committed write changes it.

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
            })
        })
        .await
        .ok()
        .flatten()
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
