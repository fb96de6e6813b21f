//! gRPC reflection on the coordinator lists only what it serves (issue 13): its own
//! `CoordinatorService`, health and reflection, not the agent's service, over v1 and v1alpha.

use anyhow::{Context, Result, bail};
use futures::StreamExt;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_the_coordinator_services() -> Result<()> {
    use tonic_reflection::pb::{v1, v1alpha};

    let (_t, targets) = sqlite_targets("t", 1)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent], None).await?;
    let channel = tonic::transport::Endpoint::from_shared(coord.address.clone())?
        .connect()
        .await?;
    let want = [
        "flotilla.v1.CoordinatorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut resp = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([req]))
        .await?
        .into_inner();
    let msg = resp.next().await.context("no v1 reflection answer")??;
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        msg.message_response
    else {
        bail!("unexpected v1 reflection answer {msg:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, want, "v1 reflection");

    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut resp = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([req]))
        .await?
        .into_inner();
    let msg = resp
        .next()
        .await
        .context("no v1alpha reflection answer")??;
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        msg.message_response
    else {
        bail!("unexpected v1alpha reflection answer {msg:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, want, "v1alpha reflection");
    Ok(())
}
