//! Targets discovered by pattern: PostgreSQL databases named `tenant_%` and SQLite files
//! matching a glob; a later Status picks up new ones.

use std::time::Duration;

use anyhow::Result;
use flotilla_agent::Agent;
use flotilla_agent::config::{DiscoveryConfig, DiscoverySource};
use flotilla_core::{Dialect, Secret};
use flotilla_proto::StatusRequest;
use flotilla_testkit::Postgres;

use crate::support::config;

async fn status_ids(agent: &Agent) -> Result<Vec<String>> {
    let resp = agent.status(StatusRequest::default()).await?;
    for t in &resp.targets {
        anyhow::ensure!(t.error.is_empty(), "{}: {}", t.target_id, t.error);
    }
    Ok(resp.targets.into_iter().map(|t| t.target_id).collect())
}

#[tokio::test]
async fn postgres_tenant_databases_are_discovered_and_refreshed() -> Result<()> {
    let pg = Postgres::start().await?;
    for db in ["tenant_a", "tenant_b", "billing"] {
        pg.create_database(db).await?;
    }
    let mut cfg = config(vec![]);
    cfg.discovery = DiscoveryConfig {
        sources: vec![DiscoverySource::Server {
            dialect: Dialect::Postgres,
            url: Secret::new(pg.server_url()),
            pattern: "tenant_%".into(),
            id_prefix: "pg-".into(),
            labels: [("tier".to_owned(), "tenant".to_owned())].into(),
        }],
        refresh_interval: Duration::ZERO,
    };
    let agent = Agent::new(cfg).await?;
    assert_eq!(agent.target_ids().await, ["pg-tenant_a", "pg-tenant_b"]);

    pg.create_database("tenant_c").await?;
    assert_eq!(
        status_ids(&agent).await?,
        ["pg-tenant_a", "pg-tenant_b", "pg-tenant_c"]
    );
    let resp = agent.status(StatusRequest::default()).await?;
    assert_eq!(
        resp.targets[0].labels.get("tier").map(String::as_str),
        Some("tenant")
    );
    assert_eq!(resp.targets[0].host, format!("127.0.0.1:{}", pg.port()));
    Ok(())
}

#[tokio::test]
async fn sqlite_files_are_discovered_by_glob() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for f in ["tenant_1.db", "tenant_2.db", "notes.txt"] {
        std::fs::write(dir.path().join(f), b"")?;
    }
    let mut cfg = config(vec![]);
    cfg.discovery = DiscoveryConfig {
        sources: vec![DiscoverySource::SqliteGlob {
            glob: format!("{}/*.db", dir.path().display()),
            id_prefix: String::new(),
            labels: Default::default(),
        }],
        refresh_interval: Duration::from_secs(3600),
    };
    let agent = Agent::new(cfg).await?;
    assert_eq!(status_ids(&agent).await?, ["tenant_1", "tenant_2"]);
    // Not rescanned within the refresh interval.
    std::fs::write(dir.path().join("tenant_3.db"), b"")?;
    assert_eq!(status_ids(&agent).await?, ["tenant_1", "tenant_2"]);
    Ok(())
}
