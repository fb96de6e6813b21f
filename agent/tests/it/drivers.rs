//! Driver integration tests against real databases: the same scenarios run on SQLite files,
//! PostgreSQL and MariaDB (ephemeral servers from the testkit), one fresh database each.

use anyhow::{Context, Result, bail, ensure};
use flotilla_agent::driver::mysql::{self, MysqlDriver};
use flotilla_agent::driver::postgres::{self, PostgresDriver};
use flotilla_agent::driver::sqlite::SqliteDriver;
use flotilla_agent::driver::{Driver, DriverError, ErrorClass, Session, StepMeta, StepSpec};
use flotilla_core::Dialect;
use flotilla_core::Secret;
use flotilla_core::checksum;
use flotilla_core::history::RowStatus;
use flotilla_core::types::Direction;

/// Makes fresh, empty target databases of one dialect.
trait Targets {
    fn dialect(&self) -> Dialect;
    /// The URL of a new, empty database.
    async fn fresh_url(&mut self) -> Result<String>;
    /// A new, empty database.
    async fn fresh(&mut self) -> Result<Box<dyn Driver>> {
        let url = self.fresh_url().await?;
        Ok(match self.dialect() {
            Dialect::Sqlite => Box::new(SqliteDriver::new(Secret::new(url))?),
            Dialect::Postgres => Box::new(PostgresDriver::new(Secret::new(url))?),
            Dialect::Mysql => Box::new(MysqlDriver::new(Secret::new(url))?),
        })
    }
}

/// SQLite files in one temp dir.
struct SqliteTargets {
    dir: tempfile::TempDir,
    n: usize,
}

impl SqliteTargets {
    fn new() -> Result<Self> {
        Ok(SqliteTargets {
            dir: tempfile::tempdir()?,
            n: 0,
        })
    }
}

impl Targets for SqliteTargets {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn fresh_url(&mut self) -> Result<String> {
        self.n += 1;
        let path = self.dir.path().join(format!("t{}.db", self.n));
        Ok(format!("sqlite://{}", path.display()))
    }
}

/// Fresh databases on one ephemeral PostgreSQL server.
struct PostgresTargets {
    server: flotilla_testkit::Postgres,
}

impl Targets for PostgresTargets {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    async fn fresh_url(&mut self) -> Result<String> {
        self.server.fresh_database().await
    }
}

/// Fresh databases on one ephemeral MariaDB server.
struct MariaDbTargets {
    server: flotilla_testkit::MariaDb,
}

impl Targets for MariaDbTargets {
    fn dialect(&self) -> Dialect {
        Dialect::Mysql
    }
    async fn fresh_url(&mut self) -> Result<String> {
        self.server.fresh_database().await
    }
}

fn meta(token: u64) -> StepMeta {
    StepMeta {
        rollout_id: "r1".into(),
        agent_id: "agent-1".into(),
        fencing_token: token,
    }
}

fn step(revision: &str, sql: &str) -> StepSpec {
    StepSpec {
        revision: revision.into(),
        direction: Direction::Up,
        sql: sql.into(),
        checksum: checksum(sql),
        transactional: true,
        bounds: Default::default(),
        check: String::new(),
        verify: String::new(),
    }
}

async fn session(driver: &dyn Driver) -> Result<Box<dyn Session>> {
    let mut s = driver.connect(&Default::default()).await?;
    s.ensure_schema().await?;
    Ok(s)
}

async fn table_names(s: &mut dyn Session) -> Result<Vec<String>> {
    Ok(s.catalog()
        .await?
        .tables
        .into_iter()
        .map(|t| t.name)
        .collect())
}

/// ensure_schema twice, a transactional step records its row, a failing step rolls back both
/// its schema change (where DDL is transactional) and its history row.
async fn transactional_apply(targets: &mut impl Targets) -> Result<()> {
    let d = targets.dialect();
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    s.ensure_schema().await.context("second ensure_schema")?;
    let state = s.read_state().await?;
    ensure!(
        state.history.is_empty() && state.fence_token == 0,
        "fresh state: {state:?}"
    );

    let ok = step(
        "0001_t1",
        "CREATE TABLE t1 (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL);\n\
         INSERT INTO t1 (id, name) VALUES (1, 'a;b');\nINSERT INTO t1 (id, name) VALUES (2, 'c');",
    );
    let row = if d == Dialect::Mysql {
        // MySQL commits DDL implicitly: the executor sends DDL through the dirty protocol.
        let id = s.mark_dirty(&ok, &meta(3)).await?;
        s.execute_non_transactional(&ok.sql).await?;
        s.mark_clean(id, 7).await?;
        s.read_state().await?.history.pop().context("history row")?
    } else {
        s.apply_transactional(&ok, &meta(3)).await?
    };
    ensure!(
        row.status == RowStatus::Applied && row.revision == "0001_t1",
        "{row:?}"
    );
    let state = s.read_state().await?;
    ensure!(state.fence_token == 3, "fence raised: {state:?}");
    ensure!(state.history == vec![row.clone()], "history: {state:?}");
    ensure!(state.history[0].checksum == ok.checksum && state.history[0].fencing_token == 3);
    ensure!(table_names(s.as_mut()).await? == ["t1"]);

    let bad_sql = if d == Dialect::Mysql {
        "INSERT INTO t1 (id, name) VALUES (3, 'x');\nINSERT INTO missing_table VALUES (1)"
    } else {
        "CREATE TABLE t2 (a INT);\nINSERT INTO t1 (id, name) VALUES (3, 'x');\n\
         INSERT INTO missing_table VALUES (1)"
    };
    let err = s
        .apply_transactional(&step("0002_bad", bad_sql), &meta(3))
        .await;
    let Err(DriverError::Permanent { message }) = err else {
        bail!("missing table must fail permanently: {err:?}");
    };
    ensure!(
        message.contains("missing_table"),
        "message names the table: {message}"
    );
    let state = s.read_state().await?;
    ensure!(
        state.history == vec![row],
        "no history row for the failed step: {state:?}"
    );
    ensure!(table_names(s.as_mut()).await? == ["t1"], "t2 rolled back");
    // Row 3 can be inserted again only if the failed step's insert was rolled back.
    let again = step(
        "0003_again",
        "INSERT INTO t1 (id, name) VALUES (3, 'again')",
    );
    s.apply_transactional(&again, &meta(3))
        .await
        .context("the failed insert was rolled back")?;
    s.close().await;
    Ok(())
}

/// A lower token is refused and changes nothing; an equal one is accepted.
async fn stale_token(targets: &mut impl Targets) -> Result<()> {
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    s.apply_transactional(
        &step(
            "0001",
            "UPDATE flotilla_fence SET updated_at = updated_at WHERE 1 = 0",
        ),
        &meta(5),
    )
    .await?;
    let before = s.read_state().await?;
    // MySQL steps with DDL never run in one transaction: use DML there.
    let stale_sql = match targets.dialect() {
        Dialect::Mysql => "INSERT INTO flotilla_fence (id, token) VALUES (9, 9)",
        _ => "CREATE TABLE stale (a INT)",
    };
    let err = s
        .apply_transactional(&step("0002", stale_sql), &meta(4))
        .await;
    ensure!(
        matches!(
            err,
            Err(DriverError::StaleToken {
                offered: 4,
                current: 5
            })
        ),
        "stale token refused: {err:?}"
    );
    let err = s
        .mark_dirty(&step("0002", "CREATE TABLE stale (a INT)"), &meta(4))
        .await;
    ensure!(
        matches!(err, Err(DriverError::StaleToken { .. })),
        "mark_dirty fenced: {err:?}"
    );
    let err = s
        .stamp(&[("0002".into(), "c".repeat(64))], Direction::Up, &meta(1))
        .await;
    ensure!(
        matches!(err, Err(DriverError::StaleToken { .. })),
        "stamp fenced: {err:?}"
    );
    ensure!(s.read_state().await? == before, "nothing changed");
    ensure!(
        table_names(s.as_mut()).await?.is_empty(),
        "no table created"
    );
    s.apply_transactional(&step("0003", "SELECT 1"), &meta(5))
        .await
        .context("equal token")?;
    s.close().await;
    Ok(())
}

/// mark_dirty → execute_non_transactional → mark_clean, then repair and stamp.
async fn dirty_protocol(targets: &mut impl Targets) -> Result<()> {
    let d = targets.dialect();
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    let create = step(
        "0001",
        "CREATE TABLE t1 (id INT PRIMARY KEY, name VARCHAR(50))",
    );
    let id = s.mark_dirty(&create, &meta(1)).await?;
    s.execute_non_transactional(&create.sql).await?;
    s.mark_clean(id, 12).await?;

    let concurrently = if d == Dialect::Postgres {
        "CONCURRENTLY "
    } else {
        ""
    };
    let sql = format!(
        "-- two indexes; one statement at a time where needed\n\
         CREATE INDEX {concurrently}t1_name ON t1 (name);\n\
         CREATE INDEX {concurrently}t1_name_id ON t1 (name, id);\n"
    );
    let idx = StepSpec {
        transactional: false,
        ..step("0002", &sql)
    };
    let id = s.mark_dirty(&idx, &meta(1)).await?;
    let state = s.read_state().await?;
    ensure!(
        state.dirty().map(|r| r.id) == Some(id),
        "dirty row: {state:?}"
    );
    s.execute_non_transactional(&idx.sql).await?;
    s.mark_clean(id, 34).await?;
    let state = s.read_state().await?;
    ensure!(state.dirty().is_none(), "clean: {state:?}");
    let last = state.history.last().context("row")?;
    ensure!(
        last.status == RowStatus::Applied && last.duration_ms == 34,
        "{last:?}"
    );
    ensure!(state.is_applied("0001") && state.is_applied("0002"));
    let catalog = s.catalog().await?;
    let t1 = catalog
        .tables
        .iter()
        .find(|t| t.name == "t1")
        .context("t1")?;
    let names: Vec<&str> = t1.indexes.iter().map(|i| i.name.as_str()).collect();
    ensure!(
        names.contains(&"t1_name") && names.contains(&"t1_name_id"),
        "indexes {names:?}"
    );
    ensure!(
        s.mark_clean(id, 1).await.is_err(),
        "a clean row cannot be cleaned again"
    );

    // A step that fails half way stays dirty until repaired.
    let broken = StepSpec {
        transactional: false,
        ..step("0003", "CREATE TABLE t3 (a INT);\nCREAT TABLE t4 (a INT)")
    };
    let id = s.mark_dirty(&broken, &meta(2)).await?;
    let err = s.execute_non_transactional(&broken.sql).await;
    ensure!(matches!(err, Err(DriverError::Permanent { .. })), "{err:?}");
    let state = s.read_state().await?;
    ensure!(state.dirty().map(|r| r.id) == Some(id) && state.fence_token == 2);
    let err = s.repair("0003", false, &meta(1)).await;
    ensure!(
        matches!(err, Err(DriverError::StaleToken { .. })),
        "repair fenced: {err:?}"
    );
    s.repair("0003", false, &meta(2)).await?;
    let state = s.read_state().await?;
    ensure!(
        state.dirty().is_none() && !state.is_applied("0003"),
        "{state:?}"
    );
    ensure!(state.history.last().map(|r| r.status) == Some(RowStatus::Abandoned));
    let err = s.repair("0003", true, &meta(2)).await;
    ensure!(
        matches!(err, Err(DriverError::Permanent { .. })),
        "nothing to repair: {err:?}"
    );

    s.stamp(
        &[
            ("0004".into(), "a".repeat(64)),
            ("0005".into(), "b".repeat(64)),
        ],
        Direction::Up,
        &meta(2),
    )
    .await?;
    let state = s.read_state().await?;
    let stamped: Vec<_> = state
        .history
        .iter()
        .filter(|r| r.status == RowStatus::Stamped)
        .collect();
    ensure!(stamped.len() == 2 && state.is_applied("0005"), "{state:?}");
    s.close().await;
    Ok(())
}

/// try_lock from two sessions: the second gets false until the first unlocks or closes.
async fn migration_lock(targets: &mut impl Targets) -> Result<()> {
    let driver = targets.fresh().await?;
    let mut a = session(driver.as_ref()).await?;
    let mut b = session(driver.as_ref()).await?;
    ensure!(a.try_lock().await?, "first lock");
    ensure!(a.try_lock().await?, "taking a held lock again is a no-op");
    ensure!(!b.try_lock().await?, "second session must not get the lock");
    a.unlock().await?;
    ensure!(b.try_lock().await?, "lock free after unlock");
    ensure!(!a.try_lock().await?, "now held by b");
    b.close().await;
    let mut c = session(driver.as_ref()).await?;
    ensure!(c.try_lock().await?, "lock released when its session closes");
    c.unlock().await?;
    // Another database on the same server has its own lock.
    let other = targets.fresh().await?;
    let mut o = session(other.as_ref()).await?;
    ensure!(a.try_lock().await?, "a locks its database again");
    ensure!(o.try_lock().await?, "another database is not locked");
    a.close().await;
    o.close().await;
    Ok(())
}

/// Apply `sqls` (one step each) on a fresh database and return its catalog fingerprint.
async fn fingerprint_of(
    targets: &mut impl Targets,
    sqls: &[&str],
) -> Result<(String, flotilla_core::catalog::Catalog)> {
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    for (i, sql) in sqls.iter().enumerate() {
        let st = step(&format!("{i:04}"), sql);
        if targets.dialect() == Dialect::Mysql {
            s.execute_non_transactional(sql)
                .await
                .with_context(|| format!("step {i}"))?;
        } else {
            s.apply_transactional(&st, &meta(1))
                .await
                .with_context(|| format!("step {i}"))?;
        }
    }
    let catalog = s.catalog().await?;
    s.close().await;
    Ok((catalog.fingerprint(), catalog))
}

/// Same schema built in two orders → same fingerprint; one column type or nullability
/// different → different fingerprint.
async fn catalog_fingerprints(targets: &mut impl Targets) -> Result<()> {
    let parent = "CREATE TABLE parent (id INT PRIMARY KEY, code VARCHAR(10) UNIQUE, note TEXT)";
    let parent_b = "CREATE TABLE parent (note TEXT, code VARCHAR(10) UNIQUE, id INT PRIMARY KEY)";
    let child = |qty: &str, label: &str| {
        format!(
            "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT NOT NULL, \
             qty {qty} DEFAULT 1 CHECK (qty > 0), label {label}, \
             FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE)"
        )
    };
    let child_b = "CREATE TABLE child (label VARCHAR(20), parent_id INT NOT NULL, id INT PRIMARY KEY, \
                   FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE)";
    let add_qty = "ALTER TABLE child ADD COLUMN qty INT NOT NULL DEFAULT 1 CHECK (qty > 0)";
    let index = "CREATE INDEX child_parent ON child (parent_id, qty)";
    let other = "CREATE TABLE other (k VARCHAR(20) NOT NULL)";

    let child_a = child("INT NOT NULL", "VARCHAR(20)");
    let (a, cat_a) = fingerprint_of(targets, &[parent, other, &child_a, index]).await?;
    let (b, cat_b) = fingerprint_of(targets, &[other, parent_b, child_b, add_qty, index]).await?;
    ensure!(
        a == b,
        "same schema, different order:\n{cat_a:#?}\n{cat_b:#?}"
    );
    ensure!(cat_a.tables.len() == 3, "{cat_a:#?}");
    let child_t = cat_a
        .tables
        .iter()
        .find(|t| t.name == "child")
        .context("child")?;
    let kinds: Vec<&str> = child_t
        .constraints
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    for k in ["primary key", "foreign key", "check"] {
        ensure!(kinds.contains(&k), "child has a {k}: {child_t:#?}");
    }
    let fk = child_t
        .constraints
        .iter()
        .find(|c| c.kind == "foreign key")
        .context("fk")?;
    ensure!(
        fk.references == Some(("parent".into(), vec!["id".into()], "cascade".into())),
        "{fk:?}"
    );
    let child_c = child("BIGINT NOT NULL", "VARCHAR(20)");
    let (c, _) = fingerprint_of(targets, &[parent, other, &child_c, index]).await?;
    ensure!(a != c, "a different column type changes the fingerprint");
    let child_d = child("INT NOT NULL", "VARCHAR(20) NOT NULL");
    let (d, _) = fingerprint_of(targets, &[parent, other, &child_d, index]).await?;
    ensure!(a != d, "different nullability changes the fingerprint");
    Ok(())
}

/// A syntax error is permanent and carries the database's message.
async fn syntax_error(targets: &mut impl Targets) -> Result<()> {
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    let err = s
        .apply_transactional(&step("0001", "SELEC 1"), &meta(1))
        .await;
    let Err(DriverError::Permanent { message }) = err else {
        bail!("syntax error must be permanent: {err:?}");
    };
    ensure!(
        message.to_lowercase().contains("syntax"),
        "database message: {message}"
    );
    ensure!(message.contains("apply 0001 up"), "context: {message}");
    let err = s.execute_non_transactional("SELEC 1").await;
    ensure!(matches!(err, Err(DriverError::Permanent { .. })), "{err:?}");
    s.close().await;
    Ok(())
}

/// Several sessions creating Flotilla's tables at once all succeed, and so do their first
/// writes at once (on PostgreSQL the writes are what creates the tables): one fence row, and
/// each write's history row with an id of its own.
async fn concurrent_ensure_schema(targets: &mut impl Targets) -> Result<()> {
    let driver = targets.fresh().await?;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(driver.connect(&Default::default()).await?);
    }
    let results = futures::future::join_all(sessions.iter_mut().map(|s| s.ensure_schema())).await;
    for r in results {
        r.context("concurrent ensure_schema")?;
    }
    let writes = futures::future::join_all(sessions.iter_mut().enumerate().map(|(i, s)| {
        let revision = format!("000{}", i + 1);
        async move {
            s.stamp(&[(revision, "a".repeat(64))], Direction::Up, &meta(1))
                .await
        }
    }))
    .await;
    for w in writes {
        w.context("concurrent first writes")?;
    }
    for s in sessions {
        s.close().await;
    }
    let mut s = session(driver.as_ref()).await?;
    let state = s.read_state().await?;
    let mut ids: Vec<i64> = state.history.iter().map(|r| r.id).collect();
    ids.dedup();
    ensure!(
        ids.len() == 4 && state.history.len() == 4 && state.fence_token == 1,
        "after 4 concurrent first writes: {state:?}"
    );
    s.close().await;
    Ok(())
}

/// A first write that fails leaves the target as it was: nothing recorded, the fence at 0,
/// and on PostgreSQL not even Flotilla's tables (they were created in the transaction that
/// rolled back). The next write creates them and records its row.
async fn failed_first_write_leaves_nothing(targets: &mut impl Targets) -> Result<()> {
    let d = targets.dialect();
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    // MySQL commits DDL at once: its failing step is DML only.
    let bad = step(
        "0001_bad",
        match d {
            Dialect::Mysql => "INSERT INTO no_such_table VALUES (1);",
            _ => {
                "CREATE TABLE first_t (id INT PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);"
            }
        },
    );
    let err = s.apply_transactional(&bad, &meta(3)).await;
    ensure!(err.is_err(), "the failing step succeeded");
    let state = s.read_state().await?;
    ensure!(
        state.history.is_empty() && state.fence_token == 0,
        "after a failed first write: {state:?}"
    );
    if d == Dialect::Postgres {
        let gone = s
            .execute_non_transactional("SELECT count(*) FROM flotilla_history")
            .await;
        ensure!(
            gone.is_err(),
            "flotilla_history outlived the rolled-back transaction that created it"
        );
        ensure!(
            !table_names(s.as_mut())
                .await?
                .iter()
                .any(|t| t == "first_t"),
            "the failed step's table is still there"
        );
    }
    s.apply_transactional(
        &step(
            "0001_good",
            "UPDATE flotilla_fence SET updated_at = updated_at WHERE 1 = 0",
        ),
        &meta(3),
    )
    .await
    .context("the next first write")?;
    let state = s.read_state().await?;
    ensure!(
        state.history.len() == 1 && state.is_applied("0001_good") && state.fence_token == 3,
        "after the next write: {state:?}"
    );
    s.close().await;
    Ok(())
}

/// A step that waits too long on another connection's lock fails with a transient error
/// (lock timeout / busy) and leaves nothing behind; the retry succeeds once the lock is gone.
async fn lock_wait_is_transient(targets: &mut impl Targets) -> Result<()> {
    use sqlx::Connection;
    let d = targets.dialect();
    let url = targets.fresh_url().await?;
    let driver = match d {
        Dialect::Sqlite => {
            Box::new(SqliteDriver::new(Secret::new(url.clone()))?) as Box<dyn Driver>
        }
        Dialect::Postgres => Box::new(PostgresDriver::new(Secret::new(url.clone()))?),
        Dialect::Mysql => Box::new(MysqlDriver::new(Secret::new(url.clone()))?),
    };
    let mut s = session(driver.as_ref()).await?;
    s.execute_non_transactional("CREATE TABLE t1 (id INT PRIMARY KEY, name VARCHAR(50))")
        .await?;
    s.execute_non_transactional("INSERT INTO t1 (id, name) VALUES (1, 'a')")
        .await?;
    let (sql, class) = match d {
        Dialect::Postgres => (
            "SET LOCAL lock_timeout = '200ms';\nUPDATE t1 SET name = 'b' WHERE id = 1",
            ErrorClass::LockTimeout,
        ),
        Dialect::Mysql => (
            "SET innodb_lock_wait_timeout = 1;\nUPDATE t1 SET name = 'b' WHERE id = 1",
            ErrorClass::LockTimeout,
        ),
        Dialect::Sqlite => ("UPDATE t1 SET name = 'b' WHERE id = 1", ErrorClass::Busy),
    };
    let blocked = step("0001_update", sql);
    let lock_sql = match d {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        _ => "BEGIN",
    };
    let hold = "SELECT id FROM t1 WHERE id = 1 FOR UPDATE";
    let result = match d {
        Dialect::Postgres => {
            let mut holder = sqlx::PgConnection::connect(&url).await?;
            sqlx::raw_sql(lock_sql).execute(&mut holder).await?;
            sqlx::raw_sql(hold).execute(&mut holder).await?;
            let r = s.apply_transactional(&blocked, &meta(1)).await;
            holder.close().await?;
            r
        }
        Dialect::Mysql => {
            let mut holder = sqlx::MySqlConnection::connect(&url).await?;
            sqlx::raw_sql(lock_sql).execute(&mut holder).await?;
            sqlx::raw_sql(hold).execute(&mut holder).await?;
            let r = s.apply_transactional(&blocked, &meta(1)).await;
            holder.close().await?;
            r
        }
        Dialect::Sqlite => {
            let mut holder = sqlx::SqliteConnection::connect(&url).await?;
            sqlx::raw_sql(lock_sql).execute(&mut holder).await?;
            let r = s.apply_transactional(&blocked, &meta(1)).await;
            holder.close().await?;
            r
        }
    };
    let Err(err) = result else {
        bail!("the step must not get the lock")
    };
    ensure!(
        err.class() == Some(class),
        "expected transient {class}: {err}"
    );
    ensure!(s.read_state().await?.history.is_empty(), "nothing recorded");
    s.apply_transactional(&blocked, &meta(1))
        .await
        .context("retry after the lock is gone")?;
    s.close().await;
    Ok(())
}

/// A section holding only comments (a merge revision) is a recorded no-op on every dialect.
async fn comment_only_steps(targets: &mut impl Targets) -> Result<()> {
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    let sql = "-- merge point: nothing to do\n/* really */\n";
    let row = s
        .apply_transactional(&step("0001_merge", sql), &meta(1))
        .await?;
    ensure!(row.status == RowStatus::Applied);
    s.execute_non_transactional(sql)
        .await
        .context("non-transactional comment-only")?;
    s.execute_non_transactional("").await.context("empty")?;
    ensure!(s.read_state().await?.is_applied("0001_merge"));
    s.close().await;
    Ok(())
}

async fn all_scenarios(targets: &mut impl Targets) -> Result<()> {
    transactional_apply(targets)
        .await
        .context("transactional_apply")?;
    stale_token(targets).await.context("stale_token")?;
    dirty_protocol(targets).await.context("dirty_protocol")?;
    migration_lock(targets).await.context("migration_lock")?;
    catalog_fingerprints(targets)
        .await
        .context("catalog_fingerprints")?;
    syntax_error(targets).await.context("syntax_error")?;
    comment_only_steps(targets)
        .await
        .context("comment_only_steps")?;
    concurrent_ensure_schema(targets)
        .await
        .context("concurrent_ensure_schema")?;
    failed_first_write_leaves_nothing(targets)
        .await
        .context("failed_first_write_leaves_nothing")?;
    lock_wait_is_transient(targets)
        .await
        .context("lock_wait_is_transient")?;
    Ok(())
}

#[tokio::test]
async fn sqlite_driver() -> Result<()> {
    all_scenarios(&mut SqliteTargets::new()?).await
}

/// A session on a new SQLite file `name` in `dir` that ran `first` (if any) and applied one
/// step, still open.
async fn one_step_file(
    dir: &std::path::Path,
    name: &str,
    first: Option<&str>,
) -> Result<(SqliteDriver, Box<dyn Session>)> {
    let driver = SqliteDriver::from_path(dir.join(name));
    let mut s = session(&driver).await?;
    if let Some(sql) = first {
        s.execute_non_transactional(sql).await?;
    }
    s.apply_transactional(&step("0001", "CREATE TABLE a (id INT);"), &meta(1))
        .await?;
    Ok((driver, s))
}

/// A write to the fence table by hand (same size, likely the same timestamp tick).
async fn set_fence_by_hand(driver: &SqliteDriver, token: i64) -> Result<()> {
    let mut raw = driver.open().await?;
    raw.execute_non_transactional(&format!(
        "UPDATE flotilla_fence SET token = {token} WHERE id = 1"
    ))
    .await?;
    Box::new(raw).close().await;
    Ok(())
}

/// Status reads of a SQLite target are cached while its files are unchanged, and a write
/// by anyone else is seen by the very next read.
#[tokio::test]
async fn sqlite_status_cache_sees_every_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.db");
    let (driver, s) = one_step_file(dir.path(), "t.db", None).await?;
    s.close().await;
    // The first read keeps the state (this rollback-journal database's stamp holds the
    // change counter; a WAL database's state is kept once its files have settled): the
    // second is a hit.
    for hits in [0, 1] {
        let st = driver.read_state(&Default::default()).await?;
        ensure!(st.history.len() == 1, "{st:?}");
        ensure!(
            driver.cached_reads() == hits,
            "read {hits}: {}",
            driver.cached_reads()
        );
    }
    // Another process-like writer: a separate driver on the same file, then plain SQL.
    let other = SqliteDriver::from_path(&path);
    let mut w = session(&other).await?;
    w.apply_transactional(&step("0002", "CREATE TABLE b (id INT);"), &meta(1))
        .await?;
    w.close().await;
    let st = driver.read_state(&Default::default()).await?;
    let revs: Vec<&str> = st.history.iter().map(|r| r.revision.as_str()).collect();
    ensure!(
        revs == ["0001", "0002"],
        "stale status after a write: {revs:?}"
    );
    let hits = driver.cached_reads();
    set_fence_by_hand(&other, 7).await?;
    let st = driver.read_state(&Default::default()).await?;
    ensure!(st.fence_token == 7, "stale fence after a write: {st:?}");
    ensure!(
        driver.cached_reads() == hits,
        "a changed file was served from the cache"
    );
    Ok(())
}

/// A run leaves its final state for the driver's status reads: the next Status is answered
/// without opening the database, and a write right after it, same size and same timestamp
/// tick, is still seen (the header's change counter moved). A WAL database keeps nothing.
#[tokio::test]
async fn sqlite_a_run_leaves_its_state_for_the_next_status_read() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.db");
    let (driver, mut s) = one_step_file(dir.path(), "t.db", None).await?;
    s.remember_state().await;
    s.close().await;
    let st = driver.read_state(&Default::default()).await?;
    ensure!(st.history.len() == 1 && st.fence_token == 1, "{st:?}");
    ensure!(driver.cached_reads() == 1, "the run's state was not kept");

    let other = SqliteDriver::from_path(&path);
    set_fence_by_hand(&other, 7).await?;
    let st = driver.read_state(&Default::default()).await?;
    ensure!(st.fence_token == 7, "stale fence after a write: {st:?}");
    ensure!(
        driver.cached_reads() == 1,
        "a changed file was served from the cache"
    );
    // Read again at once: the stamp read between two equal stamps is current, so it is
    // kept without waiting for the files to settle.
    let st = driver.read_state(&Default::default()).await?;
    ensure!(st.fence_token == 7, "{st:?}");
    ensure!(
        driver.cached_reads() == 2,
        "an unchanged file was read again"
    );

    let (wal, mut w) = one_step_file(dir.path(), "w.db", Some("PRAGMA journal_mode = WAL")).await?;
    w.remember_state().await;
    w.close().await;
    let st = wal.read_state(&Default::default()).await?;
    ensure!(st.history.len() == 1, "{st:?}");
    ensure!(
        wal.cached_reads() == 0,
        "a WAL database's state was kept unsettled"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_driver() -> Result<()> {
    let server = flotilla_testkit::Postgres::start().await?;
    let mut targets = PostgresTargets { server };
    all_scenarios(&mut targets).await?;

    // Discovery and per-database URLs.
    let server_url = Secret::new(targets.server.server_url() + "/postgres");
    targets.server.create_database("tenant_a").await?;
    targets.server.create_database("tenant_b").await?;
    let found = postgres::discover_databases(&server_url, "tenant\\_%").await?;
    ensure!(found == ["tenant_a", "tenant_b"], "{found:?}");
    let url = postgres::with_database(&server_url, "tenant_b")?;
    let driver = PostgresDriver::new(url)?;
    ensure!(driver.database() == Some("tenant_b"));
    ensure!(
        driver.host() == format!("127.0.0.1:{}", targets.server.port()),
        "{}",
        driver.host()
    );
    let mut s = session(&driver).await?;
    ensure!(s.read_state().await?.history.is_empty());
    s.close().await;

    // Connection errors are transient and never show the URL.
    let dead = PostgresDriver::new(Secret::new(format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/x",
        flotilla_testkit::free_port()
    )))?;
    let err = dead
        .connect(&Default::default())
        .await
        .err()
        .context("connect to a closed port must fail")?;
    ensure!(
        err.is_transient() && !err.to_string().contains("hunter2"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn mariadb_driver() -> Result<()> {
    let server = flotilla_testkit::MariaDb::start().await?;
    let mut targets = MariaDbTargets { server };
    all_scenarios(&mut targets).await?;

    // Multi-statement DML runs in one transaction; DDL is refused there (dirty protocol).
    let driver = targets.fresh().await?;
    let mut s = session(driver.as_ref()).await?;
    s.execute_non_transactional("CREATE TABLE t (a INT PRIMARY KEY);\nCREATE TABLE u (b INT)")
        .await?;
    ensure!(table_names(s.as_mut()).await? == ["t", "u"]);
    let dml = step(
        "0001",
        "INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\nINSERT INTO t VALUES (1)",
    );
    let err = s.apply_transactional(&dml, &meta(1)).await;
    let Err(DriverError::Permanent { message }) = err else {
        bail!("duplicate key: {err:?}")
    };
    ensure!(
        message.contains("Duplicate") && message.contains("1062"),
        "{message}"
    );
    let ok = step(
        "0002",
        "INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2)",
    );
    s.apply_transactional(&ok, &meta(1))
        .await
        .context("first step was rolled back")?;
    let ddl = step(
        "0003",
        "INSERT INTO t VALUES (3);\nALTER TABLE t ADD COLUMN c INT",
    );
    let err = s.apply_transactional(&ddl, &meta(1)).await;
    ensure!(
        matches!(err, Err(DriverError::Permanent { .. })),
        "ddl refused: {err:?}"
    );
    ensure!(s.read_state().await?.history.len() == 1);
    s.close().await;

    // Discovery and per-database URLs.
    let server_url = Secret::new(targets.server.server_url());
    targets.server.create_database("tenant_a").await?;
    targets.server.create_database("tenant_b").await?;
    let found = mysql::discover_databases(&server_url, "tenant\\_%").await?;
    ensure!(found == ["tenant_a", "tenant_b"], "{found:?}");
    let driver = MysqlDriver::new(mysql::with_database(&server_url, "tenant_b")?)?;
    ensure!(driver.database() == Some("tenant_b"));
    ensure!(
        driver.host() == format!("127.0.0.1:{}", targets.server.port()),
        "{}",
        driver.host()
    );
    let mut s = session(&driver).await?;
    ensure!(s.read_state().await?.history.is_empty());
    s.close().await;
    Ok(())
}
