//! Raw-socket clients and a bounded wait for tests of the engine's server loop; the
//! queue-proxy's tests include this file too (their `common`).
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any test waits for something that should happen.
pub const BOUND: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds, failing the test after [`BOUND`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `bytes` on a fresh connection and reads until the server closes it.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    read_to_close(&mut tcp).await
}

/// Reads until the server closes the connection (a reset counts as closed).
pub async fn read_to_close(tcp: &mut TcpStream) -> String {
    read_to_close_within(tcp, BOUND).await
}

pub async fn read_to_close_within(tcp: &mut TcpStream, bound: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(bound, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server kept the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until `want` has arrived.
pub async fn read_until(tcp: &mut TcpStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(BOUND, async {
        while !String::from_utf8_lossy(&got).contains(want) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {want:?}: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} in time"));
    String::from_utf8_lossy(&got).into_owned()
}
