//! Trace-context propagation for the coordinator: what goes into outgoing gRPC metadata
//! (CLI → coordinator, coordinator → agents) and what a new rollout records as its trace.
//! Subscriber and exporter setup is shared with the agent (`flotilla_rpc::telemetry`); with
//! no `OTEL_*` configuration nothing is exported, and propagation only carries ids.

use std::sync::Arc;

use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use flotilla_rpc::telemetry::{
    LogFormat, Telemetry, TelemetryConfig, TelemetryError, TraceExport, context_from_traceparent,
    extract, init, inject, inject_current, install_metrics, record_failure, set_remote_parent,
    traceparent_of,
};

use crate::fleet::RequestHook;

/// Extracts (traceparent, trace id) for a new rollout from the StartRollout call's metadata.
pub type TraceOf = Arc<dyn Fn(&tonic::metadata::MetadataMap) -> (String, String) + Send + Sync>;

/// Hooks the binary supplies ([`hooks`]: trace-context propagation).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Decorates every request sent to an agent.
    pub agent_request: Option<RequestHook>,
    /// Extracts (traceparent, trace id) from an incoming StartRollout.
    pub trace_of: Option<TraceOf>,
}

/// The hooks a coordinator process uses: every agent request carries the current span's
/// `traceparent`, and a new rollout's trace is taken from the StartRollout call.
pub fn hooks() -> Hooks {
    Hooks {
        agent_request: Some(Arc::new(inject_current)),
        trace_of: Some(Arc::new(trace_of)),
    }
}

/// (traceparent, trace id) for a rollout started by a call with `metadata`: a
/// `CoordinatorService/StartRollout` server span, child of the caller's span when the call
/// carries one (a CLI started the trace), else the root of a new trace. Without the
/// OpenTelemetry layer, the caller's own context is recorded as is.
pub fn trace_of(metadata: &tonic::metadata::MetadataMap) -> (String, String) {
    let remote = extract(metadata);
    let span = tracing::info_span!(
        "rpc",
        otel.name = "CoordinatorService/StartRollout",
        otel.kind = "server"
    );
    set_remote_parent(&span, remote.clone());
    let ours = traceparent_of(&span.context());
    if !ours.0.is_empty() {
        return ours;
    }
    traceparent_of(&remote)
}

/// The server span of an API call that reaches agents (`method`: e.g.
/// `CoordinatorService/FleetStatus`): a child of the caller's span when the call carries
/// `traceparent`, else the root of the call's own trace. The agents' server spans of the call
/// (`AgentService/Status`, `AgentService/Validate`, ...) are its children, so a call is one
/// trace, not one agent-only root trace per agent.
pub fn api_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!("rpc", otel.name = method, otel.kind = "server");
    set_remote_parent(&span, extract(metadata));
    span
}

/// The span of one rollout run, continuing the trace recorded when the rollout started (so
/// a new leader resuming it adds to the same trace).
pub fn rollout_span(rollout_id: &str, token: u64, traceparent: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "rollout",
        flotilla.rollout.id = %rollout_id,
        flotilla.fencing_token = token
    );
    set_remote_parent(&span, context_from_traceparent(traceparent));
    span
}
