//! gRPC server reflection (v1 and v1alpha, so every grpcurl works) that advertises exactly
//! the services a server serves: the flotilla file descriptor set holds both
//! `AgentService` and `CoordinatorService`, and each binary serves only one of them.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// Health checking, which both binaries serve.
pub const HEALTH: &str = "grpc.health.v1.Health";
/// The reflection services themselves.
pub const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn builder(service: &str) -> Builder<'static> {
    let mut b = Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
        .with_service_name(service)
        .with_service_name(HEALTH);
    for name in REFLECTION {
        b = b.with_service_name(name);
    }
    b
}

/// Reflection servers (v1, v1alpha) listing `service` (a fully qualified name such as
/// `flotilla.v1.AgentService`), health and reflection, and nothing else.
#[allow(clippy::type_complexity)]
pub fn serving(
    service: &str,
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    Ok((
        builder(service).build_v1()?,
        builder(service).build_v1alpha()?,
    ))
}
