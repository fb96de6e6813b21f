//! A server-streaming response inside its RPC's server span: the span is entered on every
//! poll and stays open until the stream ends (or the client drops it), so the server span
//! covers the whole stream and not only the call that returned it; an item that says the
//! work failed marks the span failed (`telemetry::record_failure`).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

/// Says whether a stream item reports a failure, and with which message.
pub type FailureOf<T> = fn(&T) -> Option<String>;

/// `inner`, polled inside `span`; see the module doc.
pub struct InSpan<S: Stream> {
    inner: S,
    /// `None` once the stream ended: the span closes then, not when tonic drops the stream.
    span: Option<tracing::Span>,
    failure_of: FailureOf<S::Item>,
}

impl<S: Stream> InSpan<S> {
    pub fn new(inner: S, span: tracing::Span, failure_of: FailureOf<S::Item>) -> Self {
        InSpan {
            inner,
            span: Some(span),
            failure_of,
        }
    }
}

impl<S: Stream + Unpin> Stream for InSpan<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let Some(span) = this.span.clone() else {
            return Poll::Ready(None);
        };
        let polled = span.in_scope(|| Pin::new(&mut this.inner).poll_next(cx));
        match &polled {
            Poll::Ready(Some(item)) => {
                if let Some(message) = (this.failure_of)(item) {
                    crate::telemetry::record_failure(&span, &message);
                }
            }
            Poll::Ready(None) => this.span = None,
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn the_stream_is_polled_inside_the_span_and_lets_it_go_at_its_end() {
        let span = tracing::info_span!("rpc");
        let items = futures::stream::iter(vec![Ok(1), Err("boom"), Ok(2)]);
        let mut s = InSpan::new(items, span, |item: &Result<i32, &str>| {
            item.as_ref().err().map(|e| e.to_string())
        });
        assert!(s.span.is_some());
        assert_eq!(s.next().await, Some(Ok(1)));
        assert_eq!(s.next().await, Some(Err("boom")));
        assert_eq!(s.next().await, Some(Ok(2)));
        assert_eq!(s.next().await, None);
        assert!(
            s.span.is_none(),
            "the span is released when the stream ends"
        );
        assert_eq!(s.next().await, None);
    }
}
