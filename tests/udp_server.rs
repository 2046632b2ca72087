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
async fn peers_over_the_limit_are_refused_until_a_session_expires() {
    let mut cfg = udp_config();
    cfg.max_conns = 1;
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(cfg, Counter).await;
    let a = client(&server).await;
    let b = client(&server).await;
    assert_eq!(ask(&a, b"x").await, b"1");
    let refusal = String::from_utf8(ask(&b, b"x").await).unwrap();
    assert_eq!(refusal, "error: server busy (1 peers), try again later");
    // A newcomer that sends lines is refused with a line.
    let refusal = String::from_utf8(ask(&b, b"x\n").await).unwrap();
    assert_eq!(refusal, "error: server busy (1 peers), try again later\n");
    // After a's session expires, b gets one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ask(&b, b"x").await, b"1");
    let report = server.stop().await.udp.unwrap();
    assert_eq!(report.refused, 2);
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
