//! Adopting fleets that other tools migrated: `flotilla import` + `flotilla adopt` + a rollout
//! to head, against real Alembic (PostgreSQL and MariaDB), the real sqlx migrator, a
//! Flyway-style history table and golang-migrate's table. Every tenant must end with the same
//! schema fingerprint as a tenant the tool alone took to head, with no revision run twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use flotilla_agent::Agent;
use flotilla_core::Dialect;
use flotilla_proto as pb;
use sqlx::{AssertSqlSafe, Connection};

use crate::harness::{TestAgent, TestCoordinator, run_cli, spec, target};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures")
        .join(name)
}

/// Copy a directory tree (the Alembic fixture: Alembic writes `__pycache__` next to it).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Every `.sql` file of `dir` by name, with its bytes.
fn files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path())?,
        );
    }
    Ok(out)
}

/// `flotilla import TOOL SOURCE --into DIR` twice (into DIR and a second directory): both
/// runs must succeed and write the same files byte for byte.
async fn import(tool: &str, source: &Path, into: &Path) -> Result<serde_json::Value> {
    let (source, into_s) = (source.to_string_lossy(), into.to_string_lossy());
    // The MariaDB tenants: render `mysql` with SQLAlchemy's MariaDB dialect (native UUID).
    let run = |into: String, json: bool| {
        let mut args: Vec<String> = Vec::new();
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        args.extend([
            "import".into(),
            tool.into(),
            source.to_string(),
            "--into".into(),
            into,
        ]);
        args.extend(["--alembic-url".into(), "mysql=mariadb://".into()]);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&args, None).await
        }
    };
    let (code, out, err) = run(into_s.to_string(), true).await?;
    ensure!(code == 0, "import {tool} exited {code}: {out}{err}");
    let again = tempfile::tempdir()?;
    let (code, _, err) = run(again.path().to_string_lossy().into_owned(), false).await?;
    ensure!(code == 0, "second import {tool} exited {code}: {err}");
    ensure!(
        files(into)? == files(again.path())?,
        "import {tool} is not deterministic"
    );
    // Importing over its own output again is allowed and changes nothing.
    let before = files(into)?;
    let (code, _, err) = run(into_s.to_string(), false).await?;
    ensure!(
        code == 0 && files(into)? == before,
        "re-import changed files: {err}"
    );
    Ok(serde_json::from_str(&out)?)
}

/// `flotilla adopt` against the coordinator: (exit code, target id → (outcome, revisions, reason)).
async fn adopt(
    coord: &TestCoordinator,
    extra: &[&str],
) -> Result<(i32, BTreeMap<String, (String, Vec<String>, String)>)> {
    let mut args = vec!["--output", "json", "adopt", "--coordinator", &coord.address];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(&args, None).await?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("adopt output: {out}{err}"))?;
    let mut by_target = BTreeMap::new();
    for t in v["targets"].as_array().context("no targets")? {
        let revisions = t["revisions"]
            .as_array()
            .context("no revisions")?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        by_target.insert(
            t["target"].as_str().unwrap_or_default().to_owned(),
            (
                t["outcome"].as_str().unwrap_or_default().to_owned(),
                revisions,
                t["reason"].as_str().unwrap_or_default().to_owned(),
            ),
        );
    }
    Ok((code, by_target))
}

async fn fingerprint(agent: &Agent, target: &str) -> Result<String> {
    let resp = agent
        .validate(pb::ValidateRequest {
            project: Default::default(),
            target_ids: vec![target.into()],
            expected: vec![],
            skip_fingerprint: false,
            include_catalog: false,
        })
        .await?;
    let tv = resp.targets.into_iter().next().context("no result")?;
    ensure!(tv.error.is_empty(), "validate {target}: {}", tv.error);
    Ok(tv.fingerprint)
}

/// No revision ran twice: per revision at most one counting up row, and an adopted revision
/// has no `applied` row.
fn ran_once(agent: &TestAgent, statuses: &BTreeMap<String, pb::TargetStatus>) -> Result<()> {
    for (id, st) in statuses {
        let mut ups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for row in &st.history {
            if row.direction == pb::Direction::Up as i32 {
                ups.entry(&row.revision).or_default().push(&row.status);
            }
        }
        for (rev, statuses) in ups {
            ensure!(
                statuses.len() == 1,
                "agent {}: target {id}: revision {rev} has up rows {statuses:?}",
                agent.id
            );
        }
    }
    Ok(())
}

/// Run the rollout to head over the selected targets and require it to complete.
async fn rollout_to_head(coord: &TestCoordinator, targets: &[&str]) -> Result<()> {
    let mut s = spec("head");
    s.selector.target_ids = targets.iter().map(|t| (*t).to_owned()).collect();
    let r = coord.rollout(s).await?;
    ensure!(
        crate::harness::state(&r) == pb::RolloutState::Succeeded,
        "rollout ended {:?}: {:?}",
        crate::harness::state(&r),
        r.targets
    );
    Ok(())
}

// ---------------------------------------------------------------- Alembic

/// The Python modules the Alembic test drives; fail (never skip) with how to install them.
fn require_alembic() -> Result<()> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import alembic, sqlalchemy, psycopg2, pymysql"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "alembic is not installed: run `scripts/install-deps.sh --test` or \
             `python3 -m pip install alembic sqlalchemy psycopg2-binary pymysql`"
        );
    }
    Ok(())
}

/// `alembic upgrade REV` run by Alembic itself on one database.
fn alembic_upgrade(project: &Path, url: &str, rev: &str) -> Result<()> {
    let url = url
        .replacen("postgres://", "postgresql+psycopg2://", 1)
        .replacen("mysql://", "mysql+pymysql://", 1);
    let out = std::process::Command::new("python3")
        .args(["-m", "alembic", "upgrade", rev])
        .current_dir(project)
        .env("DATABASE_URL", url)
        .output()?;
    ensure!(
        out.status.success(),
        "alembic upgrade {rev} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

const A: &str = "1a2b3c4d5e6f"; // tenants: UUID, JSONB, ENUM, unique index
const B: &str = "2b3c4d5e6f7a"; // branch "billing": invoices + index
const C: &str = "3c4d5e6f7a8b"; // second branch: tenants.email + index
const M: &str = "4d5e6f7a8b9c"; // merge of B and C
const E: &str = "5e6f7a8b9c0d"; // events, the head

#[tokio::test]
async fn alembic_fleet_is_imported_adopted_and_rolled_to_head() -> Result<()> {
    require_alembic()?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    copy_dir(&fixture("alembic"), &project)?;
    let pg = flotilla_testkit::Postgres::start().await?;
    let my = flotilla_testkit::MariaDb::start().await?;

    // Tenants at different revisions, migrated by Alembic alone (pg2 has both branch heads).
    let mut pg_urls = Vec::new();
    for revs in [vec![A], vec![B, C], vec![M]] {
        let url = pg.fresh_database().await?;
        for r in revs {
            alembic_upgrade(&project, &url, r)?;
        }
        pg_urls.push(url);
    }
    let mut my_urls = Vec::new();
    for rev in [C, E] {
        let url = my.fresh_database().await?;
        alembic_upgrade(&project, &url, rev)?;
        my_urls.push(url);
    }
    let (pg_ref, my_ref) = (pg.fresh_database().await?, my.fresh_database().await?);
    alembic_upgrade(&project, &pg_ref, "heads")?;
    alembic_upgrade(&project, &my_ref, "heads")?;

    let migrations = work.path().join("migrations");
    let report = import("alembic", &project, &migrations).await?;
    ensure!(
        report["revisions"].as_array().map(Vec::len) == Some(5),
        "{report}"
    );
    let merge =
        std::fs::read_to_string(migrations.join(format!("{M}_merge_billing_and_email.sql")))?;
    ensure!(merge.contains(&format!("-- revises: {B}, {C}")), "{merge}");

    let pg_agent = TestAgent::start(
        "pg",
        pg_urls
            .iter()
            .enumerate()
            .map(|(i, u)| target(&format!("pg{}", i + 1), Dialect::Postgres, u, &[]))
            .collect(),
    )
    .await?;
    let my_agent = TestAgent::start(
        "my",
        my_urls
            .iter()
            .enumerate()
            .map(|(i, u)| target(&format!("my{}", i + 1), Dialect::Mysql, u, &[]))
            .collect(),
    )
    .await?;
    // The references are not part of the fleet: only their fingerprints are compared.
    let refs = TestAgent::start(
        "refs",
        vec![
            target("pg-ref", Dialect::Postgres, &pg_ref, &[]),
            target("my-ref", Dialect::Mysql, &my_ref, &[]),
        ],
    )
    .await?;
    let coord = TestCoordinator::start(&migrations, &[&pg_agent, &my_agent], None).await?;

    let (code, dry) = adopt(&coord, &["--dry-run"]).await?;
    ensure!(
        code == 0 && dry.values().all(|(o, ..)| o == "would_adopt"),
        "{dry:?}"
    );
    // The human form says how many revisions and where the target is, not a list that
    // reads as a range (pg2 is at both branches' tips, pg3 at their merge).
    let (code, human, err) = run_cli(
        &["adopt", "--coordinator", &coord.address, "--dry-run"],
        None,
    )
    .await?;
    ensure!(code == 0, "{human}{err}");
    let line_of = |t: &str| {
        human
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        line_of("pg2").ends_with(&format!("3 revisions; heads: {B}, {C}")),
        "{human}"
    );
    ensure!(
        line_of("pg3").ends_with(&format!("4 revisions; head: {M}")),
        "{human}"
    );
    ensure!(
        line_of("pg1").ends_with(&format!("1 revision; head: {A}")),
        "{human}"
    );
    ensure!(
        pg_agent
            .statuses(false)
            .await?
            .values()
            .all(|s| s.applied.is_empty())
    );

    let (code, adopted) = adopt(&coord, &["--from", "alembic"]).await?;
    ensure!(code == 0, "adopt exited {code}: {adopted:?}");
    let want: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("pg1", vec![A]),
        ("pg2", vec![A, B, C]),
        ("pg3", vec![A, B, C, M]),
        ("my1", vec![A, C]),
        ("my2", vec![A, B, C, M, E]),
    ]);
    for (t, revs) in &want {
        let (outcome, got, reason) = adopted.get(*t).with_context(|| format!("{t} missing"))?;
        ensure!(
            outcome == "adopted" && got == revs,
            "{t}: {outcome} {got:?} {reason}"
        );
    }
    // A second adopt changes nothing: the targets are Flotilla's now.
    let (_, again) = adopt(&coord, &[]).await?;
    ensure!(again.values().all(|(o, ..)| o == "skipped"), "{again:?}");

    rollout_to_head(&coord, &[]).await?;

    let pg_fp = fingerprint(&refs.agent, "pg-ref").await?;
    let my_fp = fingerprint(&refs.agent, "my-ref").await?;
    for (agent, want_fp) in [(&pg_agent, &pg_fp), (&my_agent, &my_fp)] {
        let statuses = agent.statuses(true).await?;
        for (id, st) in &statuses {
            let mut applied = crate::harness::applied(st);
            applied.sort();
            ensure!(applied == [A, B, C, M, E], "{id}: applied {applied:?}");
            let fp = fingerprint(&agent.agent, id).await?;
            ensure!(
                &fp == want_fp,
                "{id}: fingerprint differs from the Alembic-only tenant"
            );
        }
        ran_once(agent, &statuses)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- Flyway and sqlx

const FLYWAY: [(&str, &str); 4] = [
    (
        "V1__create_accounts.sql",
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL);",
    ),
    (
        "V2__add_email.sql",
        "ALTER TABLE accounts ADD COLUMN email VARCHAR(200);",
    ),
    (
        "V2_1__index_email.sql",
        "CREATE INDEX accounts_email_idx ON accounts (email);",
    ),
    (
        "V3__orders.sql",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, account_id BIGINT NOT NULL REFERENCES accounts (id), total NUMERIC(12,2) NOT NULL);\nCREATE INDEX orders_account_idx ON orders (account_id);",
    ),
];

/// Migrate a PostgreSQL database the way Flyway does: run the first `n` V files in version
/// order, each recorded in `flyway_schema_history` (Flyway's own table definition).
async fn flyway_migrate(url: &str, n: usize) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(
        "CREATE TABLE flyway_schema_history (
            installed_rank INT NOT NULL, version VARCHAR(50), description VARCHAR(200) NOT NULL,
            type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INTEGER,
            installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(),
            execution_time INTEGER NOT NULL, success BOOLEAN NOT NULL,
            CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank));
         CREATE INDEX flyway_schema_history_s_idx ON flyway_schema_history (success);",
    )
    .execute(&mut conn)
    .await?;
    for (rank, (file, sql)) in FLYWAY.iter().take(n).enumerate() {
        let version = file[1..].split("__").next().unwrap_or("").replace('_', ".");
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO flyway_schema_history (installed_rank, version, description, type, \
             script, checksum, installed_by, execution_time, success) \
             VALUES ($1, $2, $3, 'SQL', $4, 0, 'flyway', 1, true)",
        )
        .bind(rank as i32 + 1)
        .bind(&version)
        .bind(file)
        .bind(file)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    conn.close().await?;
    Ok(())
}

#[tokio::test]
async fn flyway_and_sqlx_fleets_are_adopted_and_rolled_to_head() -> Result<()> {
    let work = tempfile::tempdir()?;
    let pg = flotilla_testkit::Postgres::start().await?;
    let my = flotilla_testkit::MariaDb::start().await?;

    // Flyway on PostgreSQL: tenants at V1 and V2.1, the reference at V3.
    let flyway_dir = work.path().join("flyway");
    std::fs::create_dir_all(&flyway_dir)?;
    for (file, sql) in FLYWAY {
        std::fs::write(flyway_dir.join(file), format!("{sql}\n"))?;
    }
    let (fw1, fw2, fw_ref) = (
        pg.fresh_database().await?,
        pg.fresh_database().await?,
        pg.fresh_database().await?,
    );
    flyway_migrate(&fw1, 1).await?;
    flyway_migrate(&fw2, 3).await?;
    flyway_migrate(&fw_ref, 4).await?;

    // sqlx on MariaDB, with the real sqlx migrator: tenants at 1 and 2, the reference at 3.
    let sqlx_dir = work.path().join("sqlx");
    std::fs::create_dir_all(&sqlx_dir)?;
    for (name, up, down) in [
        (
            "20240101000001_create_items",
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL);",
            "DROP TABLE items;",
        ),
        (
            "20240101000002_add_price",
            "ALTER TABLE items ADD COLUMN price DECIMAL(10,2);",
            "ALTER TABLE items DROP COLUMN price;",
        ),
        (
            "20240101000003_index_name",
            "CREATE INDEX items_name_idx ON items (name);",
            "DROP INDEX items_name_idx ON items;",
        ),
    ] {
        std::fs::write(sqlx_dir.join(format!("{name}.up.sql")), format!("{up}\n"))?;
        std::fs::write(
            sqlx_dir.join(format!("{name}.down.sql")),
            format!("{down}\n"),
        )?;
    }
    let migrator = sqlx::migrate::Migrator::new(sqlx_dir.as_path()).await?;
    let (sq1, sq2, sq_ref) = (
        my.fresh_database().await?,
        my.fresh_database().await?,
        my.fresh_database().await?,
    );
    for (url, to) in [
        (&sq1, 20240101000001),
        (&sq2, 20240101000002),
        (&sq_ref, 20240101000003),
    ] {
        let mut conn = sqlx::MySqlConnection::connect(url).await?;
        migrator.run_to(to, &mut conn).await?;
        conn.close().await?;
    }

    let fw_migrations = work.path().join("fw-migrations");
    let report = import("flyway", &flyway_dir, &fw_migrations).await?;
    ensure!(
        report["revisions"].as_array().map(Vec::len) == Some(4),
        "{report}"
    );
    let sq_migrations = work.path().join("sq-migrations");
    let report = import("sqlx", &sqlx_dir, &sq_migrations).await?;
    ensure!(
        report["revisions"].as_array().map(Vec::len) == Some(3),
        "{report}"
    );
    ensure!(
        std::fs::read_to_string(sq_migrations.join("20240101000002_add_price.sql"))?
            .contains("-- migrate:down\nALTER TABLE items DROP COLUMN price;"),
        "sqlx down section missing"
    );

    let refs = TestAgent::start(
        "refs",
        vec![
            target("fw-ref", Dialect::Postgres, &fw_ref, &[]),
            target("sq-ref", Dialect::Mysql, &sq_ref, &[]),
        ],
    )
    .await?;
    for (tool, migrations, dialect, urls, want, ref_id) in [
        (
            "flyway",
            &fw_migrations,
            Dialect::Postgres,
            [&fw1, &fw2],
            [vec!["1"], vec!["1", "2", "2.1"]],
            "fw-ref",
        ),
        (
            "sqlx",
            &sq_migrations,
            Dialect::Mysql,
            [&sq1, &sq2],
            [
                vec!["20240101000001"],
                vec!["20240101000001", "20240101000002"],
            ],
            "sq-ref",
        ),
    ] {
        let agent = TestAgent::start(
            tool,
            vec![
                target("t1", dialect, urls[0], &[]),
                target("t2", dialect, urls[1], &[]),
            ],
        )
        .await?;
        let coord = TestCoordinator::start(migrations, &[&agent], None).await?;
        let (code, adopted) = adopt(&coord, &[]).await?;
        ensure!(code == 0, "{tool}: adopt exited {code}: {adopted:?}");
        for (t, revs) in ["t1", "t2"].iter().zip(&want) {
            let (outcome, got, reason) = adopted.get(*t).context("missing")?;
            ensure!(
                outcome == "adopted" && got == revs,
                "{tool} {t}: {outcome} {got:?} {reason}"
            );
        }
        rollout_to_head(&coord, &[]).await?;
        let want_fp = fingerprint(&refs.agent, ref_id).await?;
        let statuses = agent.statuses(true).await?;
        for id in ["t1", "t2"] {
            let fp = fingerprint(&agent.agent, id).await?;
            ensure!(
                fp == want_fp,
                "{tool} {id}: fingerprint differs from the {tool}-only tenant"
            );
        }
        ran_once(&agent, &statuses)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- an unknown revision

#[tokio::test]
async fn a_version_table_naming_an_unknown_revision_blocks_only_that_target() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = work.path().join("golang");
    std::fs::create_dir_all(&source)?;
    let ups = [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        "ALTER TABLE notes ADD COLUMN author TEXT;",
        "CREATE INDEX notes_author_idx ON notes (author);",
    ];
    for (i, up) in ups.iter().enumerate() {
        std::fs::write(
            source.join(format!("{:06}_step{}.up.sql", i + 1, i + 1)),
            up,
        )?;
        std::fs::write(
            source.join(format!("{:06}_step{}.down.sql", i + 1, i + 1)),
            "SELECT 1;",
        )?;
    }
    let migrations = work.path().join("migrations");
    import("golang-migrate", &source, &migrations).await?;

    // golang-migrate's table: one version and a dirty flag. s3 names version 9, which the
    // source does not have (a newer deploy, or a hand edit).
    let mut dbs = Vec::new();
    let mut targets = Vec::new();
    for (id, version, applied) in [("s1", 1, 1), ("s2", 2, 2), ("s3", 9, 3), ("ref", 3, 3)] {
        let (dir, url) = flotilla_testkit::sqlite_database()?;
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        let mut sql = String::from(
            "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);\n",
        );
        for up in &ups[..applied] {
            sql.push_str(up);
            sql.push('\n');
        }
        sql.push_str(&format!(
            "INSERT INTO schema_migrations VALUES ({version}, false);"
        ));
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
        conn.close().await?;
        targets.push(target(id, Dialect::Sqlite, &url, &[]));
        dbs.push(dir);
    }
    let ref_target = targets.pop().context("ref")?;
    let refs = TestAgent::start("refs", vec![ref_target]).await?;
    let agent = TestAgent::start("lite", targets).await?;
    let coord = TestCoordinator::start(&migrations, &[&agent], None).await?;

    let (code, adopted) = adopt(&coord, &["--from", "golang-migrate"]).await?;
    ensure!(
        code == 3,
        "a blocked target must make adopt exit 3, got {code}: {adopted:?}"
    );
    let (outcome, _, reason) = adopted.get("s3").context("s3 missing")?;
    ensure!(outcome == "blocked", "s3: {outcome}");
    ensure!(
        reason.contains("schema_migrations names revision 9")
            && reason.contains("flotilla import golang-migrate"),
        "unclear reason: {reason}"
    );
    ensure!(
        adopted.get("s1").map(|a| (a.0.as_str(), a.1.clone()))
            == Some(("adopted", vec!["1".into()]))
    );
    ensure!(
        adopted.get("s2").map(|a| (a.0.as_str(), a.1.clone()))
            == Some(("adopted", vec!["1".into(), "2".into()]))
    );
    let statuses = agent.statuses(true).await?;
    ensure!(
        statuses["s3"].history.is_empty(),
        "the blocked target was written to"
    );

    rollout_to_head(&coord, &["s1", "s2"]).await?;
    let want_fp = fingerprint(&refs.agent, "ref").await?;
    for id in ["s1", "s2"] {
        ensure!(
            fingerprint(&agent.agent, id).await? == want_fp,
            "{id}: fingerprint differs"
        );
    }
    ran_once(&agent, &agent.statuses(true).await?)?;

    // Alembic habits: `current`, `downgrade -1` (= `rollout start --to -1`), `reset`.
    let mig = migrations.to_string_lossy();
    let current = |extra: &'static [&'static str]| {
        let mut args = vec![
            "--output".to_owned(),
            "json".into(),
            "--migrations".into(),
            mig.to_string(),
            "current".into(),
            "--coordinator".into(),
            coord.address.clone(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = run_cli(&args, None).await?;
            ensure!(code == 0, "current exited {code}: {err}");
            anyhow::Ok(serde_json::from_str::<serde_json::Value>(&out)?)
        }
    };
    let v = current(&[]).await?;
    ensure!(
        v["summary"]["3 (head)"] == 2 && v["summary"]["base"] == 1,
        "{v}"
    );
    let (code, _, err) = run_cli(
        &[
            "rollout",
            "start",
            "--coordinator",
            &coord.address,
            "--to",
            "-1",
            "--target",
            "s1",
            "--wait",
        ],
        None,
    )
    .await?;
    ensure!(code == 0, "--to -1 exited {code}: {err}");
    let v = current(&["--target", "s1"]).await?;
    ensure!(
        v["targets"][0]["current"] == serde_json::json!(["2"]),
        "{v}"
    );
    let (code, _, _) = run_cli(
        &["reset", "--coordinator", &coord.address, "--target", "s1"],
        None,
    )
    .await?;
    ensure!(code == 1, "reset without --yes must refuse");
    let (code, _, err) = run_cli(
        &[
            "reset",
            "--coordinator",
            &coord.address,
            "--target",
            "s1",
            "--yes",
        ],
        None,
    )
    .await?;
    ensure!(code == 0, "reset exited {code}: {err}");
    let statuses = agent.statuses(false).await?;
    ensure!(
        statuses["s1"].applied.is_empty(),
        "s1 not at base: {:?}",
        statuses["s1"].applied
    );
    ensure!(
        crate::harness::applied(&statuses["s2"]).len() == 3,
        "reset touched s2"
    );
    Ok(())
}

/// `alembic upgrade REV` expected to fail: what it printed.
fn alembic_upgrade_fails(project: &Path, url: &str, rev: &str) -> Result<String> {
    let url = url
        .replacen("postgres://", "postgresql+psycopg2://", 1)
        .replacen("mysql://", "mysql+pymysql://", 1);
    let out = std::process::Command::new("python3")
        .args(["-m", "alembic", "upgrade", rev])
        .current_dir(project)
        .env("DATABASE_URL", url)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "alembic upgrade {rev} succeeded: {said}"
    );
    Ok(said)
}

/// After `adopt --retire-foreign` a stale `alembic upgrade head` (a deploy job nobody
/// removed) stops at once with the retirement mark and changes nothing, on PostgreSQL and
/// MariaDB; a target adopted earlier is retired by a later `--retire-foreign`.
#[tokio::test]
async fn a_retired_alembic_table_stops_alembic_before_it_touches_anything() -> Result<()> {
    require_alembic()?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    copy_dir(&fixture("alembic"), &project)?;
    let pg = flotilla_testkit::Postgres::start().await?;
    let my = flotilla_testkit::MariaDb::start().await?;
    // Tenants part way (so a re-run would have DDL to do).
    let pg_url = pg.fresh_database().await?;
    alembic_upgrade(&project, &pg_url, A)?;
    let my_url = my.fresh_database().await?;
    alembic_upgrade(&project, &my_url, C)?;
    let late_url = pg.fresh_database().await?;
    alembic_upgrade(&project, &late_url, A)?;

    let migrations = work.path().join("migrations");
    import("alembic", &project, &migrations).await?;
    let agent = TestAgent::start(
        "retire",
        vec![
            target("pg1", Dialect::Postgres, &pg_url, &[]),
            target("my1", Dialect::Mysql, &my_url, &[]),
            target("late", Dialect::Postgres, &late_url, &[("when", "late")]),
        ],
    )
    .await?;
    let coord = TestCoordinator::start(&migrations, &[&agent], None).await?;

    // `late` is adopted without retiring, the others with it.
    let (code, first) = adopt(&coord, &["-l", "when=late"]).await?;
    ensure!(code == 0 && first["late"].0 == "adopted", "{first:?}");
    let (code, adopted) = adopt(&coord, &["--retire-foreign"]).await?;
    ensure!(
        code == 0,
        "adopt --retire-foreign exited {code}: {adopted:?}"
    );
    for (id, outcome) in [("pg1", "adopted"), ("my1", "adopted"), ("late", "retired")] {
        let (got, _, reason) = adopted.get(id).with_context(|| format!("{id} missing"))?;
        ensure!(
            got == outcome && reason.contains("alembic_version retired"),
            "{id}: {got} {reason}"
        );
    }

    for (id, url) in [("pg1", &pg_url), ("my1", &my_url), ("late", &late_url)] {
        let before = fingerprint(&agent.agent, id).await?;
        let err = alembic_upgrade_fails(&project, url, "head")?;
        ensure!(
            err.contains(flotilla_core::foreign::RETIRED),
            "{id}: alembic did not stop on the retirement mark: {err}"
        );
        ensure!(
            fingerprint(&agent.agent, id).await? == before,
            "{id}: the failed alembic run changed the schema"
        );
    }
    // Flotilla itself is not stopped by it: the targets roll to head.
    rollout_to_head(&coord, &[]).await?;
    Ok(())
}
