//! Forwarding with an injected one-way delay: every chunk read from one side is written to
//! the other side `delay` after it arrived, in order, so a proxy with 10 ms each way adds a
//! 20 ms round trip without limiting throughput (chunks in flight overlap, like a long link).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction before the reader waits for the writer (backpressure).
const IN_FLIGHT: usize = 256;
/// The largest chunk read at once.
const CHUNK: usize = 64 * 1024;

/// Forwards both directions of `client` <-> `server`, each chunk `delay` late, until both
/// sides finished (end of stream, forwarded as a half-close after the delay: `Ok`) or one
/// failed (`Err`).
pub(super) async fn copy_delayed(
    client: &mut TcpStream,
    server: &mut TcpStream,
    delay: Duration,
) -> std::io::Result<()> {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let up = one_way(client_read, server_write, delay);
    let down = one_way(server_read, client_write, delay);
    // Like copy_bidirectional: done when both directions are done, or at the first error.
    tokio::try_join!(up, down).map(|_| ())
}

/// One direction: a reader stamps each chunk with the time it is due, a writer waits for that
/// time and writes it. A `None` chunk is the end of stream.
async fn one_way<R, W>(mut from: R, mut to: W, delay: Duration) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(IN_FLIGHT);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = from.read(&mut buf).await?;
            let due = Instant::now() + delay;
            if n == 0 {
                let _ = tx.send((due, None)).await;
                return Ok::<(), std::io::Error>(());
            }
            buf.truncate(n);
            if tx.send((due, Some(buf))).await.is_err() {
                return Ok(()); // the writer failed; it reports the error
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Some(bytes) => to.write_all(&bytes).await?,
                None => {
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
