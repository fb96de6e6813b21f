//! Embedded state store: `state_dir/state.db` in SQLite (WAL), fenced by a token row.
//!
//! Tables: `kv(key, value)` for fenced state, `leased(key, value, expires_at_ms)` for
//! self-expiring registrations (wall-clock expiry, so it survives restarts), and
//! `fence(id = 1, token)` which [`super::FileFleetLock`] bumps on every acquisition and
//! release. A fenced write reads `fence.token` inside the same `BEGIN IMMEDIATE` transaction as
//! its puts and deletes, so a stale holder can never commit after a newer one acquired.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::AssertSqlSafe;
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::{broadcast, mpsc};

use crate::fence::FenceSignals;
use crate::store::{StateStore, StoreError, WATCH_CHANNEL_DEPTH, WriteOp, dedup_ops};

/// How often a SQLite prefix watch re-reads the prefix to notice changes made by other
/// processes and expired leased keys (changes made through this store are pushed at once).
const WATCH_POLL: Duration = Duration::from_millis(250);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leased (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, \
     expires_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fence (id INTEGER PRIMARY KEY CHECK (id = 1), \
     token INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO fence (id, token) VALUES (1, 0)",
];

/// A failed SQLite statement: what was being done, and sqlx's error.
#[derive(Debug, thiserror::Error)]
#[error("sqlite {what}: {source}")]
struct SqliteError {
    what: &'static str,
    #[source]
    source: sqlx::Error,
}

/// A busy or locked database (another process holds the write lock) is worth retrying.
fn db_err(what: &'static str, source: sqlx::Error) -> StoreError {
    let busy = matches!(&source, sqlx::Error::PoolTimedOut)
        || matches!(&source, sqlx::Error::Database(d) if d.message().contains("locked") || d.message().contains("busy"));
    let e = Box::new(SqliteError { what, source });
    if busy {
        StoreError::Unavailable(e)
    } else {
        StoreError::Other(e)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Open (creating if needed) `path` in WAL mode and create the schema.
pub(crate) async fn open_pool(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode survives a process crash; a power cut can lose the last few
        // transitions, which resumption tolerates: every target is re-planned from its
        // agent's own report, and the agents' history tables are the record of what ran.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        // A page cache of 1 MiB per connection, not SQLite's 2 MB: the records of a large
        // rollout are written once and read whole, so a larger cache holds pages nobody
        // reads again (on SQLite's own heap, outside the coordinator's allocator); the
        // operating system keeps the file's pages anyway. README, Performance: Scale.
        .pragma("cache_size", "-1024");
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&pool).await?;
    }
    Ok(pool)
}

/// Increment the fence token and return the new value. With `only_if = Some(t)` the bump
/// only happens while the token is still `t` (release), returning `None` otherwise.
pub(crate) async fn bump_fence(
    pool: &SqlitePool,
    only_if: Option<u64>,
) -> Result<Option<u64>, sqlx::Error> {
    let row: Option<i64> = match only_if {
        None => {
            sqlx::query_scalar("UPDATE fence SET token = token + 1 WHERE id = 1 RETURNING token")
                .fetch_optional(pool)
                .await?
        }
        Some(t) => {
            let t = i64::try_from(t).unwrap_or(i64::MAX);
            sqlx::query_scalar(
                "UPDATE fence SET token = token + 1 WHERE id = 1 AND token = ? RETURNING token",
            )
            .bind(t)
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(row.and_then(|t| u64::try_from(t).ok()))
}

/// State store on SQLite.
pub(crate) struct SqliteStateStore {
    pool: SqlitePool,
    signals: Arc<FenceSignals>,
    /// Keys changed through this store, for in-process watchers.
    changes: broadcast::Sender<String>,
}

impl SqliteStateStore {
    pub(crate) fn new(pool: SqlitePool, signals: Arc<FenceSignals>) -> Self {
        let (changes, _) = broadcast::channel(WATCH_CHANNEL_DEPTH);
        Self {
            pool,
            signals,
            changes,
        }
    }

    fn notify(&self, key: &str) {
        // No receivers is fine.
        let _ = self.changes.send(key.to_owned());
    }
}

/// Keys per multi-row statement (2 variables each, far below SQLite's limit of 32,766).
const ROWS_PER_STATEMENT: usize = 200;

/// `DELETE FROM <table> WHERE key IN (...)`; `table` is one of ours.
async fn delete_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    table: &'static str,
    keys: &[&str],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM {table} WHERE key IN ({})",
        vec!["?"; keys.len()].join(", ")
    );
    let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
    for key in keys {
        q = q.bind(*key);
    }
    q.execute(&mut **tx)
        .await
        .map_err(|e| db_err("delete", e))?;
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`, if any.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The listing statement: the live keys from `?1` (and below `?2` when `$upper` says so),
/// by key; `?3` is now.
macro_rules! list_sql {
    ($upper:literal) => {
        concat!(
            "SELECT key, value FROM ( SELECT key, value FROM kv WHERE key >= ?1",
            $upper,
            " UNION ALL SELECT key, value FROM leased WHERE key >= ?1",
            $upper,
            " AND expires_at_ms > ?3 ) ORDER BY key"
        )
    };
}

/// The live keys from `?1` up to `?2` (excluded).
const LIST_RANGE: &str = list_sql!(" AND key < ?2");

/// The live keys from `?1` on (a prefix without an upper bound).
const LIST_FROM: &str = list_sql!("");

/// The live keys under `prefix`. The upper bound is in the statement only when there is
/// one: SQLite searches the key index with both bounds only when both are plain
/// comparisons (with `(?2 IS NULL OR key < ?2)` it searched from the prefix to the end of
/// the index: each listing of `rollouts/` visited every target record after it, 9 ms for
/// 13 rollouts among 130,000 records, growing with every rollout kept).
async fn list_prefix(
    pool: &SqlitePool,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let upper = prefix_upper_bound(prefix);
    let sql = if upper.is_some() {
        LIST_RANGE
    } else {
        LIST_FROM
    };
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sql)
        .bind(prefix)
        .bind(upper)
        .bind(now_ms())
        .fetch_all(pool)
        .await
        .map_err(|e| db_err("list", e))?;
    Ok(rows)
}

#[async_trait::async_trait]
impl StateStore for SqliteStateStore {
    async fn write(&self, token: u64, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_err("begin", e))?;
        let current: Option<i64> = sqlx::query_scalar("SELECT token FROM fence WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_err("read fence", e))?;
        if current.and_then(|c| u64::try_from(c).ok()) != Some(token) {
            let _ = tx.rollback().await;
            tracing::warn!(
                token,
                ?current,
                "sqlite refused fenced write: token is stale"
            );
            self.signals.fenced(token);
            return Err(StoreError::Fenced { token });
        }
        // A few statements per write, not two per key: each statement is a round trip to
        // the connection's worker thread, which cost more than the writes themselves. Each
        // key once, its last op kept (what applying the ops in order leaves).
        let ops = dedup_ops(ops);
        let mut puts: Vec<(&str, &[u8])> = Vec::new();
        let mut deletes: Vec<&str> = Vec::new();
        for op in &ops {
            match op {
                WriteOp::Put { key, value } => puts.push((key, value)),
                WriteOp::Delete { key } => deletes.push(key),
            }
        }
        for chunk in puts.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO kv (key, value) VALUES {} \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for (key, value) in chunk {
                q = q.bind(*key).bind(*value);
            }
            q.execute(&mut *tx).await.map_err(|e| db_err("put", e))?;
        }
        for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
            delete_keys(&mut tx, "kv", chunk).await?;
        }
        let keys: Vec<&str> = ops.iter().map(WriteOp::key).collect();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            delete_keys(&mut tx, "leased", chunk).await?;
        }
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        tracing::trace!(token, ops = ops.len(), "fenced write committed");
        for op in &ops {
            self.notify(op.key());
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar(
            "SELECT value FROM kv WHERE key = ?1 \
             UNION ALL SELECT value FROM leased WHERE key = ?1 AND expires_at_ms > ?2 \
             LIMIT 1",
        )
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err("get", e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        list_prefix(&self.pool, prefix).await
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        let now = now_ms();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_err("begin", e))?;
        sqlx::query("DELETE FROM leased WHERE expires_at_ms <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err("expire leased keys", e))?;
        // One key space, as in etcd: a leased put replaces a plain value.
        sqlx::query("DELETE FROM kv WHERE key = ?")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err("leased put", e))?;
        sqlx::query(
            "INSERT INTO leased (key, value, expires_at_ms) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             expires_at_ms = excluded.expires_at_ms",
        )
        .bind(key)
        .bind(value)
        .bind(expires)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("leased put", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        self.notify(key);
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<mpsc::Receiver<String>, StoreError> {
        let initial = snapshot(&self.pool, prefix).await?;
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_DEPTH);
        let local = self.changes.subscribe();
        tokio::spawn(poll_watch(
            self.pool.clone(),
            prefix.to_owned(),
            initial,
            local,
            tx,
        ));
        Ok(rx)
    }
}

/// key → hash of value, for change detection without keeping values in memory.
async fn snapshot(pool: &SqlitePool, prefix: &str) -> Result<HashMap<String, u64>, StoreError> {
    Ok(list_prefix(pool, prefix)
        .await?
        .into_iter()
        .map(|(k, v)| {
            let mut h = DefaultHasher::new();
            v.hash(&mut h);
            (k, h.finish())
        })
        .collect())
}

async fn poll_watch(
    pool: SqlitePool,
    prefix: String,
    mut known: HashMap<String, u64>,
    mut local: broadcast::Receiver<String>,
    tx: mpsc::Sender<String>,
) {
    let mut tick = tokio::time::interval(WATCH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tx.closed() => return,
            key = local.recv() => match key {
                Ok(key) => {
                    if key.starts_with(&prefix) && tx.send(key).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if tx.send(prefix.clone()).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let now = match snapshot(&pool, &prefix).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, prefix, "sqlite watch poll failed");
                        continue;
                    }
                };
                let mut changed: Vec<&String> = now
                    .iter()
                    .filter(|(k, h)| known.get(*k) != Some(h))
                    .map(|(k, _)| k)
                    .chain(known.keys().filter(|k| !now.contains_key(*k)))
                    .collect();
                changed.sort();
                for key in changed {
                    if tx.send(key.clone()).await.is_err() {
                        return;
                    }
                }
                known = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> WriteOp {
        WriteOp::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    /// A store in `dir` and the token its first fenced write needs.
    async fn fenced_store(dir: &tempfile::TempDir) -> (SqlitePool, u64, SqliteStateStore) {
        let pool = open_pool(&dir.path().join("state.db")).await.expect("pool");
        let token = bump_fence(&pool, None).await.expect("bump").expect("token");
        let store = SqliteStateStore::new(pool.clone(), Arc::new(FenceSignals::default()));
        (pool, token, store)
    }

    #[tokio::test]
    async fn a_large_write_lands_whole_and_a_stale_token_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, token, store) = fenced_store(&dir).await;
        // More keys than one statement takes, one of them twice (the last value wins).
        let mut ops: Vec<WriteOp> = (0..450).map(|i| put(&format!("k/{i:04}"), "v1")).collect();
        ops.push(put("k/0007", "v2"));
        store.write(token, ops).await.expect("write");
        let all = store.list("k/").await.expect("list");
        assert_eq!(all.len(), 450);
        assert_eq!(
            store.get("k/0007").await.expect("get"),
            Some(b"v2".to_vec())
        );
        // Deletes and puts of other keys in one write; then a put and delete of one key
        // in op order.
        store
            .write(
                token,
                vec![
                    WriteOp::Delete {
                        key: "k/0000".into(),
                    },
                    put("k/0001", "v3"),
                    WriteOp::Delete {
                        key: "k/0449".into(),
                    },
                ],
            )
            .await
            .expect("mixed write");
        store
            .write(
                token,
                vec![
                    put("k/0002", "v4"),
                    WriteOp::Delete {
                        key: "k/0002".into(),
                    },
                ],
            )
            .await
            .expect("put then delete");
        let all = store.list("k/").await.expect("list");
        assert_eq!(all.len(), 447);
        assert_eq!(
            store.get("k/0001").await.expect("get"),
            Some(b"v3".to_vec())
        );
        assert_eq!(store.get("k/0002").await.expect("get"), None);
        // A deposed token: nothing of the write lands.
        bump_fence(&pool, None).await.expect("bump");
        let err = store
            .write(token, vec![put("k/0003", "stale"), put("k/9999", "stale")])
            .await
            .expect_err("stale token");
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert_eq!(
            store.get("k/0003").await.expect("get"),
            Some(b"v1".to_vec())
        );
        assert_eq!(store.get("k/9999").await.expect("get"), None);
    }

    /// A listing searches the key index between the prefix and its upper bound, not from
    /// the prefix to the end: the rollouts' listing does not visit the target records.
    #[tokio::test]
    async fn a_prefix_listing_searches_only_its_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, token, store) = fenced_store(&dir).await;
        let mut ops = vec![put("rollouts/r1", "r"), put("rollouts/r2", "r")];
        ops.extend((0..300).map(|i| put(&format!("targets/r1/t{i:03}"), "t")));
        store.write(token, ops).await.expect("write");
        let listed = store.list("rollouts/").await.expect("list");
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["rollouts/r1", "rollouts/r2"]);
        assert_eq!(store.list("targets/r1/").await.expect("list").len(), 300);
        assert_eq!(store.list("").await.expect("list all").len(), 302);

        // EXPLAIN QUERY PLAN rows: id, parent, notused, detail.
        let plan: Vec<String> =
            sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {LIST_RANGE}")))
                .bind("rollouts/")
                .bind("rollouts0")
                .bind(0_i64)
                .fetch_all(&pool)
                .await
                .expect("explain")
                .iter()
                .map(|r| sqlx::Row::get::<String, _>(r, 3))
                .collect();
        let kv = plan
            .iter()
            .find(|d| d.contains("kv "))
            .unwrap_or_else(|| panic!("no search of kv in {plan:?}"));
        assert!(
            kv.contains("key>? AND key<?"),
            "the kv search must use both bounds: {plan:?}"
        );
    }

    #[test]
    fn upper_bound_of_prefix() {
        assert_eq!(
            prefix_upper_bound("rollouts/").as_deref(),
            Some("rollouts0")
        );
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
    }
}
