//! Selections that select nothing, and selectors outside their bounds: refused with a clear
//! error naming the selector (INVALID_ARGUMENT over gRPC, exit 2 from the CLI, checked by the
//! CLI before any call), nothing recorded, no target touched. A pinned goal missing from the
//! set is refused the same way.

use std::collections::HashMap;

use anyhow::Result;
use flotilla_proto as pb;
use tonic::transport::Channel;

use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;

use crate::harness::{
    TestAgent, TestCoordinator, applied, free_addr, run_cli, sqlite_targets, two_revisions,
};

async fn recorded(c: &mut CoordinatorServiceClient<Channel>) -> Result<usize> {
    Ok(c.list_rollouts(pb::ListRolloutsRequest {
        project: Default::default(),
        limit: 0,
    })
    .await?
    .into_inner()
    .rollouts
    .len())
}

fn selector(labels: &[(&str, &str)], ids: &[&str]) -> pb::Selector {
    pb::Selector {
        match_labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        target_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn spec_of(goal: &str, selector: pb::Selector) -> pb::RolloutSpec {
    pb::RolloutSpec {
        goal: goal.into(),
        selector: Some(selector),
        max_parallel: 2,
        ..Default::default()
    }
}

/// StartRollout and Plan with `spec`: both must be INVALID_ARGUMENT; the start's message.
async fn refused(
    c: &mut CoordinatorServiceClient<Channel>,
    spec: pb::RolloutSpec,
) -> Result<String> {
    let err = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec.clone()),
        })
        .await
        .expect_err("StartRollout must refuse");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let plan = c
        .plan(pb::PlanRequest { spec: Some(spec) })
        .await
        .expect_err("Plan must refuse");
    assert_eq!(plan.code(), tonic::Code::InvalidArgument, "{plan:?}");
    Ok(err.message().to_owned())
}

/// Every target of `agent` still at base.
async fn untouched(agent: &TestAgent) -> Result<()> {
    for (id, s) in agent.statuses(false).await? {
        assert!(applied(&s).is_empty(), "{id} was migrated: {s:?}");
    }
    Ok(())
}

#[tokio::test]
async fn empty_selection_is_refused_and_nothing_is_recorded() -> Result<()> {
    let dir = two_revisions()?;
    let (_tmp, targets) = sqlite_targets("sel", 3)?;
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;
    let addr = coord.address.as_str();

    // The CLI: exit 2, the selector as given in the message, for labels and for ids.
    let cases: [(&[&str], &str); 4] = [
        (
            &["rollout", "start", "-l", "tier=bronze", "--wait"],
            r#"selector -l "tier=bronze" matched none of the fleet's 3 targets: nothing was started"#,
        ),
        (
            &["rollout", "start", "--target", "no-such-target", "--wait"],
            r#"selector --target "no-such-target" matched none of the fleet's 3 targets"#,
        ),
        (
            &["rollout", "start", "-l", "tier=gold", "--target", "sel01"],
            r#"selector -l "tier=gold" --target "sel01" matched none"#,
        ),
        (
            &["plan", "-l", "tier=bronze"],
            r#"selector -l "tier=bronze" matched none of the fleet's 3 targets: nothing to plan"#,
        ),
    ];
    for (args, want) in cases {
        let mut args = args.to_vec();
        args.extend(["--coordinator", addr]);
        let (code, out, err) = run_cli(&args, None).await?;
        assert_eq!(code, 2, "{args:?}: stdout {out} stderr {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            err.contains("flotilla status"),
            "says what to do next: {err}"
        );
    }

    // Raw gRPC: INVALID_ARGUMENT for StartRollout and Plan, by label and by id.
    let msg = refused(
        &mut c,
        spec_of("head", selector(&[("tier", "bronze")], &[])),
    )
    .await?;
    assert!(msg.contains(r#"-l "tier=bronze""#), "{msg}");
    let msg = refused(
        &mut c,
        spec_of("head", selector(&[], &["nope-1", "nope-2"])),
    )
    .await?;
    assert!(
        msg.contains(r#"--target "nope-1" --target "nope-2""#),
        "{msg}"
    );

    assert_eq!(recorded(&mut c).await?, 0, "no rollout record was written");
    untouched(&agent).await?;

    // `wait` keeps treating an empty selection as not ready (exit 5), not as an error.
    let (code, out, err) = run_cli(
        &[
            "wait",
            "--revision",
            "head",
            "-l",
            "tier=bronze",
            "--timeout",
            "1s",
            "--interval",
            "100ms",
            "--coordinator",
            addr,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 5, "stdout {out} stderr {err}");
    assert!(out.contains("no target matches the selector"), "{out}");

    // A selection that matches still runs: the check refuses only what selects nothing.
    let (code, out, err) = run_cli(
        &[
            "rollout",
            "start",
            "-l",
            "tier=gold",
            "--wait",
            "--coordinator",
            addr,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert_eq!(recorded(&mut c).await?, 1);
    let migrated: Vec<String> = agent
        .statuses(false)
        .await?
        .into_iter()
        .filter(|(_, s)| !applied(s).is_empty())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(migrated, vec!["sel02".to_owned()], "only the gold target");
    Ok(())
}

#[tokio::test]
async fn selectors_outside_their_bounds_are_refused_by_the_api() -> Result<()> {
    let dir = two_revisions()?;
    let (_tmp, targets) = sqlite_targets("b", 2)?;
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;

    let mb_id = "t".repeat(1 << 20);
    let big = "k".repeat(100 << 10);
    let many: HashMap<String, String> = (0..1000).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<(pb::Selector, &str)> = vec![
        (selector(&[], &[&mb_id]), "selector target id \"tttt"),
        (
            selector(&[], &["b01\0"]),
            r#"selector target id "b01\0" contains a control character"#,
        ),
        (
            selector(&[], &["b01\u{1b}[2J"]),
            r#"selector target id "b01\u{1b}[2J" contains a control character"#,
        ),
        (selector(&[(&big, "v")], &[]), "selector label key \"kkkk"),
        (
            selector(&[("tier", &big)], &[]),
            "selector label value \"kkkk",
        ),
        (
            pb::Selector {
                match_labels: many,
                target_ids: vec![],
            },
            "selector has 1000 labels, at most 256 are allowed",
        ),
        (
            selector(&[], &vec!["b01"; 1000]),
            "selector has 1000 target ids, at most 256",
        ),
    ];
    for (sel, want) in cases {
        let msg = refused(&mut c, spec_of("head", sel)).await?;
        assert!(msg.contains(want), "{msg:.300}");
        // The offending text is cut, escaped: the message stays short and printable.
        assert!(msg.len() < 400, "{} bytes: {msg:.300}", msg.len());
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
    }
    // The fleet calls check the same bounds.
    let err = c
        .fleet_status(pb::FleetStatusRequest {
            project: Default::default(),
            selector: Some(selector(&[], &["b01\0"])),
            include_schema: false,
            ..Default::default()
        })
        .await
        .expect_err("FleetStatus checks the selector too");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    assert_eq!(recorded(&mut c).await?, 0, "no rollout record was written");
    untouched(&agent).await?;
    Ok(())
}

#[tokio::test]
async fn selectors_outside_their_bounds_are_refused_by_the_cli_before_any_call() -> Result<()> {
    // Nobody listens here: a CLI that called would fail to connect (exit 1), not exit 2.
    let addr = format!("http://{}", free_addr());
    let long_id = "t".repeat(254);
    let big_key = format!("{}=v", "k".repeat(100 << 10));
    let big_value = format!("tier={}", "v".repeat(100 << 10));
    let many = (0..1000)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--target", &long_id], "selector target id \"tttt"),
        (
            vec!["--target", "t\u{1}x"],
            r#"selector target id "t\u{1}x" contains a control character"#,
        ),
        (vec!["-l", &big_key], "selector label key \"kkkk"),
        (vec!["-l", &big_value], "selector label value \"vvvv"),
        (
            vec!["-l", &many],
            "selector has 1000 labels, at most 256 are allowed",
        ),
        (vec!["-l", "tier"], r#"selector "tier" is not key=value"#),
    ];
    for (sel, want) in cases {
        for cmd in [
            &["rollout", "start", "--wait"][..],
            &["plan"][..],
            &["status"][..],
        ] {
            let mut args = cmd.to_vec();
            args.extend(sel.iter().copied());
            args.extend(["--coordinator", addr.as_str()]);
            let (code, out, err) = run_cli(&args, None).await?;
            assert_eq!(code, 2, "{cmd:?} {want}: stdout {out} stderr {err:.300}");
            assert!(err.contains(want), "{cmd:?}: {err:.300}");
            assert!(err.len() < 400, "{} bytes: {err:.300}", err.len());
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_pinned_goal_missing_from_the_set_is_refused() -> Result<()> {
    let dir = two_revisions()?;
    let (_tmp, targets) = sqlite_targets("g", 2)?;
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;

    let msg = refused(&mut c, spec_of("9999_missing", selector(&[], &[]))).await?;
    assert!(
        msg.contains(r#"goal "9999_missing": no such revision"#),
        "{msg}"
    );
    for cmd in [&["rollout", "start", "--wait"][..], &["plan"][..]] {
        let mut args = cmd.to_vec();
        args.extend([
            "--to",
            "9999_missing",
            "--coordinator",
            coord.address.as_str(),
        ]);
        let (code, out, err) = run_cli(&args, None).await?;
        assert_eq!(code, 2, "{cmd:?}: stdout {out} stderr {err}");
        assert!(
            err.contains(r#"goal "9999_missing": no such revision"#),
            "{err}"
        );
    }
    assert_eq!(recorded(&mut c).await?, 0, "no rollout record was written");
    untouched(&agent).await?;
    Ok(())
}
