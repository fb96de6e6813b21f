//! FaultProxy's injected delay: bytes both ways arrive intact and in order, ends of stream
//! are forwarded, and a round trip takes at least the two one-way delays.

use std::time::{Duration, Instant};

use flotilla_testkit::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP echo server on loopback: echoes every connection until its end of stream, then
/// closes its side.
async fn echo_server() -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// 2 MiB in chunks of varying sizes, each byte numbered, so a reordered, lost or repeated
/// chunk shows as a mismatch.
fn payload() -> Vec<u8> {
    (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

#[tokio::test]
async fn delayed_bytes_arrive_intact_and_in_order_both_ways() -> anyhow::Result<()> {
    let proxy = FaultProxy::start(echo_server().await?).await?;
    proxy.set_delay(Duration::from_millis(5));
    let conn = TcpStream::connect(proxy.addr()).await?;
    let (mut r, mut w) = conn.into_split();
    let sent = payload();
    let to_send = sent.clone();
    // Write in chunks of 1..=16 KiB while the echo flows back, then end the stream.
    let writer = tokio::spawn(async move {
        let mut at = 0;
        let mut size = 1;
        while at < to_send.len() {
            let end = (at + size).min(to_send.len());
            w.write_all(&to_send[at..end]).await?;
            at = end;
            size = size % (16 * 1024) + 997;
        }
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut received = Vec::new();
    // read_to_end returns only once the echo server's end of stream came through the proxy.
    r.read_to_end(&mut received).await?;
    writer.await??;
    assert_eq!(received.len(), sent.len(), "bytes lost or added on the way");
    let first_diff = received.iter().zip(&sent).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "bytes reordered or changed");
    Ok(())
}

#[tokio::test]
async fn a_round_trip_takes_at_least_both_delays_and_zero_turns_it_off() -> anyhow::Result<()> {
    let proxy = FaultProxy::start(echo_server().await?).await?;
    proxy.set_delay(Duration::from_millis(10));
    let mut conn = TcpStream::connect(proxy.addr()).await?;
    conn.set_nodelay(true)?;
    for round in 0u8..3 {
        let t0 = Instant::now();
        conn.write_all(&[round; 3]).await?;
        let mut back = [0u8; 3];
        conn.read_exact(&mut back).await?;
        assert_eq!(back, [round; 3]);
        // One delay each way: a lower bound only (the machine may be slower, never faster).
        assert!(
            t0.elapsed() >= Duration::from_millis(20),
            "round trip {round} took {:?}, less than the 20 ms the delays add",
            t0.elapsed()
        );
    }
    // Connections accepted after the delay is set back to zero are forwarded as before.
    proxy.set_delay(Duration::ZERO);
    let mut plain = TcpStream::connect(proxy.addr()).await?;
    plain.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    plain.read_exact(&mut back).await?;
    assert_eq!(&back, b"ping");
    Ok(())
}
