//! Hostile and edge-case requests (issue 13) against a real agent over gRPC, on PostgreSQL,
//! MariaDB and SQLite: tokens and ids beyond what the history and fence columns hold are
//! refused before anything runs, a request that fails never raises the agent's fence, a
//! bogus announcement lapses, and reflection lists only what the agent serves.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_agent::Agent;
use flotilla_agent::service::validate::{MAX_FENCING_TOKEN, MAX_ROLLOUT_ID_LEN};
use flotilla_core::{Dialect, checksum};
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_proto::{
    Direction, ExpectedRevision, RepairRequest, StampRequest, StatusRequest, StatusResponse,
};
use flotilla_testkit::eventually;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Backend, Outcome, Server, config, migrate, reason, run_grpc, up};

type Client = AgentServiceClient<Channel>;

/// Every target's history and fence token, as Status reports them.
async fn snapshot(client: &mut Client) -> Result<StatusResponse> {
    let mut resp = client
        .status(StatusRequest {
            target_ids: vec![],
            include_history: true,
            fencing_token: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The agent's memory (announcements included), not the targets' state: the hostile
    // requests below are checked against `fence_floor` separately where it matters.
    resp.fence_floor = 0;
    for t in &mut resp.targets {
        ensure!(t.error.is_empty(), "status of {}: {}", t.target_id, t.error);
        // Wall-clock and timing fields are not state.
        for r in t.history.iter_mut().chain(t.applied.iter_mut()) {
            r.applied_at_unix_ms = 0;
            r.duration_ms = 0;
        }
        if let Some(r) = t.last_step.as_mut() {
            r.applied_at_unix_ms = 0;
            r.duration_ms = 0;
        }
    }
    Ok(resp)
}

fn invalid_argument(what: &str, out: &Outcome, field: &str) -> Result<()> {
    let err = out.err().context(what.to_owned())?;
    ensure!(
        err.code() == Code::InvalidArgument && err.message().contains(field),
        "{what}: expected INVALID_ARGUMENT naming {field}, got {err:?}"
    );
    ensure!(out.events.is_empty(), "{what}: events {:?}", out.kinds());
    Ok(())
}

fn succeeded(what: &str, out: &Outcome) -> Result<()> {
    ensure!(
        out.error.is_none() && out.kinds().iter().any(|k| k.ends_with(":succeeded")),
        "{what}: expected success, got {:?} {:?}",
        out.kinds(),
        out.error
    );
    Ok(())
}

/// Issue 13, shows 1 and 2 on one dialect.
async fn storage_limits(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let agent = std::sync::Arc::new(
        Agent::new(config(vec![
            backend.fresh_target("t1").await?,
            backend.fresh_target("t2").await?,
        ]))
        .await?,
    );
    let server = Server::start(agent.clone()).await?;
    let mut c = server.client().await?;
    let before = snapshot(&mut c).await?;

    // u64::MAX (and anything above i64::MAX) is refused up front by every RPC that takes it.
    for token in [u64::MAX, MAX_FENCING_TOKEN + 1] {
        let req = migrate(
            "t1",
            "r1",
            token,
            vec![up("0001_a", "CREATE TABLE a (id INT);")],
        );
        invalid_argument("migrate", &run_grpc(&mut c, req).await?, "fencing_token")?;
        let status = c
            .status(StatusRequest {
                target_ids: vec![],
                include_history: false,
                fencing_token: token,
                ..Default::default()
            })
            .await
            .err()
            .context("status with a token above i64::MAX must be refused")?;
        ensure!(status.code() == Code::InvalidArgument, "{status:?}");
        let stamp = c
            .stamp(StampRequest {
                project: Default::default(),
                target_id: "t1".into(),
                fencing_token: token,
                revisions: vec![ExpectedRevision {
                    revision: "0001_a".into(),
                    checksum: checksum("x"),
                }],
                direction: Direction::Up as i32,
                rollout_id: "stamp".into(),
            })
            .await
            .err()
            .context("stamp with a token above i64::MAX must be refused")?;
        ensure!(stamp.code() == Code::InvalidArgument, "{stamp:?}");
        let repair = c
            .repair(RepairRequest {
                project: Default::default(),
                target_id: "t1".into(),
                fencing_token: token,
                revision: "0001_a".into(),
                applied: true,
            })
            .await
            .err()
            .context("repair with a token above i64::MAX must be refused")?;
        ensure!(repair.code() == Code::InvalidArgument, "{repair:?}");
    }

    // A rollout id longer than the history column (129..=256) is refused before anything runs.
    for len in [MAX_ROLLOUT_ID_LEN + 1, 200, 256] {
        let req = migrate(
            "t1",
            &"r".repeat(len),
            21,
            vec![up("0001_a", "CREATE TABLE a (id INT);")],
        );
        invalid_argument(
            &format!("rollout id of {len}"),
            &run_grpc(&mut c, req).await?,
            "rollout_id",
        )?;
    }
    ensure!(
        snapshot(&mut c).await? == before,
        "a refused request changed a target"
    );
    ensure!(
        agent.fence_floor() == 0,
        "refused requests raised the fence"
    );

    // Afterwards a normal token is accepted on every target, and a 128-character rollout id
    // is stored as sent.
    let long_id = "r".repeat(MAX_ROLLOUT_ID_LEN);
    for t in ["t1", "t2"] {
        let req = migrate(
            t,
            &long_id,
            21,
            vec![up("0001_a", "CREATE TABLE a (id INT);")],
        );
        succeeded(t, &run_grpc(&mut c, req).await?)?;
    }
    let after = snapshot(&mut c).await?;
    for t in &after.targets {
        ensure!(
            t.fence_token == 21,
            "{}: fence {}",
            t.target_id,
            t.fence_token
        );
        let row = t.history.last().context("no history row")?;
        ensure!(
            row.rollout_id == long_id && row.fencing_token == 21,
            "{row:?}"
        );
    }
    server.stop().await?;

    // The largest storable token is stored and read back exactly.
    let agent =
        std::sync::Arc::new(Agent::new(config(vec![backend.fresh_target("t3").await?])).await?);
    let server = Server::start(agent).await?;
    let mut c = server.client().await?;
    let req = migrate(
        "t3",
        "r-max",
        MAX_FENCING_TOKEN,
        vec![up("0001_a", "CREATE TABLE a (id INT);")],
    );
    succeeded("i64::MAX token", &run_grpc(&mut c, req).await?)?;
    let t3 = snapshot(&mut c).await?;
    let t3 = t3.targets.first().context("no t3")?;
    ensure!(
        t3.fence_token == MAX_FENCING_TOKEN,
        "fence {}",
        t3.fence_token
    );
    ensure!(
        t3.history.last().map(|r| r.fencing_token) == Some(MAX_FENCING_TOKEN),
        "{:?}",
        t3.history
    );
    server.stop().await
}

#[tokio::test]
async fn storage_limits_postgres() -> Result<()> {
    storage_limits(Dialect::Postgres).await
}

#[tokio::test]
async fn storage_limits_mariadb() -> Result<()> {
    storage_limits(Dialect::Mysql).await
}

#[tokio::test]
async fn storage_limits_sqlite() -> Result<()> {
    storage_limits(Dialect::Sqlite).await
}

/// A request that fails (SQL error, unknown target, checksum mismatch, invalid) with a high
/// token leaves the fence where it was: lower, legitimate tokens are still accepted.
#[tokio::test]
async fn a_failed_request_does_not_raise_the_fence() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = std::sync::Arc::new(
        Agent::new(config(vec![
            backend.fresh_target("t1").await?,
            backend.fresh_target("t2").await?,
        ]))
        .await?,
    );
    let server = Server::start(agent.clone()).await?;
    let mut c = server.client().await?;
    let before = snapshot(&mut c).await?;

    let failing = migrate("t1", "evil", 1_000, vec![up("0001_bad", "NOT SQL AT ALL;")]);
    let out = run_grpc(&mut c, failing).await?;
    ensure!(
        out.err()?.code() == Code::Aborted && out.failed().is_some_and(|f| f.rolled_back),
        "{:?} {:?}",
        out.kinds(),
        out.error
    );
    let unknown = migrate("nope", "evil", 2_000, vec![up("0001_a", "SELECT 1;")]);
    let out = run_grpc(&mut c, unknown).await?;
    ensure!(out.err()?.code() == Code::NotFound, "{:?}", out.error);
    let mut mismatch = migrate("t2", "evil", 3_000, vec![up("0001_a", "SELECT 1;")]);
    mismatch.steps[0].checksum = checksum("SELECT 2;");
    let out = run_grpc(&mut c, mismatch).await?;
    ensure!(
        out.err()?.code() == Code::InvalidArgument,
        "{:?}",
        out.error
    );
    ensure!(
        snapshot(&mut c).await? == before,
        "a failed request changed a target"
    );
    ensure!(agent.fence_floor() == 0, "failed requests raised the fence");

    for t in ["t1", "t2"] {
        let req = migrate(t, "r1", 21, vec![up("0001_a", "CREATE TABLE a (id INT);")]);
        succeeded(t, &run_grpc(&mut c, req).await?)?;
    }
    // An accepted token binds on every target, so an older leader is refused even where the
    // newer one has not been: t2 never saw token 30, yet 25 is refused there.
    let req = migrate(
        "t1",
        "r2",
        30,
        vec![up("0002_b", "CREATE TABLE b (id INT);")],
    );
    succeeded("token 30 on t1", &run_grpc(&mut c, req).await?)?;
    let stale = migrate(
        "t2",
        "r1",
        25,
        vec![up("0002_b", "CREATE TABLE b (id INT);")],
    );
    let out = run_grpc(&mut c, stale).await?;
    let err = out.err()?;
    ensure!(
        err.code() == Code::FailedPrecondition && reason(err) == "STALE_FENCING_TOKEN",
        "{err:?}"
    );
    server.stop().await
}

/// A Status announcing a huge (but storable) token refuses lower tokens only while the
/// announcement is fresh; afterwards the legitimate leader's token is accepted again. A
/// legitimate announcement still fences an older leader on targets nobody has touched.
#[tokio::test]
async fn a_bogus_announcement_lapses() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let mut cfg = config(vec![
        backend.fresh_target("t1").await?,
        backend.fresh_target("t2").await?,
    ]);
    cfg.fence.announcement_ttl = Duration::from_millis(500);
    let agent = std::sync::Arc::new(Agent::new(cfg).await?);
    let server = Server::start(agent.clone()).await?;
    let mut c = server.client().await?;

    // The legitimate leader announces 20; an older leader's 19 is refused on untouched t2.
    announce(&mut c, 20).await?;
    let old = migrate(
        "t2",
        "old",
        19,
        vec![up("0001_a", "CREATE TABLE a (id INT);")],
    );
    let out = run_grpc(&mut c, old).await?;
    ensure!(
        out.err()?.code() == Code::FailedPrecondition,
        "{:?}",
        out.error
    );

    let before = snapshot(&mut c).await?;
    announce(&mut c, MAX_FENCING_TOKEN).await?;
    let req = || {
        migrate(
            "t1",
            "r1",
            21,
            vec![up("0001_a", "CREATE TABLE a (id INT);")],
        )
    };
    let out = run_grpc(&mut c, req()).await?;
    ensure!(
        out.err()?.code() == Code::FailedPrecondition,
        "a fresh announcement binds: {:?}",
        out.error
    );
    ensure!(
        snapshot(&mut c).await? == before,
        "a refused step changed a target"
    );
    let after = eventually(
        "the bogus announcement lapses",
        Duration::from_secs(20),
        || {
            let mut c = c.clone();
            async move {
                let out = run_grpc(&mut c, req()).await?;
                Ok(out.error.is_none().then_some(out))
            }
        },
    )
    .await?;
    succeeded("token 21 after the lapse", &after)?;
    ensure!(agent.fence_floor() == 21, "floor {}", agent.fence_floor());
    server.stop().await
}

/// Announce `token` the way a new leader does: a Status listing identities only (no database
/// is read), which must fence as a full one would.
async fn announce(c: &mut Client, token: u64) -> Result<()> {
    c.status(StatusRequest {
        project: Default::default(),
        target_ids: vec![],
        include_history: false,
        fencing_token: token,
        identities_only: true,
        without_fence: false,
        applied_set_only: false,
    })
    .await?;
    Ok(())
}

/// Issue 13, shows 3: `grpcurl list` on an agent shows only AgentService, health and
/// reflection (the descriptor set also holds CoordinatorService, which the agent does not
/// serve), and every listed service answers.
#[tokio::test]
async fn reflection_lists_only_served_services() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = crate::support::agent(vec![backend.fresh_target("t1").await?]).await?;
    let server = Server::start(agent).await?;
    let addr = server.addr.to_string();
    let list = crate::grpc::grpcurl(&["-plaintext", &addr, "list"]).await?;
    let mut listed: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    listed.sort_unstable();
    let mut want = vec!["flotilla.v1.AgentService", "grpc.health.v1.Health"];
    want.extend(flotilla_rpc::reflection::REFLECTION);
    want.sort_unstable();
    ensure!(listed == want, "grpcurl list:\n{list}");
    for service in &want {
        let described = crate::grpc::grpcurl(&["-plaintext", &addr, "describe", service]).await?;
        ensure!(described.contains("service"), "{service}: {described}");
    }
    server.stop().await
}
