//! The metric gate of a rollout spec (pure): the PromQL query that must stay empty or 0 for
//! a window after each wave, the Prometheus it asks, their defaults and bounds, and the state
//! of a gate that holds the next wave back (what `rollout watch` shows).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use flotilla_proto as pb;

/// How long the query must stay empty or 0 when a rollout gives no window (`--gate-window`).
pub const DEFAULT_GATE_WINDOW: Duration = Duration::from_secs(120);

/// The longest window a rollout accepts.
pub const MAX_GATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The longest query a rollout accepts (bytes).
pub const MAX_GATE_QUERY: usize = 4096;

/// How often the query is evaluated in a window: a tenth of it, between 1 s and 15 s.
pub fn evaluation_interval(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// A rollout's metric gate, as asked for (`--gate-query`, `--gate-window`,
/// `--gate-prometheus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricGate {
    pub query: String,
    /// At least 1 ms once through [`MetricGate::from_proto`] (0 there means
    /// [`DEFAULT_GATE_WINDOW`]).
    pub window_ms: u64,
    /// Prometheus's base URL; empty until the coordinator fills in its default at the start.
    #[serde(default)]
    pub prometheus_url: String,
}

impl MetricGate {
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    pub fn to_proto(&self) -> pb::MetricGate {
        pb::MetricGate {
            query: self.query.clone(),
            window_ms: self.window_ms,
            prometheus_url: self.prometheus_url.clone(),
        }
    }

    /// Validate a request's gate: `None` when it has no query (then it must set nothing).
    pub fn from_proto(p: Option<&pb::MetricGate>) -> Result<Option<MetricGate>, String> {
        let Some(p) = p else { return Ok(None) };
        let query = p.query.trim();
        if query.is_empty() {
            if p.window_ms != 0 || !p.prometheus_url.trim().is_empty() {
                return Err(
                    "a metric gate window or Prometheus URL was given without a query: \
                     add --gate-query 'PROMQL'"
                        .into(),
                );
            }
            return Ok(None);
        }
        if query.len() > MAX_GATE_QUERY {
            return Err(format!(
                "the gate query is {} bytes, longer than {MAX_GATE_QUERY}; give a shorter --gate-query",
                query.len()
            ));
        }
        if query.contains('\0') {
            return Err("the gate query contains a NUL character; remove it".into());
        }
        if p.window_ms > MAX_GATE_WINDOW.as_millis() as u64 {
            return Err(format!(
                "gate window {} ms is longer than {} hours; give a shorter --gate-window",
                p.window_ms,
                MAX_GATE_WINDOW.as_secs() / 3600
            ));
        }
        let prometheus_url = p.prometheus_url.trim().to_owned();
        if !prometheus_url.is_empty() {
            check_url(&prometheus_url)?;
        }
        Ok(Some(MetricGate {
            query: query.to_owned(),
            window_ms: if p.window_ms == 0 {
                DEFAULT_GATE_WINDOW.as_millis() as u64
            } else {
                p.window_ms
            },
            prometheus_url,
        }))
    }
}

/// A Prometheus base URL the gate can ask: `http://host[:port][/prefix]`.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(format!(
                "gate Prometheus URL {url}: https is not supported yet; give Prometheus's \
                 http:// address (e.g. its in-cluster service)"
            ));
        }
        return Err(format!(
            "gate Prometheus URL {url:?} is not an http:// URL; give e.g. http://prometheus:9090"
        ));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || host.contains('?') || host.contains('#') {
        return Err(format!(
            "gate Prometheus URL {url:?} has no usable host; give e.g. http://prometheus:9090"
        ));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "gate Prometheus URL {url:?} contains spaces or control characters; remove them"
        ));
    }
    Ok(())
}

/// A gate holding the next wave back: persisted in the rollout record while it evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateWait {
    /// The wave the gate follows (0: the canary).
    pub wave: u32,
    pub started_at_ms: i64,
    pub ends_at_ms: i64,
    pub evaluations: u32,
    pub remaining_ms: u64,
}

impl GateWait {
    pub fn to_proto(&self, gate: &MetricGate) -> pb::MetricGateWait {
        pb::MetricGateWait {
            wave: self.wave,
            query: gate.query.clone(),
            window_ms: gate.window_ms,
            started_at_unix_ms: self.started_at_ms,
            ends_at_unix_ms: self.ends_at_ms,
            evaluations: self.evaluations,
            remaining_ms: self.remaining_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(query: &str, window_ms: u64, url: &str) -> pb::MetricGate {
        pb::MetricGate {
            query: query.into(),
            window_ms,
            prometheus_url: url.into(),
        }
    }

    #[test]
    fn a_gate_without_a_query_is_none_unless_it_sets_something() {
        assert_eq!(MetricGate::from_proto(None), Ok(None));
        assert_eq!(MetricGate::from_proto(Some(&gate(" ", 0, ""))), Ok(None));
        let err = MetricGate::from_proto(Some(&gate("", 5000, ""))).unwrap_err();
        assert!(err.contains("--gate-query"), "{err}");
    }

    #[test]
    fn the_window_defaults_once_and_is_bounded() {
        let g = MetricGate::from_proto(Some(&gate("app_errors > 0", 0, "")))
            .unwrap()
            .unwrap();
        assert_eq!(g.window(), DEFAULT_GATE_WINDOW);
        let too_long = MAX_GATE_WINDOW.as_millis() as u64 + 1;
        let err = MetricGate::from_proto(Some(&gate("x", too_long, ""))).unwrap_err();
        assert!(err.contains("--gate-window"), "{err}");
        let long = "x".repeat(MAX_GATE_QUERY + 1);
        let err = MetricGate::from_proto(Some(&gate(&long, 0, ""))).unwrap_err();
        assert!(err.contains("--gate-query"), "{err}");
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        for ok in [
            "http://prometheus:9090",
            "http://127.0.0.1:9090/",
            "http://mon/prom",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("https://prometheus:9090", "https is not supported"),
            ("prometheus:9090", "not an http:// URL"),
            ("http:///api", "no usable host"),
            ("http://user@prom:9090", "no usable host"),
            ("http://prom:9090/a b", "spaces"),
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn evaluations_are_a_tenth_of_the_window_within_bounds() {
        assert_eq!(
            evaluation_interval(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            evaluation_interval(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        assert_eq!(
            evaluation_interval(Duration::from_secs(3600)),
            Duration::from_secs(15)
        );
    }
}
