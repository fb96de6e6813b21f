//! The listener both gRPC servers (agent and coordinator) accept connections on.

/// The accepted connections of `listener`, with `TCP_NODELAY` set on each. A server fed its
/// own listener ignores the builder's `tcp_nodelay`: without this, Nagle's algorithm holds a
/// small frame (a stream's last event, its trailers) until the peer ACKs the previous one,
/// and the peer's delayed ACK made every Migrate end about 20 ms late.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    /// Every connection the servers accept has Nagle's algorithm off.
    #[tokio::test]
    async fn accepted_connections_have_nodelay_set() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut accepted = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await?;
        let conn = accepted
            .next()
            .await
            .ok_or_else(|| std::io::Error::other("the listener ended"))??;
        assert!(
            conn.nodelay()?,
            "TCP_NODELAY is off on an accepted connection"
        );
        Ok(())
    }
}
