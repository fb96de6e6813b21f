//! eventually / eventually_true: values, timeouts, last observation.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use flotilla_testkit::{eventually, eventually_true};

#[tokio::test]
async fn returns_the_first_value() -> anyhow::Result<()> {
    let calls = AtomicU32::new(0);
    let value = eventually("third call", Duration::from_secs(5), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((n >= 3).then_some(n))
    })
    .await?;
    assert_eq!(value, 3);
    Ok(())
}

#[tokio::test]
async fn timeout_names_what_and_the_last_error() {
    let err = eventually::<(), _, _>("the answer", Duration::from_millis(100), || async {
        Err(anyhow!("still 41"))
    })
    .await
    .expect_err("must time out");
    let text = format!("{err:#}");
    assert!(text.contains("the answer"), "{text}");
    assert!(text.contains("still 41"), "{text}");
}

#[tokio::test]
async fn a_hanging_attempt_is_bounded_by_the_deadline() {
    let start = Instant::now();
    let result = eventually_true("never", Duration::from_millis(200), || {
        std::future::pending::<anyhow::Result<bool>>()
    })
    .await;
    assert!(result.is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn eventually_true_waits_for_true() -> anyhow::Result<()> {
    let calls = AtomicU32::new(0);
    eventually_true("second call", Duration::from_secs(5), || async {
        Ok(calls.fetch_add(1, Ordering::SeqCst) >= 1)
    })
    .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    Ok(())
}
