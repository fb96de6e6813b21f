//! The plumbing both gRPC servers (agent and coordinator) and the CLI share, written once:
//! TLS (rustls with ring) for servers and clients, logs, OpenTelemetry export and W3C trace
//! context in gRPC metadata, the Prometheus `/metrics` listener, server reflection, the accepted-
//! connection listener (`TCP_NODELAY`), and the conversions between the core vocabulary and
//! the wire types.

pub mod calls;
pub mod convert;
pub mod listener;
pub mod prometheus;
pub mod reason;
pub mod reflection;
pub mod span_stream;
pub mod telemetry;
pub mod tls;
