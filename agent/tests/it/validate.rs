//! Issue test 8: Validate reports edited and unknown applied revisions, and fingerprints
//! schemas independently of the order they were built in.

use anyhow::{Context, Result, ensure};
use flotilla_core::{Dialect, checksum};
use flotilla_proto::{ExpectedRevision, IssueKind, ValidateRequest};

use crate::support::{Backend, agent, migrate, run, up};

const USERS: &str = "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL);";
const ORDERS: &str = "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL);";
const ORDERS_WIDER: &str =
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, note VARCHAR(20));";

async fn validate_reports(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let mut targets = Vec::new();
    for id in ["edited", "forward", "backward", "different"] {
        targets.push(backend.fresh_target(id).await?);
    }
    let agent = agent(targets).await?;
    let apply = |target: &'static str, steps: Vec<flotilla_proto::Step>| {
        let agent = agent.clone();
        async move {
            let out = run(&agent, migrate(target, "r1", 1, steps)).await?;
            ensure!(out.error.is_none(), "{target}: {:?}", out.error);
            anyhow::Ok(())
        }
    };
    apply(
        "edited",
        vec![up("0001_users", USERS), up("0002_orders", ORDERS)],
    )
    .await?;
    apply(
        "forward",
        vec![up("0001_users", USERS), up("0002_orders", ORDERS)],
    )
    .await?;
    apply(
        "backward",
        vec![up("0001_orders", ORDERS), up("0002_users", USERS)],
    )
    .await?;
    apply(
        "different",
        vec![up("0001_users", USERS), up("0002_orders", ORDERS_WIDER)],
    )
    .await?;

    // The migration set as the coordinator now sees it: 0001_users was edited, 0002_orders
    // is gone.
    let edited_sql = format!("{USERS}\n-- edited after it was applied");
    let resp = agent
        .validate(ValidateRequest {
            project: Default::default(),
            target_ids: vec![],
            expected: vec![ExpectedRevision {
                revision: "0001_users".into(),
                checksum: checksum(&edited_sql),
            }],
            skip_fingerprint: false,
            include_catalog: false,
        })
        .await?;
    assert_eq!(resp.agent_id, "agent-test");
    let by_id = |id: &str| {
        resp.targets
            .iter()
            .find(|t| t.target_id == id)
            .with_context(|| format!("no {id} in {resp:?}"))
    };
    let edited = by_id("edited")?;
    ensure!(edited.error.is_empty(), "{}", edited.error);
    assert_eq!(edited.applied, ["0001_users", "0002_orders"]);
    let issues: Vec<_> = edited
        .issues
        .iter()
        .map(|i| (i.revision.as_str(), i.kind))
        .collect();
    assert_eq!(
        issues,
        [
            ("0001_users", IssueKind::ChecksumMismatch as i32),
            ("0002_orders", IssueKind::UnknownRevision as i32)
        ]
    );
    assert_eq!(edited.issues[0].applied_checksum, checksum(USERS));
    assert_eq!(edited.issues[0].expected_checksum, checksum(&edited_sql));

    let (f, b, d) = (by_id("forward")?, by_id("backward")?, by_id("different")?);
    assert_eq!(f.fingerprint.len(), 64, "{f:?}");
    assert_eq!(
        f.fingerprint, b.fingerprint,
        "same schema, different order: fingerprints differ"
    );
    assert_eq!(f.fingerprint, edited.fingerprint);
    assert_ne!(
        f.fingerprint, d.fingerprint,
        "an extra column did not change the fingerprint"
    );

    // With the right expectations, a clean target has no issues.
    let resp = agent
        .validate(ValidateRequest {
            project: Default::default(),
            target_ids: vec!["forward".into()],
            expected: vec![
                ExpectedRevision {
                    revision: "0001_users".into(),
                    checksum: checksum(USERS),
                },
                ExpectedRevision {
                    revision: "0002_orders".into(),
                    checksum: checksum(ORDERS),
                },
            ],
            skip_fingerprint: true,
            include_catalog: false,
        })
        .await?;
    let t = resp.targets.first().context("no target")?;
    assert!(t.issues.is_empty() && t.error.is_empty(), "{t:?}");
    assert!(t.fingerprint.is_empty());
    Ok(())
}

#[tokio::test]
async fn sqlite_validate_reports_issues_and_fingerprints() -> Result<()> {
    validate_reports(Dialect::Sqlite).await
}

#[tokio::test]
async fn postgres_validate_reports_issues_and_fingerprints() -> Result<()> {
    validate_reports(Dialect::Postgres).await
}

#[tokio::test]
async fn mariadb_validate_reports_issues_and_fingerprints() -> Result<()> {
    validate_reports(Dialect::Mysql).await
}

/// Validate has its own bound (`status.validate_timeout`): while another connection holds
/// the target's SQLite file locked, a Status read gives up at the Status bound, and a Validate
/// started before it keeps waiting and answers once the lock is gone; a Validate bound shorter
/// than the lock reports the target unread.
#[tokio::test]
async fn validate_keeps_its_own_bound() -> Result<()> {
    use sqlx::Connection;
    let backend = Backend::start(Dialect::Sqlite).await?;
    let target = backend.fresh_target("t").await?;
    let read_all = ValidateRequest::default;
    let mut locker = sqlx::SqliteConnection::connect_with(
        &target
            .url
            .expose()
            .parse::<sqlx::sqlite::SqliteConnectOptions>()?
            .create_if_missing(true),
    )
    .await?;
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await?;

    let mut cfg = crate::support::config(vec![target.clone()]);
    cfg.status.timeout = std::time::Duration::from_millis(50);
    let agent = flotilla_agent::Agent::new(cfg).await?;
    let validate = agent.validate(read_all());
    tokio::pin!(validate);
    let status = tokio::select! {
        biased;
        v = &mut validate => anyhow::bail!("validate answered while the file was locked: {v:?}"),
        s = agent.status(Default::default()) => s?,
    };
    let s = status.targets.first().context("no target")?;
    assert!(s.error.contains("no answer within 50ms"), "{s:?}");
    // The Validate started before that Status has waited longer than the Status bound.
    sqlx::raw_sql("COMMIT").execute(&mut locker).await?;
    let resp = validate.await?;
    let t = resp.targets.first().context("no target")?;
    assert!(t.error.is_empty() && !t.fingerprint.is_empty(), "{t:?}");

    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await?;
    let mut cfg = crate::support::config(vec![target]);
    cfg.status.validate_timeout = std::time::Duration::from_millis(50);
    let agent = flotilla_agent::Agent::new(cfg).await?;
    let resp = agent.validate(read_all()).await?;
    let t = resp.targets.first().context("no target")?;
    assert!(t.error.contains("no answer within"), "{t:?}");
    assert!(t.fingerprint.is_empty());
    sqlx::raw_sql("COMMIT").execute(&mut locker).await?;
    Ok(())
}
