//! Tenants another tool still manages: a MariaDB and a PostgreSQL database with Alembic's
//! `alembic_version` (created as Alembic creates it) and no Flotilla history are blocked in
//! `plan` and in rollouts with the adopt hint, and nothing runs on them: not through a
//! rollout, and not through a Migrate sent to their agent directly (checked under the lock).
//! After `flotilla adopt` they migrate from where Alembic left them.

use anyhow::{Context, Result, ensure};
use flotilla_core::Dialect;
use flotilla_proto as pb;
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection};

use crate::harness::{
    TestAgent, TestCoordinator, migrations, revision, run_cli, target, wire_steps,
};

const FIRST: &str = "ae1027a6acf";
const SECOND: &str = "1975ea83b712";

/// What Alembic leaves after `upgrade ae1027a6acf`: its version table and the first table.
const ALEMBIC_AT_FIRST: &str = "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);\n\
    INSERT INTO alembic_version (version_num) VALUES ('ae1027a6acf');\n\
    CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50));";

/// The tables of a database, sorted.
async fn tables(dialect: Dialect, url: &str) -> Result<Vec<String>> {
    let sql = "SELECT CAST(table_name AS CHAR(128)) FROM information_schema.tables \
               WHERE table_schema = DATABASE() ORDER BY 1";
    Ok(match dialect {
        Dialect::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY 1",
            )
            .fetch_all(&mut c)
            .await?
        }
        _ => {
            let mut c = sqlx::MySqlConnection::connect(url).await?;
            sqlx::query_scalar(sql).fetch_all(&mut c).await?
        }
    })
}

async fn run_sql(dialect: Dialect, url: &str, sql: &str) -> Result<()> {
    match dialect {
        Dialect::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await?;
        }
        _ => {
            let mut c = sqlx::MySqlConnection::connect(url).await?;
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await?;
        }
    }
    Ok(())
}

/// `plan --output json`: target id → (blocked reason, planned revisions).
async fn plan(
    addr: &str,
    extra: &[&str],
) -> Result<std::collections::BTreeMap<String, (String, Vec<String>)>> {
    let mut args = vec!["--output", "json", "plan", "--coordinator", addr];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(&args, None).await?;
    ensure!(code == 0, "plan exited {code}: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let mut by = std::collections::BTreeMap::new();
    for t in v["targets"].as_array().context("targets")? {
        let steps = t["steps"]
            .as_array()
            .context("steps")?
            .iter()
            .filter_map(|s| s["revision"].as_str().map(str::to_owned))
            .collect();
        by.insert(
            t["target"].as_str().unwrap_or_default().to_owned(),
            (t["blocked"].as_str().unwrap_or_default().to_owned(), steps),
        );
    }
    Ok(by)
}

fn hint(target: &str) -> String {
    format!(
        "managed by alembic at {FIRST} (alembic_version): adopt it first: flotilla adopt --target {target}"
    )
}

#[tokio::test]
async fn targets_under_alembic_are_blocked_until_adopted() -> Result<()> {
    let dir = migrations(&[
        (
            "0001.sql",
            &revision(
                FIRST,
                None,
                "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50));",
                "DROP TABLE users;",
            ),
        ),
        (
            "0002.sql",
            &revision(
                SECOND,
                Some(FIRST),
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER);",
                "DROP TABLE orders;",
            ),
        ),
    ])?;
    let pg = flotilla_testkit::Postgres::start().await?;
    let my = flotilla_testkit::MariaDb::start().await?;
    let pg_alembic = pg.fresh_database().await?;
    let my_alembic = my.fresh_database().await?;
    let pg_fresh = pg.fresh_database().await?;
    // Clean when the coordinator first sees it; Alembic's table appears before the rollout.
    let my_late = my.fresh_database().await?;
    for (d, url) in [
        (Dialect::Postgres, &pg_alembic),
        (Dialect::Mysql, &my_alembic),
    ] {
        run_sql(d, url, ALEMBIC_AT_FIRST).await?;
    }
    let agent = TestAgent::start(
        "a1",
        vec![
            target("pg-alembic", Dialect::Postgres, &pg_alembic, &[]),
            target("my-alembic", Dialect::Mysql, &my_alembic, &[]),
            target("pg-fresh", Dialect::Postgres, &pg_fresh, &[]),
            target("my-late", Dialect::Mysql, &my_late, &[]),
        ],
    )
    .await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let addr = coord.address.as_str();
    let alembic_tables = vec!["alembic_version".to_owned(), "users".to_owned()];

    // The agent reports the version table in Status, for targets without Flotilla history.
    let statuses = agent.statuses(false).await?;
    for id in ["pg-alembic", "my-alembic"] {
        let f = statuses[id]
            .foreign
            .first()
            .context("no foreign table reported")?;
        ensure!(f.tool == "alembic" && f.up_to == [FIRST], "{id}: {f:?}");
    }
    ensure!(statuses["pg-fresh"].foreign.is_empty());

    // plan: blocked with the adopt hint; the clean target plans from base.
    let p = plan(addr, &[]).await?;
    for id in ["pg-alembic", "my-alembic"] {
        let (why, steps) = &p[id];
        ensure!(
            why.contains(&hint(id)) && why.contains("--allow-foreign"),
            "{id}: {why}"
        );
        ensure!(steps.is_empty(), "{id}: {steps:?}");
    }
    let from_base = (String::new(), vec![FIRST.to_owned(), SECOND.to_owned()]);
    ensure!(
        p["pg-fresh"] == from_base && p["my-late"] == from_base,
        "{p:?}"
    );
    // --allow-foreign (after review) plans them like any target at base.
    let p = plan(addr, &["--allow-foreign"]).await?;
    ensure!(p["my-alembic"] == from_base, "{p:?}");

    // my-late gets its version table now: the coordinator's view of it (at base, clean)
    // plans it to steps, so only the agent's check under the lock can stop it.
    run_sql(Dialect::Mysql, &my_late, ALEMBIC_AT_FIRST).await?;

    // A rollout: the clean target migrates, the others end blocked with the hint, exit 6.
    let (code, out, err) = run_cli(
        &[
            "--output",
            "json",
            "rollout",
            "start",
            "--wait",
            "--coordinator",
            addr,
        ],
        None,
    )
    .await?;
    ensure!(code == 6, "rollout exited {code}: {out}{err}");
    // The last JSON document printed is the rollout as it ended.
    let r: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .last()
        .context("no json")?
        .with_context(|| out.clone())?;
    ensure!(r["state"] == "blocked", "{r}");
    for t in r["targets"].as_array().context("targets")? {
        let id = t["target"].as_str().unwrap_or_default();
        let msg = t["message"].as_str().unwrap_or_default();
        if id == "pg-fresh" {
            ensure!(t["state"] == "succeeded", "{t}");
        } else {
            ensure!(t["state"] == "blocked" && msg.contains(&hint(id)), "{t}");
        }
        // my-late was planned from the view: the agent refused it (its message names the
        // target first), and the engine blocked it rather than failing it.
        if id == "my-late" {
            ensure!(msg.starts_with("target my-late: managed by"), "{t}");
        }
    }
    // Nothing ran on them: their schema is what Alembic left, no Flotilla table either.
    for (d, url) in [
        (Dialect::Postgres, &pg_alembic),
        (Dialect::Mysql, &my_alembic),
        (Dialect::Mysql, &my_late),
    ] {
        let t = tables(d, url).await?;
        ensure!(t == alembic_tables, "{d:?}: {t:?}");
    }

    // A Migrate sent to the agent directly is refused under the lock, before any step.
    let graph =
        flotilla_revision::Graph::load_dir(dir.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = flotilla_revision::plan(
        &graph,
        &Default::default(),
        &flotilla_revision::Goal::Head,
        Dialect::Mysql,
    )
    .map_err(|b| anyhow::anyhow!("{b}"))?;
    let req = pb::MigrateRequest {
        target_id: "my-alembic".into(),
        rollout_id: "by-hand".into(),
        fencing_token: 1 << 40,
        steps: wire_steps(&plan.steps),
        ..Default::default()
    };
    let mut events = agent.agent.migrate(req).await?;
    let mut refused = None;
    while let Some(ev) = events.next().await {
        match ev {
            // Refused as a whole: no step started, none failed.
            Ok(ev) => ensure!(
                !matches!(
                    ev.event,
                    Some(
                        pb::step_event::Event::Started(_)
                            | pb::step_event::Event::Succeeded(_)
                            | pb::step_event::Event::Failed(_)
                    )
                ),
                "unexpected event: {ev:?}"
            ),
            Err(s) => refused = Some(s),
        }
    }
    let refused = refused.context("the Migrate was not refused")?;
    ensure!(
        refused.code() == tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    ensure!(
        refused.message().starts_with("FOREIGN_HISTORY: ")
            && refused.message().contains(&hint("my-alembic")),
        "{}",
        refused.message()
    );
    ensure!(tables(Dialect::Mysql, &my_alembic).await? == alembic_tables);

    // Adopt, then they migrate from where Alembic left them.
    let (code, out, err) = run_cli(
        &[
            "adopt",
            "--target",
            "pg-alembic",
            "--target",
            "my-alembic",
            "--target",
            "my-late",
            "--coordinator",
            addr,
        ],
        None,
    )
    .await?;
    ensure!(code == 0, "adopt exited {code}: {out}{err}");
    let (code, out, err) =
        run_cli(&["rollout", "start", "--wait", "--coordinator", addr], None).await?;
    ensure!(code == 0, "rollout after adopt exited {code}: {out}{err}");
    let statuses = agent.statuses(true).await?;
    for (id, d, url) in [
        ("pg-alembic", Dialect::Postgres, &pg_alembic),
        ("my-alembic", Dialect::Mysql, &my_alembic),
        ("my-late", Dialect::Mysql, &my_late),
    ] {
        let rows: Vec<(String, String)> = statuses[id]
            .history
            .iter()
            .map(|h| (h.revision.clone(), h.status.clone()))
            .collect();
        ensure!(
            rows == [
                (FIRST.to_owned(), "adopted".to_owned()),
                (SECOND.to_owned(), "applied".to_owned())
            ],
            "{id}: {rows:?}"
        );
        ensure!(
            statuses[id].foreign.is_empty(),
            "{id}: reported once adopted"
        );
        let t = tables(d, url).await?;
        ensure!(
            t.contains(&"orders".to_owned()) && t.contains(&"flotilla_history".to_owned()),
            "{id}: {t:?}"
        );
    }
    Ok(())
}
