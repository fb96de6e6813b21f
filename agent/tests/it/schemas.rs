//! PostgreSQL schemas as targets (`schema_pattern`): discovery and ids, `search_path`
//! isolation, drift of one schema, the catalogs of many schemas read in one statement as
//! each schema's own session reads them, the per-database pool's bound under 1,000 schemas,
//! and a failed step in one schema leaving its neighbours alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_agent::Agent;
use flotilla_agent::config::{DiscoveryConfig, DiscoverySource};
use flotilla_agent::driver::Session;
use flotilla_agent::driver::postgres::{PostgresDriver, read_schema_catalogs};
use flotilla_core::Secret;
use flotilla_core::catalog::Catalog;
use flotilla_proto::{StatusRequest, ValidateRequest};
use flotilla_testkit::Postgres;
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::support::{config, fingerprint, migrate, run, status, up};

/// A server with database `fleet` and its schemas `names`.
async fn fleet(names: &[&str]) -> Result<(Postgres, String)> {
    let pg = Postgres::start().await?;
    let url = pg.create_database("fleet").await?;
    let mut conn = PgConnection::connect(&url).await?;
    for n in names {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{n}\"")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok((pg, url))
}

async fn schema_agent(url: &str, pool_size: usize) -> Result<Agent> {
    let mut cfg = config(vec![]);
    cfg.discovery = DiscoveryConfig {
        sources: vec![DiscoverySource::PostgresSchemas {
            url: Secret::new(url),
            pattern: None,
            schema_pattern: "tenant\\_%".into(),
            id_prefix: "pg-".into(),
            labels: Default::default(),
            search_path_public: false,
            pool_size,
        }],
        refresh_interval: Duration::ZERO,
    };
    Ok(Agent::new(cfg).await?)
}

async fn exists(conn: &mut PgConnection, schema: &str, table: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(conn)
    .await?)
}

#[tokio::test]
async fn schemas_are_discovered_with_documented_ids_and_rescanned() -> Result<()> {
    let (pg, url) = fleet(&["tenant_a", "tenant_b", "billing"]).await?;
    let agent = schema_agent(&url, 2).await?;
    assert_eq!(
        agent.target_ids().await,
        ["pg-fleet.tenant_a", "pg-fleet.tenant_b"]
    );
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql("CREATE SCHEMA tenant_c")
        .execute(&mut conn)
        .await?;
    let resp = agent.status(StatusRequest::default()).await?;
    let ids: Vec<&str> = resp.targets.iter().map(|t| t.target_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "pg-fleet.tenant_a",
            "pg-fleet.tenant_b",
            "pg-fleet.tenant_c"
        ]
    );
    for t in &resp.targets {
        ensure!(t.error.is_empty(), "{}: {}", t.target_id, t.error);
        assert_eq!(t.host, format!("127.0.0.1:{}", pg.port()));
        assert!(t.applied.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn unqualified_names_land_in_the_tenant_schema_and_history_stays_apart() -> Result<()> {
    let (_pg, url) = fleet(&["tenant_a", "tenant_b"]).await?;
    let agent = schema_agent(&url, 1).await?;
    let step = up("0001", "CREATE TABLE widgets (id int)");
    let out = run(
        &agent,
        migrate("pg-fleet.tenant_a", "r1", 1, vec![step.clone()]),
    )
    .await?;
    ensure!(out.error.is_none(), "{:?}", out.error);
    let mut conn = PgConnection::connect(&url).await?;
    assert!(exists(&mut conn, "tenant_a", "widgets").await?);
    assert!(exists(&mut conn, "tenant_a", "flotilla_history").await?);
    assert!(!exists(&mut conn, "public", "widgets").await?);
    assert!(!exists(&mut conn, "public", "flotilla_history").await?);
    // tenant_b sees none of tenant_a's history, and its own unqualified names are its own:
    // the same CREATE TABLE succeeds there, and `flotilla_history` is tenant_b's (empty
    // before this step's row).
    assert!(
        status(&agent, "pg-fleet.tenant_b", true)
            .await?
            .history
            .is_empty()
    );
    let steps = vec![
        step,
        up(
            "0002",
            "CREATE TABLE seen AS SELECT count(*) AS n FROM flotilla_history",
        ),
    ];
    let out = run(&agent, migrate("pg-fleet.tenant_b", "r1", 1, steps)).await?;
    ensure!(out.error.is_none(), "{:?}", out.error);
    let seen: i64 = sqlx::query_scalar("SELECT n FROM tenant_b.seen")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(seen, 0, "tenant_b's step saw another schema's history");
    assert!(exists(&mut conn, "tenant_b", "widgets").await?);
    let a = status(&agent, "pg-fleet.tenant_a", false).await?;
    let b = status(&agent, "pg-fleet.tenant_b", false).await?;
    assert_eq!(a.applied.len(), 1);
    assert_eq!(b.applied.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_schema_altered_by_hand_drifts_alone() -> Result<()> {
    let names = ["tenant_a", "tenant_b", "tenant_c"];
    let (_pg, url) = fleet(&names).await?;
    let agent = schema_agent(&url, 2).await?;
    for n in names {
        let step = up(
            "0001",
            "CREATE TABLE widgets (id int PRIMARY KEY, name text)",
        );
        let out = run(
            &agent,
            migrate(&format!("pg-fleet.{n}"), "r1", 1, vec![step]),
        )
        .await?;
        ensure!(out.error.is_none(), "{n}: {:?}", out.error);
    }
    let before = fingerprint(&agent, "pg-fleet.tenant_a").await?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql("ALTER TABLE tenant_b.widgets ADD COLUMN note text")
        .execute(&mut conn)
        .await?;
    assert_eq!(fingerprint(&agent, "pg-fleet.tenant_a").await?, before);
    assert_eq!(fingerprint(&agent, "pg-fleet.tenant_c").await?, before);
    assert_ne!(fingerprint(&agent, "pg-fleet.tenant_b").await?, before);
    Ok(())
}

/// A planning read (`without_fence`) reports each schema's applied set as a full read does and
/// leaves the fence unread (token 0); a full read reports the token each schema committed.
#[tokio::test]
async fn a_planning_read_leaves_the_fence_unread_and_the_history_whole() -> Result<()> {
    let names = ["tenant_a", "tenant_b", "tenant_c"];
    let (_pg, url) = fleet(&names).await?;
    let agent = schema_agent(&url, 2).await?;
    // tenant_c is never migrated: it reads as one at base either way.
    for (token, n) in [(3, "tenant_a"), (5, "tenant_b")] {
        let step = up("0001", "CREATE TABLE widgets (id int PRIMARY KEY)");
        let out = run(
            &agent,
            migrate(&format!("pg-fleet.{n}"), "r1", token, vec![step]),
        )
        .await?;
        ensure!(out.error.is_none(), "{n}: {:?}", out.error);
    }
    let read = |without_fence| {
        agent.status(StatusRequest {
            without_fence,
            ..Default::default()
        })
    };
    let full = read(false).await?.targets;
    let planning = read(true).await?.targets;
    let tokens = |ts: &[flotilla_proto::TargetStatus]| -> Vec<(String, u64)> {
        ts.iter()
            .map(|t| (t.target_id.clone(), t.fence_token))
            .collect()
    };
    assert_eq!(
        tokens(&full),
        [
            ("pg-fleet.tenant_a".to_owned(), 3),
            ("pg-fleet.tenant_b".to_owned(), 5),
            ("pg-fleet.tenant_c".to_owned(), 0)
        ]
    );
    assert!(planning.iter().all(|t| t.fence_token == 0), "{planning:?}");
    assert_eq!(full.len(), planning.len());
    for (f, p) in full.iter().zip(&planning) {
        assert!(f.error.is_empty() && p.error.is_empty(), "{f:?} {p:?}");
        assert_eq!(
            (&f.target_id, &f.applied, &f.heads),
            (&p.target_id, &p.applied, &p.heads)
        );
    }
    assert_eq!(full[0].applied.len(), 1);
    assert!(full[2].applied.is_empty());
    Ok(())
}

/// One Status reads which schemas have Flotilla's tables and other tools' version tables: a
/// migrated schema (also one whose name needs quoting) reports its history, a schema another
/// tool manages reports that tool's table and no history, an empty one reads as at base.
#[tokio::test]
async fn a_status_read_tells_migrated_foreign_and_empty_schemas_apart() -> Result<()> {
    let names = ["tenant_a", "tenant_b", "tenant_c", "tenant_D"];
    let (_pg, url) = fleet(&names).await?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE TABLE tenant_b.schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
         INSERT INTO tenant_b.schema_migrations VALUES (3, false)",
    )
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    let agent = schema_agent(&url, 2).await?;
    for n in ["tenant_a", "tenant_D"] {
        let step = up("0001", "CREATE TABLE widgets (id int PRIMARY KEY)");
        let out = run(
            &agent,
            migrate(&format!("pg-fleet.{n}"), "r1", 1, vec![step]),
        )
        .await?;
        ensure!(out.error.is_none(), "{n}: {:?}", out.error);
    }
    for without_fence in [false, true] {
        let resp = agent
            .status(StatusRequest {
                without_fence,
                ..Default::default()
            })
            .await?;
        let mut seen: Vec<(String, usize, Vec<String>)> = resp
            .targets
            .iter()
            .map(|t| {
                assert!(t.error.is_empty(), "{t:?}");
                let foreign = t.foreign.iter().map(|f| f.table.clone()).collect();
                (t.target_id.clone(), t.applied.len(), foreign)
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("pg-fleet.tenant_D".to_owned(), 1, vec![]),
                ("pg-fleet.tenant_a".to_owned(), 1, vec![]),
                (
                    "pg-fleet.tenant_b".to_owned(),
                    0,
                    vec!["schema_migrations".to_owned()]
                ),
                ("pg-fleet.tenant_c".to_owned(), 0, vec![]),
            ]
        );
    }
    Ok(())
}

/// Objects whose catalog text depends on `search_path`: a type, a sequence and a function of
/// the schema (printed unqualified only when the schema is on the path) and a type of
/// `public` (unqualified only when `public` is on it).
const TENANT_DDL: &str = "\
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE FUNCTION norm(t text) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT lower(t) $$;
    CREATE TABLE owners (id serial PRIMARY KEY, name text NOT NULL);
    CREATE TABLE widgets (
        id serial PRIMARY KEY,
        owner_id int REFERENCES owners (id) ON DELETE CASCADE,
        name text NOT NULL DEFAULT norm('X'),
        m mood NOT NULL DEFAULT 'calm',
        shade public.shade,
        CHECK (m <> 'busy'::mood OR name <> '')
    );
    CREATE UNIQUE INDEX widgets_norm ON widgets (norm(name)) WHERE m = 'calm'";

/// 55 tenant schemas (more than one chunk of a batched read) holding [`TENANT_DDL`].
async fn tenants_with_catalogs() -> Result<(Postgres, String, Vec<String>)> {
    let names: Vec<String> = (1..=55).map(|i| format!("tenant_{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (pg, url) = fleet(&refs).await?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql("CREATE TYPE public.shade AS ENUM ('light', 'dark')")
        .execute(&mut conn)
        .await?;
    for n in &names {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET search_path TO {n}; {TENANT_DDL}"
        )))
        .execute(&mut conn)
        .await?;
    }
    sqlx::raw_sql("RESET search_path")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok((pg, url, names))
}

/// The catalog of `schema` read the ordinary way: a connection of its own whose
/// `search_path` is the schema (then `public`), as a schema listed by hand is read.
async fn own_session_catalog(url: &str, schema: &str, public: bool) -> Result<Catalog> {
    let path = if public {
        format!("{schema}%2Cpublic")
    } else {
        schema.to_owned()
    };
    let driver = PostgresDriver::new(Secret::new(format!(
        "{url}?options=-c%20search_path%3D{path}"
    )))?;
    let mut session = Box::new(driver.open().await?);
    let catalog = session.catalog().await;
    session.close().await;
    Ok(catalog?)
}

#[tokio::test]
async fn a_batched_catalog_read_matches_each_schemas_own_session() -> Result<()> {
    let (_pg, url, names) = tenants_with_catalogs().await?;
    let pool = PostgresDriver::new(Secret::new(&url))?.schema_pool("fleet", 2);
    for public in [false, true] {
        let read = read_schema_catalogs(&pool, &names, public).await?;
        assert_eq!(
            read.one_by_one, 0,
            "public = {public}: not all read in the batch"
        );
        assert_eq!(read.catalogs.len(), names.len());
        for (n, batched) in names.iter().zip(read.catalogs) {
            let batched = batched?;
            assert_eq!(
                batched,
                own_session_catalog(&url, n, public).await?,
                "{n}, public = {public}"
            );
            assert_eq!(batched.tables.len(), 2, "{n}");
        }
    }
    // The path mattered: `public.shade` is printed qualified only without `public`.
    let shade = |c: &Catalog| {
        c.tables
            .iter()
            .flat_map(|t| &t.columns)
            .find(|col| col.name == "shade")
            .map(|col| col.data_type.clone())
    };
    let one = &names[..1];
    let without = read_schema_catalogs(&pool, one, false)
        .await?
        .catalogs
        .remove(0)?;
    let with = read_schema_catalogs(&pool, one, true)
        .await?
        .catalogs
        .remove(0)?;
    assert_eq!(shade(&without).as_deref(), Some("public.shade"));
    assert_eq!(shade(&with).as_deref(), Some("shade"));
    Ok(())
}

#[tokio::test]
async fn validate_of_every_schema_reports_exactly_the_drifted_ones() -> Result<()> {
    let (_pg, url, names) = tenants_with_catalogs().await?;
    let agent = schema_agent(&url, 2).await?;
    let validate = || async {
        let resp = agent
            .validate(ValidateRequest {
                project: Default::default(),
                target_ids: vec![],
                expected: vec![],
                skip_fingerprint: false,
                include_catalog: false,
            })
            .await?;
        let mut out = Vec::new();
        for tv in resp.targets {
            ensure!(tv.error.is_empty(), "{}: {}", tv.target_id, tv.error);
            out.push((tv.target_id, tv.fingerprint));
        }
        anyhow::Ok(out)
    };
    let before = validate().await?;
    assert_eq!(before.len(), names.len());
    let reference = own_session_catalog(&url, &names[0], false)
        .await?
        .fingerprint();
    for (id, fp) in &before {
        assert_eq!(fp, &reference, "{id} differs before anything changed");
    }
    // One change in each chunk of 50: a default, then an index.
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(
        "ALTER TABLE tenant_0007.widgets ALTER COLUMN m SET DEFAULT 'busy'; \
         DROP INDEX tenant_0052.widgets_norm",
    )
    .execute(&mut conn)
    .await?;
    let drifted: Vec<String> = validate()
        .await?
        .into_iter()
        .filter(|(_, fp)| fp != &reference)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(drifted, ["pg-fleet.tenant_0007", "pg-fleet.tenant_0052"]);
    Ok(())
}

#[tokio::test]
async fn the_pool_stays_within_its_bound_across_1000_schemas() -> Result<()> {
    within_bound(3).await
}

/// Two connections, both due to be recycled at about the same time: only one may close while
/// the other checks that its backend has gone; the pool never waits on itself.
#[tokio::test]
async fn a_pool_of_two_recycles_without_passing_its_bound_or_stalling() -> Result<()> {
    within_bound(2).await
}

/// 1,000 schemas migrated and read, many requests at once, through a pool of `BOUND`
/// connections: the server never sees more than `BOUND` of the agent's backends, and the
/// connections are recycled within that bound.
async fn within_bound(bound: usize) -> Result<()> {
    const SCHEMAS: usize = 1000;

    let (pg, url) = fleet(&[]).await?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(
        "DO $$ BEGIN FOR i IN 1..1000 LOOP \
         EXECUTE format('CREATE SCHEMA tenant_%s', lpad(i::text, 4, '0')); END LOOP; END $$",
    )
    .execute(&mut conn)
    .await?;
    let agent = Arc::new(schema_agent(&url, bound).await?);
    let ids = agent.target_ids().await;
    assert_eq!(ids.len(), SCHEMAS);
    // Count the agent's server connections (its pooled sessions carry the application name
    // `flotilla-agent`; parallel query workers inherit it, but are no connections) while it
    // migrates and reads every schema, many requests at once.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (done, most) = (done.clone(), most.clone());
        let mut watch = PgConnection::connect(&url).await?;
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND backend_type = 'client backend'",
                )
                .bind(flotilla_agent::driver::postgres::POOL_APPLICATION_NAME)
                .fetch_one(&mut watch)
                .await?;
                most.fetch_max(n, Ordering::AcqRel);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        })
    };
    let step = up("0001", "CREATE TABLE widgets (id int)");
    let results: Vec<Result<()>> = futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let (agent, step) = (agent.clone(), step.clone());
            async move {
                let out = run(&agent, migrate(id, "r1", 1, vec![step])).await?;
                ensure!(out.error.is_none(), "{id}: {:?}", out.error);
                if i % 100 == 0 {
                    // Status of every schema while migrations run.
                    let resp = agent.status(StatusRequest::default()).await?;
                    ensure!(resp.targets.len() == SCHEMAS);
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let resp = agent.status(StatusRequest::default()).await?;
    done.store(true, Ordering::Release);
    sampler.await.context("sampler")??;
    for t in &resp.targets {
        ensure!(t.error.is_empty(), "{}: {}", t.target_id, t.error);
        ensure!(t.applied.len() == 1, "{} has {:?}", t.target_id, t.applied);
    }
    let pools = agent.schema_pools();
    assert_eq!(pools.len(), 1);
    let stats = pools[0].1;
    assert!(stats.peak <= bound, "{stats:?}");
    assert!(stats.peak >= 1 && stats.open <= bound, "{stats:?}");
    let seen = most.load(Ordering::Acquire);
    assert!(
        seen >= 1 && seen <= bound as i64,
        "the agent held {seen} connections (bound {bound}): {stats:?}"
    );
    eprintln!("bound {bound}: at most {seen} server connections seen, {stats:?}");
    // 1,000 migrations and 11 reads of every schema over at most `bound` connections: each
    // served its share of sessions and was replaced, the replacements within the same bound.
    let recycle = flotilla_agent::driver::postgres::RECYCLE_AFTER_USES as usize;
    assert!(
        stats.recycled >= SCHEMAS / recycle - bound,
        "connections were not recycled after {recycle} sessions: {stats:?}"
    );
    drop(pg);
    Ok(())
}

#[tokio::test]
async fn a_failed_step_in_one_schema_leaves_its_neighbours_alone() -> Result<()> {
    let names = ["tenant_a", "tenant_b", "tenant_c", "tenant_d", "tenant_e"];
    let (_pg, url) = fleet(&names).await?;
    let mut conn = PgConnection::connect(&url).await?;
    // tenant_c already has a table the step creates: its step fails there.
    sqlx::raw_sql("CREATE TABLE tenant_c.widgets (id int)")
        .execute(&mut conn)
        .await?;
    // One pooled connection: every tenant's session is the same server session, so the
    // tenants after tenant_c run on the connection its failed transaction used.
    let agent = schema_agent(&url, 1).await?;
    let step = up(
        "0001",
        "CREATE TABLE gadgets (id int); CREATE TABLE widgets (id int)",
    );
    for n in names {
        let out = run(
            &agent,
            migrate(&format!("pg-fleet.{n}"), "r1", 1, vec![step.clone()]),
        )
        .await?;
        if n == "tenant_c" {
            let failed = out.failed().context("tenant_c's step did not fail")?;
            assert!(failed.message.contains("widgets"), "{}", failed.message);
        } else {
            ensure!(out.error.is_none(), "{n}: {:?}", out.error);
        }
    }
    for n in names {
        let ts = status(&agent, &format!("pg-fleet.{n}"), false).await?;
        let applied = n != "tenant_c";
        assert_eq!(ts.applied.len(), usize::from(applied), "{n}");
        // The failed step's transaction rolled back whole: no gadgets in tenant_c.
        assert_eq!(exists(&mut conn, n, "gadgets").await?, applied, "{n}");
    }
    Ok(())
}
