//! Loopback tests of the UDP server: one reply per datagram to the right sender, per-peer
//! sessions, quit words, the peer limit, expiry and pushes.

mod common;

use std::time::Duration;

use common::*;
use sockit::{Ack, Echo, Message, Outbox, PeerInfo, ServerConfig, Service, Session, Transport};
use tokio::net::UdpSocket;

fn udp_config() -> ServerConfig {
    ServerConfig {
        transport: Transport::Udp,
        framing: sockit::Framing::Raw,
        ..ServerConfig::default()
    }
}

async fn client(server: &TestServer) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server.addr).await.unwrap();
    sock
}

async fn ask(sock: &UdpSocket, msg: &[u8]) -> Vec<u8> {
    sock.send(msg).await.unwrap();
    recv(sock).await
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(PATIENCE, sock.recv(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn every_datagram_gets_its_echo_at_its_own_sender() {
    let server = TestServer::start(udp_config(), Echo).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let sock = client(&server).await;
        tasks.push(tokio::spawn(async move {
            for j in 0..10 {
                let msg = format!("client {i} message {j}");
                assert_eq!(ask(&sock, msg.as_bytes()).await, msg.as_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = server.stop().await.udp.unwrap();
    assert_eq!(report.datagrams_in, 200);
    assert_eq!(report.peers, 20);
}

#[tokio::test]
async fn ack_receipts_count_bytes_and_follow_the_newline_habit() {
    let server = TestServer::start(udp_config(), Ack).await;
    let sock = client(&server).await;
    let reply = String::from_utf8(ask(&sock, b"hello").await).unwrap();
    assert!(!reply.ends_with('\n'), "{reply:?}");
    assert_receipt(&reply, 5);
    let reply = String::from_utf8(ask(&sock, b"hello\n").await).unwrap();
    assert!(reply.ends_with('\n'), "{reply:?}");
    assert_receipt(&reply, 6);
    let reply = String::from_utf8(ask(&sock, b"\xff\xfe").await).unwrap();
    assert_receipt(&reply, 2);
    server.stop().await;
}

#[tokio::test]
async fn the_largest_ipv4_datagram_and_an_empty_one_are_echoed() {
    let server = TestServer::start(udp_config(), Echo).await;
    let sock = client(&server).await;
    let big = vec![0xabu8; sockit::codec::MAX_DATAGRAM];
    assert_eq!(ask(&sock, &big).await, big);
    assert_eq!(ask(&sock, b"").await, b"");
    server.stop().await;
}

/// Replies with how many messages this session has seen: shows when a session is new.
struct Counter;
struct CounterSession(u32);

impl Service for Counter {
    type Session = CounterSession;
    fn open(&self, _peer: &PeerInfo) -> CounterSession {
        CounterSession(0)
    }
}

impl Session for CounterSession {
    async fn on_message(&mut self, _msg: Message, out: &mut Outbox) {
        self.0 += 1;
        out.send(Message::text(self.0.to_string()));
    }
}

#[tokio::test]
async fn each_peer_has_its_own_session_until_it_says_bye() {
    let server = TestServer::start(udp_config(), Counter).await;
    let a = client(&server).await;
    let b = client(&server).await;
    assert_eq!(ask(&a, b"x").await, b"1");
    assert_eq!(ask(&a, b"x").await, b"2");
    assert_eq!(ask(&b, b"x").await, b"1");
    assert_eq!(ask(&a, b" QUIT ").await, b"bye");
    assert_eq!(ask(&a, b"x").await, b"1", "a new session after bye");
    assert_eq!(ask(&b, b"x").await, b"2");
    server.stop().await;
}

#[tokio::test]
async fn a_full_peer_table_evicts_the_least_recently_active_peer() {
    let mut cfg = udp_config();
    cfg.max_conns = 2;
    let server = TestServer::start(cfg, Counter).await;
    let (a, b, c) = (
        client(&server).await,
        client(&server).await,
        client(&server).await,
    );
    assert_eq!(ask(&a, b"x").await, b"1");
    assert_eq!(ask(&b, b"x").await, b"1");
    assert_eq!(ask(&a, b"x").await, b"2", "a is now the most recent");
    // The newcomer is served; b, the least recently active, makes room.
    assert_eq!(ask(&c, b"x").await, b"1");
    assert_eq!(ask(&a, b"x").await, b"3", "a kept its session");
    assert_eq!(ask(&b, b"x").await, b"1", "b starts over");
    let report = server.stop().await.udp.unwrap();
    assert_eq!(report.evicted, 2);
    assert_eq!(report.peers, 4);
}

#[tokio::test]
async fn a_real_client_is_answered_during_a_flood_of_source_ports() {
    let mut cfg = udp_config();
    cfg.max_conns = 100;
    let server = TestServer::start(cfg, Counter).await;
    let real = client(&server).await;
    assert_eq!(ask(&real, b"x").await, b"1");
    // 2,000 one-off source ports, twenty times the table, sending without reading.
    for _ in 0..20 {
        let mut flood = Vec::new();
        for _ in 0..100 {
            let s = client(&server).await;
            s.send(b"junk").await.unwrap();
            flood.push(s);
        }
        // Still answered (with a fresh session if the flood pushed it out).
        assert!(!ask(&real, b"x").await.is_empty());
    }
    let report = server.stop().await.udp.unwrap();
    assert!(report.evicted >= 1900, "{report:?}");
}

#[tokio::test]
async fn the_reply_rate_limit_caps_replies_per_source_address() {
    let mut cfg = udp_config();
    cfg.udp_rate = Some(5);
    let server = TestServer::start(cfg, Echo).await;
    let sock = client(&server).await;
    for i in 0..50 {
        sock.send(format!("{i}").as_bytes()).await.unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 64];
    while tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf))
        .await
        .is_ok()
    {
        got += 1;
    }
    // A burst of 5, plus whatever the bucket refilled while the 50 datagrams were handled.
    assert!((5..=10).contains(&got), "{got} replies of 50");
    let report = server.stop().await.udp.unwrap();
    assert_eq!(report.rate_limited, 50 - got);
}

/// Greets on open and pushes a second message from another task.
struct Pusher;
struct PusherSession;

impl Service for Pusher {
    type Session = PusherSession;
    fn open(&self, _peer: &PeerInfo) -> PusherSession {
        PusherSession
    }
}

impl Session for PusherSession {
    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        let handle = out.handle();
        out.send(msg);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            handle.send(Message::new("pushed later")).await.unwrap();
        });
    }
}

#[tokio::test]
async fn sessions_can_push_datagrams_to_their_peer() {
    let server = TestServer::start(udp_config(), Pusher).await;
    let sock = client(&server).await;
    assert_eq!(ask(&sock, b"hi").await, b"hi");
    assert_eq!(recv(&sock).await, b"pushed later");
    server.stop().await;
}

#[tokio::test]
async fn a_burst_larger_than_one_receive_batch_loses_nothing() {
    let server = TestServer::start(udp_config(), Echo).await;
    let sock = client(&server).await;
    // Well within the default socket buffers, but more than the server handles per wake-up.
    const BURST: usize = 150;
    for i in 0..BURST {
        sock.send(format!("{i:04}").as_bytes()).await.unwrap();
    }
    let mut got: Vec<Vec<u8>> = Vec::new();
    for _ in 0..BURST {
        got.push(recv(&sock).await);
    }
    got.sort();
    let want: Vec<Vec<u8>> = (0..BURST).map(|i| format!("{i:04}").into_bytes()).collect();
    assert_eq!(got, want);
    server.stop().await;
}
