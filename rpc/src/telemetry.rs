//! Telemetry shared by `flotilla-agent` and `flotilla`: logs (human or JSON, both carrying the
//! trace id), OpenTelemetry trace export over OTLP/gRPC configured by the standard `OTEL_*`
//! variables, W3C trace context in gRPC metadata, and the Prometheus `/metrics` listener.
//!
//! Spans always get OpenTelemetry ids (so logs of one rollout share a trace id across
//! processes), but they leave the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: with no `OTEL_*` configuration nothing
//! connects anywhere. `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (resource) and
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (sampling) are read by the SDK.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{DefaultFields, Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines, ending in `trace_id=… span_id=…` inside a span.
    #[default]
    Human,
    /// One JSON object per line, with top-level `trace_id` and `span_id` inside a span.
    Json,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OTLP trace exporter: {0}; check OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317)"
    )]
    Exporter(String),
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
    #[error("metrics listener on {addr}: {message}")]
    Metrics { addr: SocketAddr, message: String },
    /// The log filter variable does not parse.
    #[error(
        "{var}={value:?} is not a log filter: {source}; use e.g. {var}=debug or {var}=flotilla_agent=debug,info"
    )]
    LogFilter {
        var: &'static str,
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The variable both binaries read their log filter from; `RUST_LOG` is read when it is
/// unset (what tracing users expect), and the binary's default when neither is.
pub const LOG_ENV: &str = "FLOTILLA_LOG";

/// What `--help` of both binaries says about logging.
pub const LOG_HELP: &str = "Logging: FLOTILLA_LOG (or RUST_LOG when it is unset) sets the log filter, e.g. FLOTILLA_LOG=debug or FLOTILLA_LOG=flotilla_agent=debug,info; --log-format json for JSON lines";

/// The log filter from the process environment: [`LOG_ENV`], else `RUST_LOG`, else `default`.
pub fn log_filter(default: &str) -> Result<EnvFilter, TelemetryError> {
    log_filter_from(|k| std::env::var(k).ok(), default)
}

/// [`log_filter`] from any variable lookup. An empty variable counts as unset; one that does
/// not parse is an error naming it (it is never silently replaced by the default).
pub fn log_filter_from(
    get: impl Fn(&str) -> Option<String>,
    default: &str,
) -> Result<EnvFilter, TelemetryError> {
    for var in [LOG_ENV, "RUST_LOG"] {
        let Some(value) = get(var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return EnvFilter::try_new(&value).map_err(|source| TelemetryError::LogFilter {
            var,
            value,
            source,
        });
    }
    Ok(EnvFilter::new(default))
}

/// Where finished spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    /// Nowhere: no exporter is built and nothing connects anywhere.
    Off,
    /// OTLP over gRPC to this endpoint (the exporter reads the rest of `OTEL_EXPORTER_OTLP_*`).
    Otlp { endpoint: String },
}

impl TraceExport {
    /// From the process environment.
    pub fn from_env() -> TraceExport {
        TraceExport::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup: on when an OTLP endpoint is set, unless the SDK is disabled
    /// (`OTEL_SDK_DISABLED=true`) or the traces exporter is `none`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> TraceExport {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return TraceExport::Off;
        }
        match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        {
            Some(endpoint) => TraceExport::Otlp { endpoint },
            None => TraceExport::Off,
        }
    }
}

impl std::fmt::Display for TraceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceExport::Off => f.write_str("off (OTEL_EXPORTER_OTLP_ENDPOINT unset)"),
            TraceExport::Otlp { endpoint } => write!(f, "OTLP/gRPC to {endpoint}"),
        }
    }
}

/// What a binary asks of [`init`].
#[derive(Debug)]
pub struct TelemetryConfig {
    /// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` set one.
    pub service_name: &'static str,
    pub log_format: LogFormat,
    /// What is logged (spans sent to OpenTelemetry are Flotilla's own at INFO and above,
    /// whatever this says).
    pub log_filter: EnvFilter,
    /// Logs go to stderr (true) or stdout.
    pub stderr: bool,
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] (or drop) flushes the spans
/// not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    export: TraceExport,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("export", &self.export)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn export(&self) -> &TraceExport {
        &self.export
    }

    /// Export what is buffered and stop the provider, off the async worker threads.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || shutdown_provider(&provider)).await;
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(&provider);
        }
    }
}

fn shutdown_provider(provider: &SdkTracerProvider) {
    if let Err(e) = provider.shutdown() {
        eprintln!("warning: flushing traces: {e}");
    }
}

/// The resource: the SDK's detectors (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with
/// `default_name` when neither names the service.
fn resource(default_name: &'static str) -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(default_name).build()
    }
}

/// Install the global log/trace subscriber. With export on, call it inside a Tokio runtime
/// (the gRPC channel is created there) and keep the returned guard until exit.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let export = TraceExport::from_env();
    let mut builder = SdkTracerProvider::builder().with_resource(resource(config.service_name));
    if let TraceExport::Otlp { .. } = &export {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    subscriber(&provider, config)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    tracing::debug!(export = %export, "trace export");
    Ok(Telemetry {
        provider: Some(provider),
        export,
    })
}

/// The subscriber [`init`] installs: spans to OpenTelemetry (Flotilla's own, INFO and above),
/// log lines as `config` says, and nothing built for a span or event no layer wants.
fn subscriber(
    provider: &SdkTracerProvider,
    config: TelemetryConfig,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    let tracer = provider.tracer(config.service_name);
    let otel_filter = Targets::new()
        .with_target("flotilla_agent", LevelFilter::INFO)
        .with_target("flotilla_coordinator", LevelFilter::INFO)
        .with_target("flotilla", LevelFilter::INFO);
    let otel = tracing_opentelemetry::layer()
        // Span fields named `target` (the database target) are ours, not the module path.
        .with_target(false)
        // No per-span noise: source location, thread, busy/idle time.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        // Nothing of ours reads OpenTelemetry's current context (propagation asks the tracing
        // span for its context, and a span's parent is the current tracing span), so entering
        // a span, on every poll of an instrumented future, need not attach and detach one.
        .with_context_activation(false)
        .with_tracer(tracer)
        .with_filter(otel_filter);
    let dispatch = DispatchSlot::default();
    let fmt = match config.log_format {
        LogFormat::Human => {
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .event_format(WithTraceId {
                    inner: Format::default(),
                    dispatch: dispatch.clone(),
                });
            if config.stderr {
                layer
                    .with_writer(std::io::stderr)
                    .with_filter(config.log_filter)
                    .boxed()
            } else {
                layer
                    .with_writer(std::io::stdout)
                    .with_filter(config.log_filter)
                    .boxed()
            }
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonWithTraceId {
                    inner: Format::default()
                        .json()
                        .with_current_span(true)
                        .with_span_list(false),
                    dispatch: dispatch.clone(),
                });
            if config.stderr {
                layer
                    .with_writer(std::io::stderr)
                    .with_filter(config.log_filter)
                    .boxed()
            } else {
                layer
                    .with_writer(std::io::stdout)
                    .with_filter(config.log_filter)
                    .boxed()
            }
        }
    };
    tracing_subscriber::registry()
        .with(otel)
        // A layer without a filter of its own counts as wanting every span and event, which
        // would make the registry build every span of every library (h2's per-poll spans
        // among them) only for the other layers' filters to drop them. The slot only needs
        // `on_register_dispatch`, which a filtered layer still receives.
        .with(dispatch.with_filter(LevelFilter::OFF))
        .with(fmt)
}

/// Remembers the dispatcher the subscriber was registered with, so formatters can ask the
/// OpenTelemetry layer for a span's trace id.
#[derive(Clone, Default)]
struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl<S: tracing::Subscriber> Layer<S> for DispatchSlot {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

/// The trace and span id of an event's span, cached in the span's extensions.
#[derive(Clone)]
struct SpanIds {
    trace_id: String,
    span_id: String,
}

fn span_ids<S, N>(ctx: &FmtContext<'_, S, N>, slot: &DispatchSlot) -> Option<SpanIds>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let span = ctx.event_scope()?.next()?;
    if let Some(ids) = span.extensions().get::<SpanIds>() {
        return Some(ids.clone());
    }
    let dispatch = slot.0.get()?.upgrade()?;
    let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let ids = SpanIds {
        trace_id: sc.trace_id().to_string(),
        span_id: sc.span_id().to_string(),
    };
    span.extensions_mut().insert(ids.clone());
    Some(ids)
}

/// The default human format with ` trace_id=… span_id=…` at the end of the line.
struct WithTraceId {
    inner: Format,
    dispatch: DispatchSlot,
}

impl<S> FormatEvent<S, DefaultFields> for WithTraceId
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, DefaultFields>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end_matches('\n');
        match span_ids(ctx, &self.dispatch) {
            Some(ids) => writeln!(
                writer,
                "{line} trace_id={} span_id={}",
                ids.trace_id, ids.span_id
            ),
            None => writeln!(writer, "{line}"),
        }
    }
}

/// tracing-subscriber's JSON format plus top-level `trace_id` and `span_id` keys.
struct JsonWithTraceId {
    inner: Format<tracing_subscriber::fmt::format::Json>,
    dispatch: DispatchSlot,
}

impl<S> FormatEvent<S, JsonFields> for JsonWithTraceId
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let ids = span_ids(ctx, &self.dispatch);
        match (
            serde_json::from_str::<serde_json::Value>(line.trim_end()),
            ids,
        ) {
            (Ok(serde_json::Value::Object(mut obj)), Some(ids)) => {
                obj.insert("trace_id".into(), ids.trace_id.into());
                obj.insert("span_id".into(), ids.span_id.into());
                writeln!(writer, "{}", serde_json::Value::Object(obj))
            }
            _ => writeln!(writer, "{}", line.trim_end_matches('\n')),
        }
    }
}

// ---- W3C trace context in gRPC metadata ----

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Write `cx`'s span as W3C `traceparent` (and `tracestate`) into gRPC metadata; nothing when
/// `cx` has no valid span.
pub fn inject(cx: &opentelemetry::Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
}

/// Inject the current tracing span's context (nothing while no span is current or the
/// OpenTelemetry layer is not installed).
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    inject(&tracing::Span::current().context(), metadata);
}

/// The remote parent context carried by incoming metadata (empty when there is none).
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// The `traceparent` of a context, and its trace id; empty strings when it has no valid span.
pub fn traceparent_of(cx: &opentelemetry::Context) -> (String, String) {
    let mut md = tonic::metadata::MetadataMap::new();
    inject(cx, &mut md);
    let traceparent = md
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if traceparent.is_empty() {
        return (String::new(), String::new());
    }
    (traceparent, cx.span().span_context().trace_id().to_string())
}

/// A context from a stored `traceparent` (empty when it is empty or malformed).
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(traceparent) {
        md.insert("traceparent", v);
    }
    extract(&md)
}

/// Make `span` a child of the remote context `cx` (when it carries a valid span). Call it
/// before the span is first entered.
pub fn set_remote_parent(span: &tracing::Span, cx: opentelemetry::Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Mark `span` failed as OpenTelemetry's conventions have it: status ERROR with `message`
/// (the database's own words, where a database said it) and an `exception` event carrying
/// it as `exception.message`, so `{status=error}` and span-derived error rates see it.
pub fn record_failure(span: &tracing::Span, message: &str) {
    span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
    span.add_event(
        "exception",
        vec![opentelemetry::KeyValue::new(
            "exception.message",
            message.to_owned(),
        )],
    );
}

// ---- Prometheus ----

/// Histogram buckets (seconds) for every `*_seconds` metric.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Install the global `metrics` recorder and serve it on `addr` (`/metrics`, with the gauge
/// families of [`crate::prometheus::replace_gauge_family`]). Call inside a Tokio runtime.
pub fn install_metrics(addr: SocketAddr) -> Result<(), TelemetryError> {
    let err = |message: String| TelemetryError::Metrics { addr, message };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| err(e.to_string()))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            SECONDS_BUCKETS,
        )
        .map_err(|e| err(e.to_string()))?
        .install_recorder()
        .map_err(|e| err(e.to_string()))?;
    crate::prometheus::serve(listener, handle);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flotilla_log_wins_then_rust_log_then_the_default() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let show = |f: EnvFilter| f.to_string();
        let both = lookup(&[("FLOTILLA_LOG", "debug"), ("RUST_LOG", "trace")]);
        assert_eq!(show(log_filter_from(both, "info").unwrap()), "debug");
        let rust = lookup(&[("FLOTILLA_LOG", " "), ("RUST_LOG", "trace")]);
        assert_eq!(show(log_filter_from(rust, "info").unwrap()), "trace");
        assert_eq!(show(log_filter_from(lookup(&[]), "warn").unwrap()), "warn");
        let bad = lookup(&[("FLOTILLA_LOG", "flotilla=notalevel")]);
        let err = log_filter_from(bad, "info").unwrap_err().to_string();
        assert!(
            err.starts_with("FLOTILLA_LOG=\"flotilla=notalevel\" is not a log filter"),
            "{err}"
        );
    }

    fn export(vars: &[(&str, &str)]) -> TraceExport {
        TraceExport::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        assert_eq!(export(&[]), TraceExport::Off);
        assert_eq!(
            export(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_TRACES_SAMPLER", "always_on")
            ]),
            TraceExport::Off
        );
        assert_eq!(
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]),
            TraceExport::Off
        );
    }

    #[test]
    fn export_follows_the_endpoint_variables() {
        let on = TraceExport::Otlp {
            endpoint: "http://127.0.0.1:4317".into(),
        };
        assert_eq!(
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]),
            on
        );
        assert_eq!(
            export(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317"
            )]),
            on
        );
        assert_eq!(
            export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "none")
            ]),
            TraceExport::Off
        );
        assert_eq!(
            export(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            TraceExport::Off
        );
    }

    #[test]
    fn spans_no_layer_wants_are_never_built() {
        let provider = SdkTracerProvider::builder().build();
        let sub = subscriber(
            &provider,
            TelemetryConfig {
                service_name: "flotilla-test",
                log_format: LogFormat::Json,
                log_filter: EnvFilter::new("info"),
                stderr: true,
            },
        );
        tracing::subscriber::with_default(sub, || {
            // What h2 opens on every poll of a connection: no layer logs or exports it.
            let poll = tracing::trace_span!(target: "h2::proto::connection", "poll");
            assert!(poll.is_disabled(), "a span no layer wants was built");
            let debug = tracing::debug_span!(target: "hyper::client", "connect");
            assert!(debug.is_disabled(), "a span no layer wants was built");
            // Ours at INFO go to OpenTelemetry and to the log, another crate's INFO to the log.
            let ours = tracing::info_span!(target: "flotilla_coordinator::engine", "target");
            assert!(!ours.is_disabled());
            let theirs = tracing::info_span!(target: "tonic::transport", "serve");
            assert!(!theirs.is_disabled());
        });
    }

    #[test]
    fn traceparent_round_trips_through_metadata() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = context_from_traceparent(tp);
        assert!(cx.span().span_context().is_valid());
        let (back, trace_id) = traceparent_of(&cx);
        assert_eq!(back, tp);
        assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            traceparent_of(&context_from_traceparent("garbage")),
            (String::new(), String::new())
        );
    }
}
