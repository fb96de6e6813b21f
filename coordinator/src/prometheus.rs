//! The Prometheus HTTP API client of the metric gate: one instant query
//! (`GET /api/v1/query`) and what its answer means (parsed here, unit-tested).
//!
//! Every way an answer can fail to say "nothing is wrong" is an error: an unreachable or
//! slow Prometheus, an HTTP error (a bad query is `400 bad_data`), a body that is not a
//! query result, or a result that is neither an instant vector nor a scalar. The gate never
//! reads an error as a pass.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::rollout::metric_gate::check_url;

/// How long one query may take, connecting included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a query returning more series than this holds is refused).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A query that did not produce a result the gate can judge.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    InvalidUrl(String),
    #[error(
        "prometheus at {url} cannot be reached: {}",
        flotilla_rpc::tls::error_chain(.source)
    )]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("prometheus at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("prometheus at {url}: reading its answer: {source}")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An error answer: `kind` is Prometheus's `errorType` (`bad_data` for a bad query).
    #[error("prometheus at {url} refused the query (HTTP {status}, {kind}): {message}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("prometheus at {url}: the answer is not a query result: {source}")]
    Malformed {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "prometheus at {url}: the query returns a {kind}, not an instant vector or a scalar; \
         write a query that returns one value per series (no range selector at the top)"
    )]
    Unsupported { url: String, kind: String },
}

impl QueryError {
    /// Whether the query itself is at fault (fix the query), not Prometheus's availability.
    pub fn is_bad_query(&self) -> bool {
        match self {
            QueryError::Refused { status, .. } => (400..500).contains(status),
            QueryError::Unsupported { .. } | QueryError::InvalidUrl(_) => true,
            _ => false,
        }
    }
}

/// One value of a query result: the series (empty labels for a scalar), the value as
/// Prometheus wrote it and parsed, and the evaluation time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub raw: String,
    pub value: f64,
    pub at_unix_ms: i64,
}

impl Sample {
    /// The series as PromQL writes it: `name{label="value",...}` (`scalar` for a scalar).
    pub fn series(&self) -> String {
        let name = self.labels.get("__name__").cloned().unwrap_or_default();
        let labels: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        if name.is_empty() && labels.is_empty() {
            return "scalar".into();
        }
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// A Prometheus server's query API.
#[derive(Debug, Clone)]
pub struct PrometheusClient {
    /// The base URL without a trailing slash.
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl PrometheusClient {
    /// A client of the Prometheus at `url` (`http://host[:port][/prefix]`).
    pub fn new(url: &str) -> Result<PrometheusClient, QueryError> {
        check_url(url).map_err(QueryError::InvalidUrl)?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(QUERY_TIMEOUT));
        http.set_nodelay(true);
        Ok(PrometheusClient {
            base: url.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(http),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Evaluate `query` now: its samples (none for an empty result).
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, QueryError> {
        let url = self.base.clone();
        let uri = format!("{}/api/v1/query?query={}", self.base, encode(query));
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| QueryError::InvalidUrl(format!("gate Prometheus URL {url}: {e}")))?;
        let call =
            async {
                let response = self.client.request(request).await.map_err(|source| {
                    QueryError::Unreachable {
                        url: url.clone(),
                        source,
                    }
                })?;
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(|source| QueryError::Body {
                        url: url.clone(),
                        source,
                    })?
                    .to_bytes();
                Ok::<_, QueryError>((status, body))
            };
        let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, call)
            .await
            .map_err(|_| QueryError::Timeout {
                url: url.clone(),
                timeout: QUERY_TIMEOUT,
            })??;
        parse_answer(&url, status, &body)
    }
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved bytes).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// What an answer of Prometheus's query API says (`status`: its HTTP status).
pub fn parse_answer(url: &str, status: u16, body: &[u8]) -> Result<Vec<Sample>, QueryError> {
    let malformed = |source| QueryError::Malformed {
        url: url.to_owned(),
        source,
    };
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) if !(200..300).contains(&status) => {
            let text = String::from_utf8_lossy(body);
            return Err(QueryError::Refused {
                url: url.to_owned(),
                status,
                kind: "no error type".into(),
                message: text.trim().chars().take(200).collect(),
            });
        }
        Err(e) => return Err(malformed(e)),
    };
    if answer.status != "success" || !(200..300).contains(&status) {
        return Err(QueryError::Refused {
            url: url.to_owned(),
            status,
            kind: if answer.error_type.is_empty() {
                answer.status
            } else {
                answer.error_type
            },
            message: answer.error,
        });
    }
    let Some(data) = answer.data else {
        return Err(QueryError::Unsupported {
            url: url.to_owned(),
            kind: "answer without data".into(),
        });
    };
    let sample = |labels, (at, raw): (f64, String)| Sample {
        labels,
        value: parse_value(&raw),
        raw,
        at_unix_ms: (at * 1000.0) as i64,
    };
    match data.result_type.as_str() {
        "vector" => {
            let rows: Vec<VectorSample> = serde_json::from_value(data.result).map_err(malformed)?;
            Ok(rows
                .into_iter()
                .map(|r| sample(r.metric, r.value))
                .collect())
        }
        "scalar" => {
            let value: (f64, String) = serde_json::from_value(data.result).map_err(malformed)?;
            Ok(vec![sample(BTreeMap::new(), value)])
        }
        other => Err(QueryError::Unsupported {
            url: url.to_owned(),
            kind: other.to_owned(),
        }),
    }
}

/// A sample value: Prometheus writes floats, `NaN`, `+Inf` and `-Inf` as strings. Anything
/// else reads as NaN, which is not 0, so the gate does not pass on it.
fn parse_value(raw: &str) -> f64 {
    raw.parse::<f64>().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://prom:9090";

    #[test]
    fn a_vector_answer_gives_its_samples() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"app_errors","instance":"127.0.0.1:1","job":"app"},"value":[1733499000.5,"3"]},
            {"metric":{},"value":[1733499000.5,"NaN"]}]}}"#;
        let samples = parse_answer(URL, 200, body).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[0].raw, "3");
        assert_eq!(samples[0].at_unix_ms, 1_733_499_000_500);
        assert_eq!(
            samples[0].series(),
            r#"app_errors{instance="127.0.0.1:1",job="app"}"#
        );
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[1].series(), "scalar");
    }

    #[test]
    fn empty_vectors_and_scalars_are_results() {
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_answer(URL, 200, empty).unwrap(), vec![]);
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"0"]}}"#;
        let samples = parse_answer(URL, 200, scalar).unwrap();
        assert_eq!(samples[0].value, 0.0);
    }

    #[test]
    fn errors_and_other_result_types_are_never_a_result() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"1:11: parse error: unexpected end of input"}"#;
        let err = parse_answer(URL, 400, bad).unwrap_err();
        assert!(err.is_bad_query());
        assert_eq!(
            err.to_string(),
            "prometheus at http://prom:9090 refused the query (HTTP 400, bad_data): 1:11: parse error: unexpected end of input"
        );
        let unavailable = parse_answer(URL, 503, b"Service Unavailable").unwrap_err();
        assert!(!unavailable.is_bad_query());
        assert!(
            unavailable.to_string().contains("HTTP 503"),
            "{unavailable}"
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let err = parse_answer(URL, 200, matrix).unwrap_err();
        assert!(err.to_string().contains("returns a matrix"), "{err}");
        assert!(matches!(
            parse_answer(URL, 200, b"<html>"),
            Err(QueryError::Malformed { .. })
        ));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode(r#"sum(rate(x{code=~"5.."}[1m])) > 0"#),
            "sum%28rate%28x%7Bcode%3D~%225..%22%7D%5B1m%5D%29%29%20%3E%200"
        );
    }
}
