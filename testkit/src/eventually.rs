//! Waiting for a condition with a deadline, instead of sleeping in tests.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `f` until it returns `Ok(Some(value))` and returns that value.
///
/// `Ok(None)` and `Err(_)` mean "not yet"; polls back off from 10 ms to 200 ms. Each call of `f`
/// is also bounded by the deadline. On timeout the error names `what` and the last observation
/// (the last error, or that `f` kept returning `None`).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    let mut attempts = 0u64;
    loop {
        let remaining = deadline.saturating_sub(start.elapsed());
        attempts += 1;
        let last = match tokio::time::timeout(remaining, f()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => String::from("condition not met yet (None)"),
            Ok(Err(e)) => format!("error: {e:#}"),
            Err(_) => String::from("the last attempt was still running at the deadline"),
        };
        let remaining = deadline.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            bail!(
                "timed out after {deadline:?} waiting for {what} ({attempts} attempts); last observation: {last}"
            );
        }
        tokio::time::sleep(pause.min(remaining)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Like [`eventually`] for a condition that returns `Ok(true)` when met.
pub async fn eventually_true<F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    eventually(what, deadline, || {
        let fut = f();
        async move { Ok(fut.await?.then_some(())) }
    })
    .await
}
