//! The rudp tokio driver on real loopback sockets (127.0.0.1, port 0).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sockit::rudp::{CloseReason, Config, EndpointConfig, EndpointStats};
use sockit::transport::rudp::{RudpServer, connect};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts an echo server (every accepted connection sends back what it receives); returns its
/// address and a task that yields the endpoint's counters once `shutdown` is cancelled.
async fn echo_server(shutdown: CancellationToken) -> (SocketAddr, JoinHandle<EndpointStats>) {
    let mut server = RudpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointConfig::default(),
        shutdown.clone(),
    )
    .await
    .expect("bind");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                c = server.accept() => {
                    let Some(mut conn) = c else { break };
                    tokio::spawn(async move {
                        while let Some(m) = conn.recv().await {
                            if conn.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                _ = shutdown.cancelled() => break,
            }
        }
        server.finish().await
    });
    (addr, task)
}

fn msg(conn: u32, i: u32, size: usize) -> Bytes {
    let mut m = conn.to_be_bytes().to_vec();
    m.extend_from_slice(&i.to_be_bytes());
    m.extend((8..size.max(8)).map(|k| (k as u32 ^ conn ^ i) as u8));
    Bytes::from(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_of_large_and_small_messages_then_close() {
    let shutdown = CancellationToken::new();
    let (addr, server) = echo_server(shutdown.clone()).await;
    let mut c = connect(addr, Config::default()).await.expect("connect");
    assert_eq!(c.peer_addr(), addr);
    let sizes = [0usize, 8, 1200, 5000, 1 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        let m = if n == 0 {
            Bytes::new()
        } else {
            msg(1, i as u32, n)
        };
        c.send(m.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(20), c.recv())
            .await
            .expect("echo in time")
            .expect("open");
        assert!(back == m, "message {i} ({n} bytes) differs");
    }
    assert_eq!(
        c.send(Bytes::from(vec![0; (1 << 20) + 1])).await,
        Err(sockit::rudp::SendError::TooLarge((1 << 20) + 1))
    );
    c.close();
    let end = tokio::time::timeout(Duration::from_secs(10), c.recv()).await;
    assert_eq!(end.expect("closed in time"), None);
    assert_eq!(c.close_reason(), Some(CloseReason::Local));
    c.finished().await;
    shutdown.cancel();
    let stats = server.await.unwrap();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_on_one_socket() {
    // RUDP_N overrides the count when investigating.
    let n: u32 = std::env::var("RUDP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let shutdown = CancellationToken::new();
    let (addr, server) = echo_server(shutdown.clone()).await;
    let mut tasks = Vec::new();
    let t0 = std::time::Instant::now();
    for id in 0..n {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr, Config::default())
                .await
                .unwrap_or_else(|e| panic!("connection {id}: {e}"));
            for i in 0..5u32 {
                c.send(msg(id, i, 8 + (i as usize * 700))).await.unwrap();
            }
            for i in 0..5u32 {
                let back = c
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("connection {id} ended"));
                assert!(
                    back == msg(id, i, 8 + (i as usize * 700)),
                    "connection {id} message {i}"
                );
            }
            c
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("all connections done in time")
                .unwrap(),
        );
    }
    for c in &conns {
        c.close();
    }
    for (k, mut c) in conns.into_iter().enumerate() {
        let end = tokio::time::timeout(Duration::from_secs(20), c.recv()).await;
        assert_eq!(
            end.unwrap_or_else(|_| panic!("{k} closed in time {:?} {:?}", t0.elapsed(), c)),
            None
        );
        assert_eq!(c.close_reason(), Some(CloseReason::Local));
    }
    shutdown.cancel();
    let stats = server.await.unwrap();
    assert_eq!(stats.accepted, u64::from(n));
    // Every client saw its close acknowledged (above); server connections linger (draining,
    // at least 1 s) and the ones still lingering when the server stops are not counted.
    assert!(stats.closed <= u64::from(n));
    assert_eq!(stats.invalid_tokens, 0);
    assert_eq!(
        stats.unknown_connection + stats.wrong_address + stats.malformed,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_times_out_with_a_clear_error() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cfg = Config {
        idle_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let err = connect(addr, cfg).await.expect_err("nobody answers");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_closes_its_connections() {
    let shutdown = CancellationToken::new();
    let (addr, server) = echo_server(shutdown.clone()).await;
    let mut c = connect(addr, Config::default()).await.unwrap();
    c.send(msg(1, 1, 100)).await.unwrap();
    assert_eq!(c.recv().await, Some(msg(1, 1, 100)));
    shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(10), c.recv()).await;
    assert_eq!(end.expect("closed in time"), None);
    assert_eq!(c.close_reason(), Some(CloseReason::Peer));
    let stats = server.await.unwrap();
    assert_eq!(stats.accepted, 1);
}

/// A UDP relay between one client and `server` that drops `loss` of the datagrams in each
/// direction and delays each survivor by 0–`jitter_ms` ms independently (so they reorder).
async fn lossy_relay(server: SocketAddr, loss: f64, jitter_ms: u64, seed: u64) -> SocketAddr {
    use std::sync::Arc;
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut rng = sockit::rudp::rng::Rng::new(seed);
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let to = if from == server {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server
            };
            if rng.chance(loss) {
                continue;
            }
            let delay = Duration::from_millis(rng.range_u64(0, jitter_ms));
            let data = buf[..n].to_vec();
            let s = sock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = s.send_to(&data, to).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_relay_dropping_10_percent_and_reordering_every_message_arrives_once_in_order() {
    let shutdown = CancellationToken::new();
    let (addr, server) = echo_server(shutdown.clone()).await;
    let relay = lossy_relay(addr, 0.10, 15, 7).await;
    let mut c = connect(relay, Config::default())
        .await
        .expect("connect through the relay");
    let sent: Vec<Bytes> = (0..200u32)
        .map(|i| msg(9, i, 8 + (i as usize * 97) % 3000))
        .collect();
    for m in &sent {
        c.send(m.clone()).await.unwrap();
    }
    for (i, want) in sent.iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .unwrap_or_else(|_| panic!("echo {i} in time"))
            .expect("open");
        assert!(got == want, "echo {i} out of order or corrupted");
    }
    c.close();
    let end = tokio::time::timeout(Duration::from_secs(20), c.recv()).await;
    assert_eq!(end.expect("closed in time"), None);
    shutdown.cancel();
    server.await.unwrap();
}
