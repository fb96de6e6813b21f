//! A metrics endpoint the test controls: one gauge, `app_errors`, whose value the test sets,
//! served at `/metrics` on a free loopback port for a real Prometheus to scrape.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

/// The exporter: serves until dropped (its connections end with it).
#[derive(Debug)]
pub struct Exporter {
    address: String,
    /// `f64` bits of the gauge's value.
    value: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts serving `app_errors 0` on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Exporter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the exporter to 127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        let value = Arc::new(AtomicU64::new(0f64.to_bits()));
        let served = value.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with the exporter.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let value = served.clone();
                let service = service_fn(move |_: Request<Incoming>| {
                    let body = text(f64::from_bits(value.load(Ordering::SeqCst)));
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        response.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Exporter {
            address,
            value,
            task,
        })
    }

    /// `127.0.0.1:PORT`, as a Prometheus scrape target.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sets the value every later scrape of `app_errors` reads.
    pub fn set_errors(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The exposition text of the gauge.
fn text(value: f64) -> String {
    format!(
        "# HELP app_errors Errors the application reports (set by the test).\n\
         # TYPE app_errors gauge\napp_errors {value}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_is_in_the_text_format() {
        assert_eq!(
            text(3.0),
            "# HELP app_errors Errors the application reports (set by the test).\n\
             # TYPE app_errors gauge\napp_errors 3\n"
        );
    }
}
