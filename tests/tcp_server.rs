//! Loopback tests of the TCP server through the library API: replies, framings, every bad
//! input the server must survive, limits, timeouts, pushes and shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sockit::{
    Ack, ConnHandle, Echo, Limits, Message, Outbox, PeerInfo, ServerConfig, Service, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(framing: &str) -> ServerConfig {
    ServerConfig {
        framing: framing.parse().unwrap(),
        ..ServerConfig::default()
    }
}

/// Asserts that `other` still gets answers: the server survived whatever happened before.
async fn assert_still_serving(server: &TestServer) {
    let mut other = server.connect().await;
    assert_eq!(round_trip(&mut other, "still there?").await, "still there?");
}

#[tokio::test]
async fn echo_answers_each_line_in_order() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut c = server.connect().await;
    for line in ["hello", "", "  spaced  ", "你好"] {
        assert_eq!(round_trip(&mut c, line).await, line);
    }
    server.stop().await;
}

#[tokio::test]
async fn crlf_lines_are_answered_with_crlf() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut c = server.connect().await;
    c.write_all(b"telnet\r\n").await.unwrap();
    assert_eq!(read_exact(&mut c, 8).await, b"telnet\r\n");
    server.stop().await;
}

#[tokio::test]
async fn ack_receipt_has_timestamp_and_byte_count() {
    let server = TestServer::start(config("line"), Ack).await;
    let mut c = server.connect().await;
    let reply = round_trip(&mut c, "hello").await;
    assert_receipt(&reply, 5);
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_is_echoed_as_bytes_and_counted_by_ack() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut c = server.connect().await;
    c.write_all(b"\xff\xfe\xc3(\n").await.unwrap();
    assert_eq!(read_line(&mut c).await, b"\xff\xfe\xc3(");
    server.stop().await;

    let server = TestServer::start(config("line"), Ack).await;
    let mut c = server.connect().await;
    c.write_all(b"\xff\xfe\xc3(\n").await.unwrap();
    let reply = String::from_utf8(read_line(&mut c).await).unwrap();
    assert_receipt(&reply, 4);
    server.stop().await;
}

#[tokio::test]
async fn quit_words_get_bye_and_the_connection_closes() {
    let server = TestServer::start(config("line"), Echo).await;
    for word in ["bye", "QUIT", "  Bye \r"] {
        let mut c = server.connect().await;
        assert_eq!(round_trip(&mut c, "first").await, "first");
        c.write_all(format!("{word}\n").as_bytes()).await.unwrap();
        let rest = read_to_eof(&mut c).await;
        let rest = String::from_utf8(rest).unwrap();
        assert_eq!(rest.trim_end(), "bye", "{word:?}");
    }
    // "bye" inside a longer message is just a message.
    let mut c = server.connect().await;
    assert_eq!(round_trip(&mut c, "bye bye").await, "bye bye");
    server.stop().await;
}

#[tokio::test]
async fn a_hundred_frames_in_one_write_get_a_hundred_replies_in_order() {
    for framing in ["line", "len32", "len16le", "header"] {
        let server = TestServer::start(config(framing), Echo).await;
        let mut codec = sockit::FrameCodec::new(framing.parse().unwrap(), Limits::default());
        let mut wire = bytes::BytesMut::new();
        for i in 0..100 {
            tokio_util::codec::Encoder::encode(
                &mut codec,
                &Message::new(format!("message {i}")),
                &mut wire,
            )
            .unwrap();
        }
        let mut c = server.connect().await;
        c.write_all(&wire).await.unwrap();
        // Echo: the replies are byte for byte what was sent.
        assert_eq!(read_exact(&mut c, wire.len()).await, wire, "{framing}");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_frame_arriving_one_byte_per_read_is_reassembled() {
    for (framing, wire) in [
        ("len32", len32(b"slowly, byte by byte")),
        ("line", b"slowly, byte by byte\n".to_vec()),
    ] {
        let server = TestServer::start(config(framing), Echo).await;
        let mut c = server.connect().await;
        for b in &wire {
            c.write_all(&[*b]).await.unwrap();
            // Give the server time to read each byte on its own.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(read_exact(&mut c, wire.len()).await, wire, "{framing}");
        server.stop().await;
    }
}

#[tokio::test]
async fn an_oversized_length_prefix_closes_only_that_connection_with_an_error_frame() {
    let mut cfg = config("len32");
    cfg.limits.max_frame = 1024;
    let server = TestServer::start(cfg, Echo).await;
    let mut bad = server.connect().await;
    let mut good = server.connect().await;
    bad.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let error = read_len32(&mut bad).await;
    assert_eq!(
        String::from_utf8(error).unwrap(),
        "error: frame of 4294967295 bytes exceeds the limit of 1024 bytes"
    );
    assert!(read_to_eof(&mut bad).await.is_empty());
    good.write_all(&len32(b"fine")).await.unwrap();
    assert_eq!(read_len32(&mut good).await, b"fine");
    server.stop().await;
}

#[tokio::test]
async fn a_frame_at_the_limit_is_accepted() {
    let mut cfg = config("len32");
    cfg.limits.max_frame = 100_000;
    let server = TestServer::start(cfg, Echo).await;
    let mut c = server.connect().await;
    let body = vec![b'z'; 100_000];
    c.write_all(&len32(&body)).await.unwrap();
    assert_eq!(read_len32(&mut c).await, body);
    server.stop().await;
}

#[tokio::test]
async fn a_line_over_the_limit_closes_that_connection_with_an_error_line() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut bad = server.connect().await;
    let long = vec![b'a'; 64 * 1024 + 10];
    // The server may close before reading it all; a failed write is fine.
    let _ = bad.write_all(&long).await;
    let reply = String::from_utf8(read_to_eof(&mut bad).await).unwrap();
    assert_eq!(reply, "error: line exceeds the limit of 65536 bytes\n");
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_line_of_exactly_the_limit_is_echoed() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut c = server.connect().await;
    let line = "b".repeat(64 * 1024);
    assert_eq!(round_trip(&mut c, &line).await, line);
    server.stop().await;
}

#[tokio::test]
async fn malformed_headers_close_the_connection_with_a_reason() {
    let server = TestServer::start(config("header"), Echo).await;
    for (header, reason) in [
        ("this is not json", "header is not a JSON object"),
        (r#"{"name":"a.txt"}"#, "header lacks \"len\""),
        (
            r#"{"len":-1}"#,
            "header \"len\" is not a non-negative integer",
        ),
        (r#"["len", 3]"#, "header is not a JSON object"),
    ] {
        let mut c = server.connect().await;
        c.write_all(&len32(header.as_bytes())).await.unwrap();
        let reply = read_to_eof(&mut c).await;
        // The reply is itself a header frame: 4-byte length, {"len":N}, then the text.
        let hlen = u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize;
        let text = String::from_utf8_lossy(&reply[4 + hlen..]);
        assert!(text.starts_with(&format!("error: {reason}")), "{text}");
    }
    assert_still_serving_header(&server).await;
    server.stop().await;
}

async fn assert_still_serving_header(server: &TestServer) {
    let mut c = server.connect().await;
    let header = br#"{"len":2,"name":"x"}"#;
    let mut frame = len32(header);
    frame.extend_from_slice(b"ok");
    c.write_all(&frame).await.unwrap();
    assert_eq!(read_exact(&mut c, frame.len()).await, frame);
}

#[tokio::test]
async fn eof_in_the_middle_of_a_frame_is_survived() {
    let server = TestServer::start(config("len32"), Echo).await;
    let mut c = server.connect().await;
    c.write_all(&[0, 0, 0, 10, b'a', b'b']).await.unwrap();
    c.shutdown().await.unwrap();
    let reply = read_to_eof(&mut c).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("closed in the middle of a frame"),
        "{reply:?}"
    );
    let mut other = server.connect().await;
    other.write_all(&len32(b"next")).await.unwrap();
    assert_eq!(read_len32(&mut other).await, b"next");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_frame_does_not_disturb_others() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut watcher = server.connect().await;
    for _ in 0..20 {
        let c = server.connect().await;
        c.try_write(b"half a li").unwrap();
        // Close with a reset rather than a FIN: the rudest way to vanish.
        let std = c.into_std().unwrap();
        socket_reset(std);
    }
    assert_eq!(round_trip(&mut watcher, "unaffected").await, "unaffected");
    assert_still_serving(&server).await;
    server.stop().await;
}

fn socket_reset(stream: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

#[tokio::test]
async fn a_silent_client_does_not_block_others() {
    let server = TestServer::start(config("line"), Echo).await;
    let _silent = server.connect().await;
    let _half = {
        let mut c = server.connect().await;
        c.write_all(b"unfinished").await.unwrap();
        c
    };
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_delay_others() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut flooder = server.connect().await;
    // Send far more than the socket buffers hold without ever reading the echoes; the server
    // blocks writing to this client only.
    let flood = tokio::spawn(async move {
        let chunk = vec![b'x'; 1000];
        let mut line = chunk.clone();
        line.push(b'\n');
        let mut sent = 0usize;
        while sent < 64 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_millis(500), flooder.write_all(&line)).await {
                Ok(Ok(())) => sent += line.len(),
                _ => break,
            }
        }
        (flooder, sent)
    });
    let (flooder, sent) = flood.await.unwrap();
    assert!(sent < 64 * 1024 * 1024, "the server applied back-pressure");
    for i in 0..5 {
        let mut c = server.connect().await;
        assert_eq!(
            round_trip(&mut c, &format!("ping {i}")).await,
            format!("ping {i}")
        );
    }
    drop(flooder);
    server.stop().await;
}

#[tokio::test]
async fn clients_over_max_conns_get_a_one_line_refusal() {
    let mut cfg = config("line");
    cfg.max_conns = 2;
    let server = TestServer::start(cfg, Echo).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_eq!(round_trip(&mut a, "a").await, "a");
    assert_eq!(round_trip(&mut b, "b").await, "b");
    for _ in 0..3 {
        let mut refused = server.connect().await;
        let text = String::from_utf8(read_to_eof(&mut refused).await).unwrap();
        assert_eq!(
            text,
            "error: server busy (2 connections open), try again later\n"
        );
    }
    // A slot frees up when a client leaves.
    drop(a);
    let mut c = None;
    for _ in 0..100 {
        let mut attempt = server.connect().await;
        attempt.write_all(b"in\n").await.unwrap();
        let got = read_to_eof_or_line(&mut attempt).await;
        if got == "in" {
            c = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.is_some(), "a new client is admitted after one leaves");
    assert_eq!(round_trip(&mut b, "b again").await, "b again");
    let report = server.stop().await;
    assert!(report.refused >= 3, "{report:?}");
}

#[tokio::test]
async fn a_refused_client_that_already_sent_data_still_reads_the_refusal() {
    // Closing a socket with unread input makes the kernel answer with a reset, which destroys
    // the refusal line before the client reads it. The refusal must be drained instead.
    let mut cfg = config("line");
    cfg.max_conns = 1;
    let server = TestServer::start(cfg, Echo).await;
    let mut holder = server.connect().await;
    assert_eq!(round_trip(&mut holder, "hold").await, "hold");
    for i in 0..20 {
        let mut refused = server.connect().await;
        refused
            .write_all(
                format!("request {i} sent before reading\n")
                    .repeat(50)
                    .as_bytes(),
            )
            .await
            .unwrap();
        // Let the server refuse and close before the client reads anything.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(PATIENCE, refused.read_to_end(&mut got)).await;
        let read = read.expect("the refused connection is closed within the patience");
        assert!(read.is_ok(), "attempt {i}: {read:?} after {got:?}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "error: server busy (1 connections open), try again later\n",
            "attempt {i}"
        );
    }
    drop(holder);
    let report = server.stop().await;
    assert_eq!(report.refused, 20, "{report:?}");
}

async fn read_to_eof_or_line(c: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(Ok(1)) = tokio::time::timeout(PATIENCE, c.read(&mut byte)).await {
        if byte[0] == b'\n' {
            break;
        }
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let mut cfg = config("line");
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(cfg, Echo).await;
    let mut c = server.connect().await;
    assert_eq!(round_trip(&mut c, "active").await, "active");
    let text = String::from_utf8(read_to_eof(&mut c).await).unwrap();
    assert_eq!(text, "error: idle timeout (0.3s without a message)\n");
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_frame_is_closed_after_the_frame_timeout() {
    let mut cfg = config("len32");
    cfg.frame_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(cfg, Echo).await;
    let mut idle = server.connect().await;
    let mut stalled = server.connect().await;
    stalled.write_all(&[0, 0, 0, 9, b'x']).await.unwrap();
    let reply = read_to_eof(&mut stalled).await;
    assert_eq!(
        &reply[4..],
        b"error: frame timeout (an unfinished frame took over 0.3s, too slowly)"
    );
    // A connection between frames is idle, not stalled: the frame timeout leaves it alone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    idle.write_all(&len32(b"alive")).await.unwrap();
    assert_eq!(read_len32(&mut idle).await, b"alive");
    server.stop().await;
}

#[tokio::test]
async fn a_frame_trickling_in_below_the_minimum_rate_is_closed_despite_progress() {
    let mut cfg = config("len32");
    cfg.frame_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(cfg, Echo).await;
    let mut slow = server.connect().await;
    slow.write_all(&[0, 0, 0, 100]).await.unwrap();
    // One byte every 50 ms: progress, but far below 1 KiB/s. The old timer restarted on
    // every byte and never fired.
    let mut closed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if slow.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            let text = String::from_utf8_lossy(&probe[..n]).into_owned();
            assert!(text.contains("error: frame timeout"), "{text:?}");
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a slowloris sender outlived 3 s of a 0.3 s frame timeout"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_frame_arriving_faster_than_the_minimum_rate_may_outlast_the_frame_timeout() {
    let mut cfg = config("len32");
    cfg.frame_timeout = Some(Duration::from_millis(200));
    cfg.min_rate = Some(16 * 1024);
    let server = TestServer::start(cfg, Echo).await;
    let mut c = server.connect().await;
    let body = vec![b'z'; 64 * 1024];
    let frame = len32(&body);
    // About 80 KiB/s over ~0.8 s: four times the frame timeout, five times the minimum rate.
    for chunk in frame.chunks(4096) {
        c.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read_len32(&mut c).await, body);
    server.stop().await;
}

#[tokio::test]
async fn the_idle_timeout_counts_from_the_last_complete_message_not_the_last_byte() {
    let mut cfg = config("line");
    cfg.frame_timeout = None;
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(cfg, Echo).await;
    let mut c = server.connect().await;
    let mut reply = Vec::new();
    for _ in 0..40 {
        if c.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 128];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
            reply.extend_from_slice(&buf[..n]);
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(text.starts_with("error: idle timeout"), "{text:?}");
    server.stop().await;
}

#[tokio::test]
async fn without_a_frame_timeout_a_stalled_frame_falls_under_the_idle_timeout() {
    let mut cfg = config("len32");
    cfg.frame_timeout = None;
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let server = TestServer::start(cfg, Echo).await;
    let mut stalled = server.connect().await;
    stalled.write_all(&[0, 0, 0, 9, b'x']).await.unwrap();
    let reply = read_to_eof(&mut stalled).await;
    assert_eq!(&reply[4..], b"error: idle timeout (0.3s without a message)");
    server.stop().await;
}

#[tokio::test]
async fn raw_framing_serves_undelimited_tutorial_clients() {
    let server = TestServer::start(config("raw"), Ack).await;
    let mut c = server.connect().await;
    c.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    let reply = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(
        reply.starts_with("ack ") && reply.ends_with(" 5 bytes"),
        "{reply:?}"
    );
    // A peer that ends its messages with newlines (nc) gets lines back.
    c.write_all(b"hello\n").await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    let reply = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(reply.ends_with(" 6 bytes\n"), "{reply:?}");
    server.stop().await;

    let server = TestServer::start(config("raw"), Echo).await;
    let mut c = server.connect().await;
    c.write_all(b"\x00\x01binary").await.unwrap();
    assert_eq!(read_exact(&mut c, 8).await, b"\x00\x01binary");
    server.stop().await;
}

#[tokio::test]
async fn header_frames_are_echoed_byte_for_byte() {
    let server = TestServer::start(config("header"), Echo).await;
    let mut c = server.connect().await;
    let header = br#"{ "filename": "a.txt", "len": 5, "md5": null }"#;
    let mut frame = len32(header);
    frame.extend_from_slice(b"hello");
    c.write_all(&frame).await.unwrap();
    assert_eq!(read_exact(&mut c, frame.len()).await, frame);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_and_returns() {
    let server = TestServer::start(config("line"), Echo).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = server.connect().await;
        assert_eq!(round_trip(&mut c, &format!("{i}")).await, format!("{i}"));
        clients.push(c);
    }
    let addr = server.addr;
    let report = server.stop().await;
    assert_eq!(report.connections, 10);
    assert_eq!(report.abandoned, 0);
    for mut c in clients {
        assert!(read_to_eof(&mut c).await.is_empty());
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Echo that takes its time: a reply is in flight while it sleeps.
struct SlowEcho(Duration);

impl Service for SlowEcho {
    type Session = SlowEchoSession;
    fn open(&self, _peer: &PeerInfo) -> SlowEchoSession {
        SlowEchoSession(self.0)
    }
}

struct SlowEchoSession(Duration);

impl Session for SlowEchoSession {
    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        tokio::time::sleep(self.0).await;
        out.send(msg);
    }
}

#[tokio::test]
async fn a_reply_in_flight_is_finished_before_shutdown_closes() {
    let server = TestServer::start(config("line"), SlowEcho(Duration::from_millis(300))).await;
    let mut c = server.connect().await;
    c.write_all(b"in flight\n").await.unwrap();
    // Let the server start on the message, then shut down while the reply is being made.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.cancel();
    assert_eq!(read_to_eof(&mut c).await, b"in flight\n");
    let report = server.task.await.unwrap();
    assert_eq!(report.abandoned, 0);
}

/// A tiny chat room: each member's line is pushed to every other member. It exercises the
/// push side of the service interface (messages a connection did not ask for).
#[derive(Default, Clone)]
struct Room {
    members: Arc<Mutex<Vec<ConnHandle>>>,
}

struct Member {
    room: Room,
    me: Option<ConnHandle>,
}

impl Service for Room {
    type Session = Member;
    fn open(&self, _peer: &PeerInfo) -> Member {
        Member {
            room: self.clone(),
            me: None,
        }
    }
}

impl Session for Member {
    async fn on_open(&mut self, out: &mut Outbox) {
        let me = out.handle();
        self.room.members.lock().unwrap().push(me.clone());
        self.me = Some(me);
        out.send(Message::text("welcome"));
    }

    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        let me = out.peer().clone();
        let members = self.room.members.lock().unwrap().clone();
        for member in members.iter().filter(|m| *m.peer() != me) {
            let mut line = format!("{me}: ").into_bytes();
            line.extend_from_slice(msg.body());
            let _ = member.try_send(Message::new(line));
        }
    }

    fn on_close(&mut self) {
        let me = self.me.take().map(|m| m.peer().clone());
        self.room
            .members
            .lock()
            .unwrap()
            .retain(|m| Some(m.peer()) != me.as_ref());
    }
}

#[tokio::test]
async fn sessions_can_push_to_other_connections() {
    let room = Room::default();
    let server = TestServer::start(config("line"), room.clone()).await;
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    assert_eq!(read_line(&mut alice).await, b"welcome");
    assert_eq!(read_line(&mut bob).await, b"welcome");
    let alice_addr = alice.local_addr().unwrap();
    alice.write_all(b"hi bob\n").await.unwrap();
    let heard = String::from_utf8(read_line(&mut bob).await).unwrap();
    assert_eq!(heard, format!("{alice_addr}: hi bob"));
    // Closing a member removes it from the room.
    drop(alice);
    for _ in 0..100 {
        if room.members.lock().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(room.members.lock().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_push_handle_can_close_its_connection() {
    let room = Room::default();
    let server = TestServer::start(config("line"), room.clone()).await;
    let mut c = server.connect().await;
    assert_eq!(read_line(&mut c).await, b"welcome");
    let handle = room.members.lock().unwrap()[0].clone();
    handle.try_send(Message::new("last words")).unwrap();
    handle.close().unwrap();
    assert_eq!(read_to_eof(&mut c).await, b"last words\n");
    for _ in 0..100 {
        if handle.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.is_closed());
    server.stop().await;
}

#[tokio::test]
async fn one_address_may_hold_only_max_conns_per_ip_connections() {
    let mut cfg = config("line");
    cfg.max_conns_per_ip = Some(2);
    let server = TestServer::start(cfg, Echo).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_eq!(round_trip(&mut a, "a").await, "a");
    assert_eq!(round_trip(&mut b, "b").await, "b");
    let mut third = server.connect().await;
    let refusal = String::from_utf8(read_to_eof(&mut third).await).unwrap();
    assert_eq!(
        refusal,
        "error: too many connections from your address (2 open), try again later\n"
    );
    // A slot frees when a connection closes.
    drop(a);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut c = server.connect().await;
        c.write_all(b"again\n").await.unwrap();
        let got = read_to_eof_or_line(&mut c).await;
        if got == "again" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot never freed: {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(round_trip(&mut b, "still").await, "still");
    let report = server.stop().await;
    assert!(report.refused >= 1);
}
