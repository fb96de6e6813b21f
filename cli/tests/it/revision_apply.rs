//! The example migration set on real PostgreSQL, MariaDB and SQLite: applied up to head and
//! back down through the agent (plans from the agent's own status), and the same through
//! `flotilla render` piped into psql / mariadb / sqlite3; both must give the same schema
//! fingerprint at head and after the downgrade.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use flotilla_agent::{Agent, AgentConfig, TargetConfig};
use flotilla_core::{Dialect, Secret};
use flotilla_proto::step_event::Event;
use flotilla_proto::{MigrateRequest, StatusRequest, Step, ValidateRequest};
use flotilla_revision::{
    AppliedRevision, Goal, Graph, Plan, RenderRequest, TargetHistory, plan, render,
};
use flotilla_rpc::convert::DirectionProto;
use futures::StreamExt;

/// The lowest revision a downgrade of the example set can reach (the next one down is the
/// deliberately irreversible revision).
const DOWN_TO: &str = "0004_lowercase_user_emails";

fn example_graph() -> Result<Graph> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    Graph::load_dir(&dir).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn agent(dialect: Dialect, urls: &[(&str, &str)]) -> Result<Agent> {
    let targets = urls
        .iter()
        .map(|(id, url)| TargetConfig {
            id: (*id).into(),
            dialect,
            url: Secret::new(*url),
            labels: Default::default(),
        })
        .collect();
    Ok(Agent::new(AgentConfig {
        agent_id: "revision-apply-test".into(),
        targets,
        ..AgentConfig::default()
    })
    .await?)
}

async fn history(agent: &Agent, target: &str) -> Result<TargetHistory> {
    let resp = agent
        .status(StatusRequest {
            target_ids: vec![target.into()],
            include_history: false,
            fencing_token: 0,
            ..Default::default()
        })
        .await?;
    let ts = resp
        .targets
        .into_iter()
        .next()
        .context("no target status")?;
    ensure!(ts.error.is_empty(), "status of {target}: {}", ts.error);
    Ok(TargetHistory {
        applied: ts
            .applied
            .into_iter()
            .map(|a| AppliedRevision {
                revision: a.revision,
                checksum: a.checksum,
            })
            .collect(),
        dirty: (!ts.dirty_revision.is_empty()).then_some(ts.dirty_revision),
    })
}

async fn run_plan(
    agent: &Agent,
    g: &Graph,
    target: &str,
    plan: &Plan,
    d: Dialect,
    token: u64,
) -> Result<()> {
    let steps = plan
        .steps
        .iter()
        .map(|s| Step {
            revision: s.revision.clone(),
            direction: s.direction.to_proto() as i32,
            sql: s.sql.clone(),
            checksum: s.checksum.clone(),
            transactional: s.transactional,
            up_checksum: g
                .get(&s.revision)
                .map(|r| r.up_checksum(d))
                .unwrap_or_default(),
            backup_tables: vec![],
            ..Default::default()
        })
        .collect();
    let mut stream = agent
        .migrate(MigrateRequest {
            target_id: target.into(),
            rollout_id: format!("revision-apply-{token}"),
            fencing_token: token,
            steps,
            lock_wait_ms: 5_000,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("migrate refused: {s:?}"))?;
    let mut succeeded = 0;
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(|s| anyhow::anyhow!("migrate of {target} failed: {s:?}"))?;
        match ev.event {
            Some(Event::Succeeded(_)) => succeeded += 1,
            Some(Event::Failed(f)) => bail!("step {} failed on {d}: {f:?}", ev.revision),
            _ => {}
        }
    }
    ensure!(
        succeeded == plan.steps.len(),
        "{succeeded} of {} steps succeeded",
        plan.steps.len()
    );
    Ok(())
}

async fn fingerprint(agent: &Agent, target: &str) -> Result<String> {
    let resp = agent
        .validate(ValidateRequest {
            project: Default::default(),
            target_ids: vec![target.into()],
            expected: vec![],
            skip_fingerprint: false,
            include_catalog: false,
        })
        .await?;
    let tv = resp
        .targets
        .into_iter()
        .next()
        .context("no validate result")?;
    ensure!(tv.error.is_empty(), "validate {target}: {}", tv.error);
    Ok(tv.fingerprint)
}

/// Pipes a rendered script into the dialect's command-line client.
fn pipe(d: Dialect, url: &str, script: &str) -> Result<()> {
    let mut cmd = match d {
        Dialect::Postgres => {
            let mut c = Command::new("psql");
            c.args(["-q", "-X", "-v", "ON_ERROR_STOP=1", url, "-f", "-"]);
            c
        }
        Dialect::Mysql => {
            // mysql://root@127.0.0.1:PORT/DB
            let rest = url.strip_prefix("mysql://root@").context("mysql url")?;
            let (host_port, db) = rest.split_once('/').context("mysql db")?;
            let (host, port) = host_port.split_once(':').context("mysql port")?;
            let mut c = Command::new("mariadb");
            c.args(["-u", "root", "-h", host, "-P", port, db]);
            c
        }
        Dialect::Sqlite => {
            let path = url.strip_prefix("sqlite://").context("sqlite url")?;
            let path = path.split('?').next().unwrap_or(path);
            let mut c = Command::new("sqlite3");
            c.args(["-bail", path]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run the {d} client: install postgresql-client, mariadb-client and sqlite3"
            )
        })?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{d} client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Up to head and down to [`DOWN_TO`] through the agent on `agent_url`, and through rendered
/// scripts on `script_url`; the fingerprints must agree at both points.
async fn up_and_down(d: Dialect, agent_url: &str, script_url: &str) -> Result<()> {
    let g = example_graph()?;
    let agent = agent(d, &[("via-agent", agent_url), ("via-script", script_url)]).await?;

    let up = plan(&g, &history(&agent, "via-agent").await?, &Goal::Head, d)?;
    ensure!(
        up.steps.len() == g.len(),
        "a fresh target gets every revision"
    );
    run_plan(&agent, &g, "via-agent", &up, d, 1).await?;
    let at_head = history(&agent, "via-agent").await?;
    ensure!(
        plan(&g, &at_head, &Goal::Head, d)?.is_empty(),
        "nothing left at head"
    );

    let script = render(
        &g,
        &RenderRequest {
            dialect: d,
            to: Goal::Head,
            from: None,
            down: false,
        },
    )?;
    pipe(d, script_url, &script)?;
    let head_fp = fingerprint(&agent, "via-agent").await?;
    ensure!(
        head_fp == fingerprint(&agent, "via-script").await?,
        "{d}: agent and rendered script disagree at head"
    );

    let down = plan(&g, &at_head, &Goal::Revision(DOWN_TO.into()), d)?;
    ensure!(
        down.steps.len() == g.len() - 4,
        "{d}: down steps {:?}",
        down.steps.len()
    );
    run_plan(&agent, &g, "via-agent", &down, d, 2).await?;
    let script = render(
        &g,
        &RenderRequest {
            dialect: d,
            to: Goal::Head,
            from: Some(DOWN_TO.into()),
            down: true,
        },
    )?;
    pipe(d, script_url, &script)?;
    let down_fp = fingerprint(&agent, "via-agent").await?;
    ensure!(down_fp != head_fp, "{d}: the downgrade changed nothing");
    ensure!(
        down_fp == fingerprint(&agent, "via-script").await?,
        "{d}: agent and rendered script disagree after the downgrade"
    );
    let back = history(&agent, "via-agent").await?;
    let ids: Vec<&str> = back.applied.iter().map(|a| a.revision.as_str()).collect();
    ensure!(
        ids.len() == 4 && ids.last() == Some(&DOWN_TO),
        "{d}: applied after downgrade {ids:?}"
    );
    // Down past the irreversible revision is refused before anything runs.
    ensure!(
        plan(&g, &back, &Goal::Base, d).is_err(),
        "base must be blocked"
    );

    // And back up again from the downgraded state.
    let again = plan(&g, &back, &Goal::Head, d)?;
    run_plan(&agent, &g, "via-agent", &again, d, 3).await?;
    ensure!(
        fingerprint(&agent, "via-agent").await? == head_fp,
        "{d}: re-upgrade differs"
    );
    Ok(())
}

#[tokio::test]
async fn example_set_on_postgres() -> Result<()> {
    let pg = flotilla_testkit::Postgres::start().await?;
    up_and_down(
        Dialect::Postgres,
        &pg.fresh_database().await?,
        &pg.fresh_database().await?,
    )
    .await
}

#[tokio::test]
async fn example_set_on_mariadb() -> Result<()> {
    let my = flotilla_testkit::MariaDb::start().await?;
    up_and_down(
        Dialect::Mysql,
        &my.fresh_database().await?,
        &my.fresh_database().await?,
    )
    .await
}

#[tokio::test]
async fn example_set_on_sqlite() -> Result<()> {
    let (_a, a) = flotilla_testkit::sqlite_database()?;
    let (_b, b) = flotilla_testkit::sqlite_database()?;
    up_and_down(Dialect::Sqlite, &a, &b).await
}
