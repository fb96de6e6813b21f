//! Projects on one target (issue 26): each project has its own history, fence and migration
//! lock, a database migrated before projects existed is read as project `default`, and a
//! project's first write creates its tables under its lock and fence. On PostgreSQL,
//! MariaDB and SQLite.

use anyhow::{Context, Result, ensure};
use flotilla_agent::Agent;
use flotilla_agent::driver::{DriverError, StepMeta, StepSpec};
use flotilla_core::project::Project;
use flotilla_core::{Dialect, Direction, checksum};
use flotilla_proto::{ExpectedRevision, MigrateRequest, StatusRequest, ValidateRequest};

use crate::locking::driver_for;
use crate::support::{Backend, agent, reason, run, up};

const A_UP: &str = "CREATE TABLE app_a (id INTEGER PRIMARY KEY);";
const B_UP: &str = "CREATE TABLE app_b (id INTEGER PRIMARY KEY);";
const B_DOWN: &str = "DROP TABLE app_b;";

fn in_project(project: &str, req: MigrateRequest) -> MigrateRequest {
    MigrateRequest {
        project: project.into(),
        ..req
    }
}

fn migrate(rollout: &str, token: u64, steps: Vec<flotilla_proto::Step>) -> MigrateRequest {
    crate::support::migrate("t1", rollout, token, steps)
}

/// The applied revisions of `project` on t1, as Status reports them.
async fn applied(agent: &Agent, project: &str) -> Result<Vec<String>> {
    let resp = agent
        .status(StatusRequest {
            target_ids: vec!["t1".into()],
            project: project.into(),
            ..Default::default()
        })
        .await?;
    let t = resp.targets.into_iter().next().context("no target")?;
    ensure!(t.error.is_empty(), "status: {}", t.error);
    Ok(t.applied.into_iter().map(|a| a.revision).collect())
}

/// Validate of `project` on t1 against `expected`: its issues and the tables of the schema.
async fn validate(
    agent: &Agent,
    project: &str,
    expected: &[(&str, &str)],
) -> Result<(Vec<String>, Vec<String>)> {
    let resp = agent
        .validate(ValidateRequest {
            target_ids: vec!["t1".into()],
            expected: expected
                .iter()
                .map(|(r, sql)| ExpectedRevision {
                    revision: (*r).into(),
                    checksum: checksum(sql),
                })
                .collect(),
            include_catalog: true,
            project: project.into(),
            ..Default::default()
        })
        .await?;
    let t = resp.targets.into_iter().next().context("no target")?;
    ensure!(t.error.is_empty(), "validate: {}", t.error);
    let tables = t
        .catalog
        .context("no catalog")?
        .tables
        .into_iter()
        .map(|t| t.name)
        .collect();
    Ok((t.issues.into_iter().map(|i| i.message).collect(), tables))
}

async fn two_projects_on_one_target(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let t = backend.fresh_target("t1").await?;
    let url = t.url.expose().to_owned();
    let agent = agent(vec![t]).await?;

    // What a coordinator of an earlier version sends (no project): the pre-project tables.
    let old = run(&agent, migrate("r-old", 5, vec![up("0001_a", A_UP)])).await?;
    ensure!(old.error.is_none(), "{:?}", old.error);
    let driver = driver_for(dialect, &url)?;
    let default = driver.read_state(&Project::default()).await?;
    ensure!(default.is_applied("0001_a") && default.fence_token == 5);
    ensure!(applied(&agent, "default").await? == ["0001_a"]);

    // Billing's writers wait for billing's own lock: held elsewhere, a billing Migrate times
    // out on it (LOCK_TIMEOUT) and runs no step.
    let billing = Project::parse("billing")?;
    let mut b_holder = driver.connect(&billing).await?;
    ensure!(b_holder.try_lock().await?, "billing's lock was not free");
    let waited = run(
        &agent,
        MigrateRequest {
            lock_wait_ms: 300,
            ..in_project("billing", migrate("r-b0", 5, vec![up("0001_b", B_UP)]))
        },
    )
    .await?;
    ensure!(
        reason(waited.err()?) == "LOCK_TIMEOUT",
        "{:?}",
        waited.error
    );
    let (_, tables) = validate(&agent, "billing", &[]).await?;
    ensure!(!tables.contains(&"app_b".to_owned()), "{tables:?}");
    b_holder.unlock().await?;
    b_holder.close().await;

    // Project billing on the same database, while someone holds project default's migration
    // lock: billing's lock is its own, so it does not wait.
    let mut holder = driver.connect(&Project::default()).await?;
    ensure!(holder.try_lock().await?, "the default lock was not free");
    let b = in_project(
        "billing",
        migrate(
            "r-b",
            5,
            vec![up("0001_b", B_UP), up("0002_b", "SELECT 1;")],
        ),
    );
    let done = run(&agent, b).await?;
    ensure!(
        done.error.is_none(),
        "billing waited or failed: {:?}",
        done.error
    );
    ensure!(
        !done.kinds().iter().any(|k| k == "lock_waiting"),
        "billing waited for default's lock: {:?}",
        done.kinds()
    );
    // ...while the default project's own lock still excludes its writers.
    let blocked = {
        let mut s = driver.connect(&Project::default()).await?;
        let taken = s.try_lock().await?;
        s.close().await;
        !taken
    };
    ensure!(
        blocked,
        "the default project's lock did not exclude a second session"
    );
    holder.unlock().await?;
    holder.close().await;

    // Independent histories: neither project sees the other's revisions.
    ensure!(applied(&agent, "").await? == ["0001_a"]);
    ensure!(applied(&agent, "billing").await? == ["0001_b", "0002_b"]);
    let (issues, tables) = validate(&agent, "", &[("0001_a", A_UP)]).await?;
    ensure!(issues.is_empty(), "default sees drift: {issues:?}");
    ensure!(
        tables.contains(&"app_a".to_owned()) && tables.contains(&"app_b".to_owned()),
        "{tables:?}"
    );
    ensure!(
        !tables.iter().any(|t| t.starts_with("flotilla_")),
        "flotilla's tables are not schema: {tables:?}"
    );
    let (issues, _) = validate(
        &agent,
        "billing",
        &[("0001_b", B_UP), ("0002_b", "SELECT 1;")],
    )
    .await?;
    ensure!(issues.is_empty(), "billing sees drift: {issues:?}");

    // Billing's fence row is its own and guards its writes: a lower token is refused there.
    let mut s = driver.connect(&billing).await?;
    let step = StepSpec {
        revision: "0003_b".into(),
        direction: Direction::Up,
        sql: "SELECT 1;".into(),
        checksum: checksum("SELECT 1;"),
        transactional: true,
        bounds: Default::default(),
        check: String::new(),
        verify: String::new(),
    };
    let meta = StepMeta {
        rollout_id: "r-stale".into(),
        agent_id: "someone".into(),
        fencing_token: 3,
    };
    let stale = s.apply_transactional(&step, &meta).await;
    s.close().await;
    ensure!(
        matches!(
            stale,
            Err(DriverError::StaleToken {
                offered: 3,
                current: 5
            })
        ),
        "billing's fence let a stale token through: {stale:?}"
    );

    // A downgrade of billing removes billing's table and rows only.
    let down = flotilla_proto::Step {
        direction: flotilla_proto::Direction::Down as i32,
        up_checksum: checksum(B_UP),
        ..up("0001_b", B_DOWN)
    };
    let undo = in_project(
        "billing",
        migrate(
            "r-b-down",
            6,
            vec![
                flotilla_proto::Step {
                    direction: flotilla_proto::Direction::Down as i32,
                    up_checksum: checksum("SELECT 1;"),
                    ..up("0002_b", "SELECT 1;")
                },
                down,
            ],
        ),
    );
    let undone = run(&agent, undo).await?;
    ensure!(undone.error.is_none(), "{:?}", undone.error);
    ensure!(applied(&agent, "billing").await?.is_empty());
    ensure!(applied(&agent, "default").await? == ["0001_a"]);
    let (_, tables) = validate(&agent, "default", &[("0001_a", A_UP)]).await?;
    ensure!(
        tables == ["app_a"],
        "the downgrade touched default's tables: {tables:?}"
    );
    ensure!(
        driver.read_state(&Project::default()).await? == default,
        "the default project's history changed"
    );
    Ok(())
}

#[tokio::test]
async fn two_projects_on_one_sqlite_target_are_independent() -> Result<()> {
    two_projects_on_one_target(Dialect::Sqlite).await
}

#[tokio::test]
async fn two_projects_on_one_postgres_target_are_independent() -> Result<()> {
    two_projects_on_one_target(Dialect::Postgres).await
}

#[tokio::test]
async fn two_projects_on_one_mariadb_target_are_independent() -> Result<()> {
    two_projects_on_one_target(Dialect::Mysql).await
}

#[tokio::test]
async fn an_invalid_project_is_refused_before_anything_runs() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let bad = in_project("Billing;drop", migrate("r", 1, vec![up("0001_a", A_UP)]));
    let Err(status) = agent.migrate(bad).await else {
        anyhow::bail!("an invalid project was accepted");
    };
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
    ensure!(
        status.message().contains("invalid project name"),
        "{status:?}"
    );
    ensure!(applied(&agent, "").await?.is_empty());
    Ok(())
}
