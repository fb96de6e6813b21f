//! The Prometheus `/metrics` endpoint: the series of the `metrics` recorder
//! (metrics-exporter-prometheus), followed by gauge families that are replaced as a whole.
//!
//! The recorder cannot forget one series: once a label value has been used, its series is
//! scraped until the process ends (its only expiry, `idle_timeout`, applies to every gauge
//! alike, and most gauges are set once and stay true). A gauge whose label values come and go
//! (targets by revision: a revision no target has any more is no longer a series) is kept here
//! instead, with [`replace_gauge_family`]: each call states every series of the family, and a
//! series left out is gone from the next scrape.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

/// How often the recorder's histograms are drained when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A gauge family (or one part of it, [`replace_gauge_family_part`]) replaced as a whole: its
/// HELP text, its label, the series, and the label every series of the part shares.
struct Family {
    help: &'static str,
    label: &'static str,
    series: BTreeMap<String, f64>,
    fixed: Option<(&'static str, String)>,
}

/// By family name, then part (empty for a whole family).
static FAMILIES: Mutex<BTreeMap<(&'static str, String), Family>> = Mutex::new(BTreeMap::new());

/// Set gauge family `name` to exactly `series` (label value → value): series of earlier
/// calls that are not in `series` disappear from the scrape. `help` is its `# HELP` text.
pub fn replace_gauge_family(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    series: impl IntoIterator<Item = (String, f64)>,
) {
    let family = Family {
        help,
        label,
        series: series.into_iter().collect(),
        fixed: None,
    };
    FAMILIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((name, String::new()), family);
}

/// [`replace_gauge_family`] for the part of family `name` whose series all carry
/// `fixed` (a label and its value, e.g. `project="billing"`): other parts are kept.
pub fn replace_gauge_family_part(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    fixed: (&'static str, String),
    series: impl IntoIterator<Item = (String, f64)>,
) {
    let part = format!("{}={}", fixed.0, fixed.1);
    let family = Family {
        help,
        label,
        series: series.into_iter().collect(),
        fixed: Some(fixed),
    };
    FAMILIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((name, part), family);
}

/// The replaced families in the text exposition format, one block per family with series.
pub(crate) fn render_families() -> String {
    let families = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let mut last: Option<&str> = None;
    for ((name, _), f) in families.iter().filter(|(_, f)| !f.series.is_empty()) {
        if last != Some(*name) {
            if last.is_some() {
                out.push('\n');
            }
            out.push_str(&format!("# HELP {name} {}\n", escape_help(f.help)));
            out.push_str(&format!("# TYPE {name} gauge\n"));
            last = Some(*name);
        }
        let fixed = f.fixed.as_ref().map_or_else(String::new, |(l, v)| {
            format!(",{l}=\"{}\"", escape_label(v))
        });
        for (value, n) in &f.series {
            out.push_str(&format!(
                "{name}{{{}=\"{}\"{fixed}}} {n}\n",
                f.label,
                escape_label(value)
            ));
        }
    }
    if last.is_some() {
        out.push('\n');
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole scrape: the recorder's series, then the replaced families.
fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&render_families());
    text
}

/// Serve `/metrics` (and `/health`) on `listener` until the runtime ends, and drain the
/// recorder's histograms every few seconds.
pub(crate) fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: cannot accept a connection");
                    continue;
                }
            };
            let handle = handle.clone();
            let service = service_fn(move |req| answer(handle.clone(), req));
            tokio::spawn(async move {
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics listener: connection ended with an error");
                }
            });
        }
    });
}

async fn answer(
    handle: PrometheusHandle,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // As the exporter's own listener did: `/health`, and the metrics on every other path.
    let body = if req.uri().path() == "/health" {
        "OK".to_owned()
    } else {
        tokio::task::spawn_blocking(move || render(&handle))
            .await
            .unwrap_or_default()
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_family_keeps_only_the_latest_series() {
        let name = "flotilla_test_replaced";
        replace_gauge_family(
            name,
            "A test family",
            "revision",
            [("a".to_owned(), 2.0), ("b".to_owned(), 1.0)],
        );
        let text = render_families();
        assert!(
            text.contains("flotilla_test_replaced{revision=\"a\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_test_replaced{revision=\"b\"} 1\n"),
            "{text}"
        );
        replace_gauge_family(name, "A test family", "revision", [("b".to_owned(), 3.0)]);
        let text = render_families();
        // Other tests' families (rendered from the same registry) have `revision="a"` too.
        assert!(
            !text.contains("flotilla_test_replaced{revision=\"a\"}"),
            "{text}"
        );
        assert!(
            text.contains("# HELP flotilla_test_replaced A test family\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE flotilla_test_replaced gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_test_replaced{revision=\"b\"} 3\n"),
            "{text}"
        );
        replace_gauge_family(name, "A test family", "revision", []);
        assert!(!render_families().contains(name));
    }

    #[test]
    fn parts_of_a_family_are_replaced_apart_under_one_help() {
        let name = "flotilla_test_parts";
        let part = |project: &str, series: &[(&str, f64)]| {
            replace_gauge_family_part(
                name,
                "A family in parts",
                "revision",
                ("project", project.to_owned()),
                series.iter().map(|(r, n)| ((*r).to_owned(), *n)),
            )
        };
        part("default", &[("a", 2.0)]);
        part("billing", &[("x", 1.0)]);
        let text = render_families();
        assert_eq!(
            text.matches("# HELP flotilla_test_parts ").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("flotilla_test_parts{revision=\"a\",project=\"default\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_test_parts{revision=\"x\",project=\"billing\"} 1\n"),
            "{text}"
        );
        // Replacing one project's part leaves the other's alone.
        part("billing", &[("y", 4.0)]);
        let text = render_families();
        assert!(
            !text.contains("flotilla_test_parts{revision=\"x\""),
            "{text}"
        );
        assert!(
            text.contains("flotilla_test_parts{revision=\"a\",project=\"default\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_test_parts{revision=\"y\",project=\"billing\"} 4\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
