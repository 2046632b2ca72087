//! rudp protocol tests on the deterministic simulator (virtual time: each runs in milliseconds).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use sockit::rudp::packet::{self, Frame, Packet};
use sockit::rudp::sim::{Dir, LinkConfig, Pair};
use sockit::rudp::{CloseReason, Config, Connection, Endpoint, EndpointConfig, Event, SendError};

fn link(loss: f64) -> LinkConfig {
    LinkConfig {
        loss,
        delay_min: Duration::from_millis(5),
        delay_max: Duration::from_millis(20),
        ..LinkConfig::default()
    }
}

fn pair_with(cfg: Config, up: LinkConfig, down: LinkConfig, seed: u64) -> Pair {
    let server = EndpointConfig {
        connection: cfg.clone(),
        ..EndpointConfig::default()
    };
    Pair::new(cfg, server, up, down, seed)
}

fn connected(loss: f64, seed: u64) -> Pair {
    let mut p = pair_with(Config::default(), link(loss), link(loss), seed);
    assert!(
        p.connect(Duration::from_secs(20)),
        "no handshake (seed {seed})"
    );
    p.client_events.clear();
    p.server_events.clear();
    p
}

/// Message `i` of `size` bytes (at least 4): the index, then a pattern derived from it.
fn msg(i: u32, size: usize) -> Bytes {
    let mut m = i.to_be_bytes().to_vec();
    m.extend((4..size.max(4)).map(|k| (k as u32 ^ i.wrapping_mul(31)) as u8));
    Bytes::from(m)
}

/// Sends `up` from the client and `down` from the server (retrying when the send buffer is
/// full) and runs until both arrived or `max` passes; returns what each side received.
fn transfer(
    p: &mut Pair,
    up: Vec<Bytes>,
    down: Vec<Bytes>,
    max: Duration,
) -> (Vec<Bytes>, Vec<Bytes>) {
    let h = p.server_conn.expect("connected");
    let (n_up, n_down) = (up.len(), down.len());
    let mut up: VecDeque<Bytes> = up.into();
    let mut down: VecDeque<Bytes> = down.into();
    let mut at_server = Vec::new();
    let mut at_client = Vec::new();
    p.run_until_cond(max, |p| {
        while let Some(m) = up.front() {
            match p.client.send(m.clone()) {
                Ok(()) => {
                    up.pop_front();
                }
                Err(SendError::Blocked) => break,
                Err(e) => panic!("client send: {e}"),
            }
        }
        while let Some(m) = down.front() {
            match p.server.send(h, m.clone()) {
                Ok(()) => {
                    down.pop_front();
                }
                Err(SendError::Blocked) => break,
                Err(e) => panic!("server send: {e}"),
            }
        }
        while let Some((_, ev)) = p.server_events.pop_front() {
            match ev {
                Event::Message(m) => at_server.push(m),
                Event::Connected => {}
                other => panic!("server event {other:?}"),
            }
        }
        while let Some(ev) = p.client_events.pop_front() {
            match ev {
                Event::Message(m) => at_client.push(m),
                Event::Connected => {}
                other => panic!("client event {other:?}"),
            }
        }
        at_server.len() >= n_up && at_client.len() >= n_down
    });
    (at_server, at_client)
}

fn assert_in_order(got: &[Bytes], want: &[Bytes], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: message count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "{what}: message {i} differs ({} vs {} bytes)",
            g.len(),
            w.len()
        );
    }
}

#[test]
fn handshake_then_messages_both_ways() {
    let mut p = connected(0.0, 1);
    assert!(p.client.is_established());
    let up: Vec<Bytes> = (0..20).map(|i| msg(i, 10 + i as usize)).collect();
    let down: Vec<Bytes> = (0..20).map(|i| msg(i, 3000)).collect();
    let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(5));
    assert_in_order(&s, &up, "up");
    assert_in_order(&c, &down, "down");
    assert_eq!(p.server.stats().retries_sent, 1);
    assert_eq!(p.server.stats().accepted, 1);
    assert_eq!(p.server.len(), 1);
}

#[test]
fn empty_message_is_delivered() {
    let mut p = connected(0.0, 2);
    let (s, _) = transfer(
        &mut p,
        vec![Bytes::new(), msg(1, 5)],
        vec![],
        Duration::from_secs(2),
    );
    assert_in_order(&s, &[Bytes::new(), msg(1, 5)], "up");
}

/// A named datagram selector in one direction.
type Case = (&'static str, Dir, fn(&[u8]) -> bool);

/// Drops the first datagram (in `dir`) that `pick` selects.
fn drop_first(p: &mut Pair, dir: Dir, pick: fn(&[u8]) -> bool) {
    let mut done = false;
    p.filter = Some(Box::new(move |d, b| {
        if !done && d == dir && pick(b) {
            done = true;
            return true;
        }
        false
    }));
}

fn is_initial_plain(b: &[u8]) -> bool {
    matches!(packet::parse(b), Ok(Packet::Initial { token: None, .. }))
}
fn is_initial_token(b: &[u8]) -> bool {
    matches!(packet::parse(b), Ok(Packet::Initial { token: Some(_), .. }))
}
fn is_retry(b: &[u8]) -> bool {
    matches!(packet::parse(b), Ok(Packet::Retry { .. }))
}
fn is_accept(b: &[u8]) -> bool {
    matches!(packet::parse(b), Ok(Packet::Accept { .. }))
}

fn frames_of(b: &[u8]) -> Vec<Frame<'_>> {
    match packet::parse(b) {
        Ok(Packet::Data { frames, .. }) => packet::frames(frames).collect(),
        _ => Vec::new(),
    }
}
fn has_data(b: &[u8]) -> bool {
    frames_of(b)
        .iter()
        .any(|f| matches!(f, Frame::Frag { flags, .. } if flags & packet::FLAG_CLOSE == 0))
}
fn is_pure_ack(b: &[u8]) -> bool {
    let f = frames_of(b);
    !f.is_empty() && f.iter().all(|f| matches!(f, Frame::Ack(_)))
}
fn has_close(b: &[u8]) -> bool {
    frames_of(b)
        .iter()
        .any(|f| matches!(f, Frame::Frag { flags, .. } if flags & packet::FLAG_CLOSE != 0))
}
fn has_ping(b: &[u8]) -> bool {
    frames_of(b).iter().any(|f| matches!(f, Frame::Ping))
}

#[test]
fn handshake_survives_the_loss_of_each_handshake_packet() {
    let cases: [Case; 4] = [
        ("first INITIAL", Dir::Up, is_initial_plain),
        ("RETRY", Dir::Down, is_retry),
        ("INITIAL with cookie", Dir::Up, is_initial_token),
        ("ACCEPT", Dir::Down, is_accept),
    ];
    for (name, dir, pick) in cases {
        let mut p = pair_with(Config::default(), link(0.0), link(0.0), 3);
        drop_first(&mut p, dir, pick);
        assert!(
            p.connect(Duration::from_secs(10)),
            "{name} lost: no connection"
        );
        // Exactly one server connection even when the client repeated its INITIAL.
        assert_eq!(p.server.len(), 1, "{name}");
        let (s, c) = transfer(
            &mut p,
            vec![msg(1, 100)],
            vec![msg(2, 100)],
            Duration::from_secs(5),
        );
        assert_eq!((s.len(), c.len()), (1, 1), "{name}");
    }
}

#[test]
fn handshake_retries_through_heavy_loss() {
    for seed in 1..=20 {
        let mut p = pair_with(Config::default(), link(0.5), link(0.5), seed);
        assert!(p.connect(Duration::from_secs(25)), "seed {seed}");
        assert_eq!(p.server.len(), 1);
    }
}

#[test]
fn loss_of_each_data_packet_kind_is_repaired() {
    let cases: [Case; 4] = [
        ("client data", Dir::Up, has_data),
        ("server data", Dir::Down, has_data),
        ("client pure ack", Dir::Up, is_pure_ack),
        ("server pure ack", Dir::Down, is_pure_ack),
    ];
    for (name, dir, pick) in cases {
        let mut p = connected(0.0, 4);
        drop_first(&mut p, dir, pick);
        let up: Vec<Bytes> = (0..5).map(|i| msg(i, 2500)).collect();
        let down: Vec<Bytes> = (0..5).map(|i| msg(i, 700)).collect();
        let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(5));
        assert_in_order(&s, &up, name);
        assert_in_order(&c, &down, name);
    }
}

#[test]
fn a_lone_lost_message_is_repaired_by_the_tail_copy() {
    // One message, nothing after it: no later datagram can carry a copy or reveal the gap, so
    // the tail copy (half an RTT later) repairs it, well before a retransmission timeout.
    let mut p = connected(0.0, 5);
    drop_first(&mut p, Dir::Up, has_data);
    let sent = p.now;
    let (s, _) = transfer(&mut p, vec![msg(7, 20)], vec![], Duration::from_secs(3));
    assert_eq!(s, vec![msg(7, 20)]);
    assert_eq!(p.client.stats().timeouts, 0, "{:?}", p.client.stats());
    assert!(p.client.stats().redundant_copies >= 1);
    assert!(
        p.now - sent < Duration::from_millis(100),
        "took {:?}",
        p.now - sent
    );
}

#[test]
fn without_redundancy_a_lone_lost_message_is_repaired_by_timeout() {
    let cfg = Config {
        redundancy_bytes: 0,
        ..Config::default()
    };
    let mut p = pair_with(cfg, link(0.0), link(0.0), 5);
    assert!(p.connect(Duration::from_secs(5)));
    drop_first(&mut p, Dir::Up, has_data);
    let (s, _) = transfer(&mut p, vec![msg(7, 20)], vec![], Duration::from_secs(3));
    assert_eq!(s, vec![msg(7, 20)]);
    assert_eq!(p.client.stats().timeouts, 1);
    assert_eq!(p.client.stats().redundant_copies, 0);
}

#[test]
fn gap_triggers_fast_retransmit_not_timeout() {
    let mut p = connected(0.0, 6);
    // Bulk-sized fragments (no redundancy room): losing one fragment in the middle is
    // detected from the SACK of later ones.
    let mut n = 0;
    p.filter = Some(Box::new(move |d, b| {
        if d == Dir::Up && has_data(b) {
            n += 1;
            return n == 3;
        }
        false
    }));
    let big = msg(1, 40_000);
    let (s, _) = transfer(&mut p, vec![big.clone()], vec![], Duration::from_secs(3));
    assert_eq!(s, vec![big]);
    assert!(p.client.stats().fast_losses >= 1, "{:?}", p.client.stats());
    assert_eq!(p.client.stats().timeouts, 0, "{:?}", p.client.stats());
}

#[test]
fn total_loss_ends_both_sides_at_the_idle_timeout() {
    let mut p = connected(0.0, 7);
    let cut = p.now;
    let dead = LinkConfig {
        loss: 1.0,
        ..link(0.0)
    };
    p.link.set_config(Dir::Up, dead.clone());
    p.link.set_config(Dir::Down, dead);
    p.client.send(msg(1, 100)).unwrap();
    let idle = Config::default().idle_timeout;
    let mut client_closed = None;
    let mut server_closed = None;
    p.run_until_cond(idle * 2, |p| {
        while let Some(ev) = p.client_events.pop_front() {
            if ev == Event::Closed(CloseReason::TimedOut) {
                client_closed = Some(p.now - cut);
            }
        }
        while let Some((_, ev)) = p.server_events.pop_front() {
            if ev == Event::Closed(CloseReason::TimedOut) {
                server_closed = Some(p.now - cut);
            }
        }
        client_closed.is_some() && server_closed.is_some()
    });
    let c = client_closed.expect("client never timed out");
    let s = server_closed.expect("server never timed out");
    for t in [c, s] {
        assert!(t <= idle + Duration::from_secs(1), "closed after {t:?}");
        assert!(t + Duration::from_millis(100) >= idle, "closed after {t:?}");
    }
    assert!(p.client.is_drained());
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.server.len(), 0, "timed-out connection not removed");
    assert_eq!(p.client.poll_timeout(), None);
}

#[test]
fn handshake_into_the_void_times_out_and_the_server_keeps_nothing() {
    let dead = LinkConfig {
        loss: 1.0,
        ..link(0.0)
    };
    let mut p = pair_with(Config::default(), link(0.0), dead, 8);
    let connected = p.connect(Duration::from_secs(40));
    assert!(!connected);
    assert_eq!(
        p.client_events.back(),
        Some(&Event::Closed(CloseReason::TimedOut))
    );
    assert_eq!(p.server.len(), 0);
    assert!(p.server.stats().retries_sent >= 3);
    assert_eq!(p.server.stats().accepted, 0);
}

#[test]
fn duplicated_datagrams_deliver_exactly_once() {
    let dup = LinkConfig {
        duplicate: 0.5,
        ..link(0.05)
    };
    let mut p = pair_with(Config::default(), dup.clone(), dup, 9);
    assert!(p.connect(Duration::from_secs(10)));
    p.client_events.clear();
    let up: Vec<Bytes> = (0..300)
        .map(|i| msg(i, 1 + (i as usize * 37) % 4000))
        .collect();
    let down: Vec<Bytes> = (0..300).map(|i| msg(i, 8)).collect();
    let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(30));
    assert_in_order(&s, &up, "up");
    assert_in_order(&c, &down, "down");
    assert!(p.link.stats(Dir::Up).duplicated > 0);
}

#[test]
fn reordering_delivers_in_order() {
    let shuffle = LinkConfig {
        reorder: true,
        delay_min: Duration::from_millis(1),
        delay_max: Duration::from_millis(80),
        ..link(0.1)
    };
    for seed in 1..=5 {
        let mut p = pair_with(Config::default(), shuffle.clone(), shuffle.clone(), seed);
        assert!(p.connect(Duration::from_secs(10)));
        p.client_events.clear();
        let up: Vec<Bytes> = (0..200)
            .map(|i| msg(i, 1 + (i as usize * 97) % 5000))
            .collect();
        let down: Vec<Bytes> = (0..200).map(|i| msg(i, 30)).collect();
        let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(60));
        assert_in_order(&s, &up, "up");
        assert_in_order(&c, &down, "down");
    }
}

#[test]
fn tiny_windows_still_carry_large_messages() {
    let cfg = Config {
        recv_window: 1, // clamped to two fragments
        send_buffer: 1, // clamped to max_message
        ..Config::default()
    };
    let mut p = pair_with(cfg, link(0.05), link(0.05), 10);
    assert!(p.connect(Duration::from_secs(10)));
    p.client_events.clear();
    let up: Vec<Bytes> = (0..4).map(|i| msg(i, 100_000)).collect();
    let down: Vec<Bytes> = (0..50).map(|i| msg(i, 100)).collect();
    let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(120));
    assert_in_order(&s, &up, "up");
    assert_in_order(&c, &down, "down");
    // Only the server's first burst (sent on the assumed initial window of 64 fragments, before
    // the client's first ACK told it 2) can overshoot.
    let over = p.client.stats().dropped_beyond_window;
    assert!(over <= 64 + 8, "{over} fragments beyond the window");
    assert_eq!(p.server.stats().malformed, 0);
}

#[test]
fn one_mib_messages_under_loss() {
    let mut p = connected(0.02, 11);
    let up: Vec<Bytes> = (0..3).map(|i| msg(i, 1 << 20)).collect();
    let down = vec![msg(9, 1 << 20)];
    let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(120));
    assert_in_order(&s, &up, "up");
    assert_in_order(&c, &down, "down");
    assert_eq!(
        p.client.send(Bytes::from(vec![0; (1 << 20) + 1])),
        Err(SendError::TooLarge((1 << 20) + 1))
    );
}

#[test]
fn ordered_exactly_once_under_0_to_30_percent_loss_many_seeds() {
    for loss in [0.0, 0.1, 0.2, 0.3] {
        for seed in 1..=8 {
            let mut p = pair_with(Config::default(), link(loss), link(loss), seed);
            assert!(
                p.connect(Duration::from_secs(30)),
                "loss {loss} seed {seed}"
            );
            p.client_events.clear();
            let up: Vec<Bytes> = (0..100)
                .map(|i| msg(i, 4 + (i as usize * 131) % 3000))
                .collect();
            let down: Vec<Bytes> = (0..100)
                .map(|i| msg(i, 4 + (i as usize * 17) % 300))
                .collect();
            let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(120));
            assert_in_order(&s, &up, &format!("up, loss {loss} seed {seed}"));
            assert_in_order(&c, &down, &format!("down, loss {loss} seed {seed}"));
        }
    }
}

/// Closes from one side after queued messages; both sides must end with the right reasons,
/// every message delivered first.
fn close_test(from_client: bool, loss: f64, seed: u64) {
    let mut p = connected(loss, seed);
    let h = p.server_conn.unwrap();
    let msgs: Vec<Bytes> = (0..30).map(|i| msg(i, 1500)).collect();
    for m in &msgs {
        if from_client {
            p.client.send(m.clone()).unwrap();
        } else {
            p.server.send(h, m.clone()).unwrap();
        }
    }
    if from_client {
        p.client.close();
        assert_eq!(p.client.send(msg(0, 4)), Err(SendError::Closed));
    } else {
        p.server.close(h);
    }
    let mut got = Vec::new();
    let mut client_end = None;
    let mut server_end = None;
    p.run_until_cond(Duration::from_secs(60), |p| {
        while let Some(ev) = p.client_events.pop_front() {
            match ev {
                Event::Message(m) => got.push(m),
                Event::Closed(r) => client_end = Some(r),
                Event::Connected => panic!("connected twice"),
            }
        }
        while let Some((_, ev)) = p.server_events.pop_front() {
            match ev {
                Event::Message(m) => got.push(m),
                Event::Closed(r) => server_end = Some(r),
                Event::Connected => panic!("connected twice"),
            }
        }
        client_end.is_some() && server_end.is_some()
    });
    let (closer, other) = if from_client {
        (client_end, server_end)
    } else {
        (server_end, client_end)
    };
    assert_eq!(closer, Some(CloseReason::Local), "closer, loss {loss}");
    assert_eq!(other, Some(CloseReason::Peer), "other side, loss {loss}");
    assert_in_order(&got, &msgs, "messages before close");
    p.run_for(Duration::from_secs(5));
    assert!(p.client.is_drained());
    assert_eq!(p.server.len(), 0);
}

#[test]
fn close_from_the_client() {
    close_test(true, 0.0, 12);
    for seed in 1..=5 {
        close_test(true, 0.2, seed);
    }
}

#[test]
fn close_from_the_server() {
    close_test(false, 0.0, 13);
    for seed in 1..=5 {
        close_test(false, 0.2, seed);
    }
}

#[test]
fn close_marker_loss_is_repaired() {
    let mut p = connected(0.0, 14);
    drop_first(&mut p, Dir::Up, has_close);
    p.client.close();
    let ok = p.run_until_cond(Duration::from_secs(10), |p| {
        p.client_events.contains(&Event::Closed(CloseReason::Local))
            && p.server_events
                .iter()
                .any(|(_, e)| *e == Event::Closed(CloseReason::Peer))
    });
    assert!(ok);
}

#[test]
fn keepalives_hold_an_idle_connection_open() {
    let mut p = connected(0.0, 15);
    drop_first(&mut p, Dir::Up, has_ping);
    p.run_for(Duration::from_secs(200));
    assert!(p.client_events.is_empty(), "{:?}", p.client_events);
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
    assert!(p.client.is_established());
    assert!(p.client.stats().packets_sent >= 200 / 5);
    let (s, _) = transfer(&mut p, vec![msg(1, 10)], vec![], Duration::from_secs(2));
    assert_eq!(s.len(), 1);
}

#[test]
fn rtt_estimate_tracks_the_link() {
    let fixed = LinkConfig {
        delay_min: Duration::from_millis(50),
        delay_max: Duration::from_millis(50),
        ..LinkConfig::default()
    };
    let mut p = pair_with(Config::default(), fixed.clone(), fixed, 16);
    assert!(p.connect(Duration::from_secs(5)));
    let up: Vec<Bytes> = (0..50).map(|i| msg(i, 100)).collect();
    transfer(&mut p, up, vec![], Duration::from_secs(10));
    let rtt = p.client.rtt().expect("rtt measured");
    assert!(
        rtt >= Duration::from_millis(98) && rtt <= Duration::from_millis(112),
        "rtt {rtt:?}"
    );
}

#[test]
fn spoofed_and_stray_datagrams_are_dropped_and_counted() {
    let mut p = connected(0.0, 17);
    let h = p.server_conn.unwrap();
    let server_cid = p.client.remote_cid();
    let client_cid = p.client.local_cid();
    let now = p.now;
    // A DATA datagram that would deliver a message, with a wrong connection id.
    let forged = |dst: u64| {
        let mut b = Vec::new();
        packet::write_data_header(&mut b, dst, 0);
        let mut w = packet::RunWriter::default();
        w.push(&mut b, 0, packet::FLAG_END, b"injected");
        b
    };
    let client_addr = p.client_addr;
    for guess in [1u64, 2, server_cid ^ 1, u64::MAX] {
        p.server.handle_datagram(now, client_addr, &forged(guess));
    }
    assert_eq!(p.server.stats().unknown_connection, 4);
    // The right id from another address.
    let other = "10.9.9.9:1234".parse().unwrap();
    p.server.handle_datagram(now, other, &forged(server_cid));
    assert_eq!(p.server.stats().wrong_address, 1);
    // Garbage and truncated headers.
    for g in [
        &b""[..],
        b"\x04\x00",
        b"\x01",
        b"\x99garbage",
        b"\x02short",
        b"\x03\x00",
    ] {
        p.server.handle_datagram(now, client_addr, g);
    }
    assert!(p.server.stats().malformed >= 5, "{:?}", p.server.stats());
    // The client ignores a wrong id too, and RETRY/ACCEPT after the handshake.
    p.client.handle_datagram(now, &forged(client_cid ^ 0x100));
    let mut b = Vec::new();
    packet::write_accept(&mut b, client_cid, 77);
    p.client.handle_datagram(now, &b);
    assert_eq!(p.client.stats().dropped_unexpected, 2);
    assert_eq!(p.client.remote_cid(), server_cid);
    p.run_for(Duration::from_secs(1));
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
    assert!(p.client_events.is_empty(), "{:?}", p.client_events);
    // The real connection is unharmed.
    let (s, c) = transfer(
        &mut p,
        vec![msg(1, 50)],
        vec![msg(2, 50)],
        Duration::from_secs(2),
    );
    assert_eq!((s, c), (vec![msg(1, 50)], vec![msg(2, 50)]));
    assert_eq!(p.server.peer(h), Some(client_addr));
}

#[test]
fn cookies_bind_address_id_and_time() {
    let t0 = std::time::Instant::now();
    let cfg = EndpointConfig::default();
    let period = cfg.token_period;
    let mut ep = Endpoint::new(cfg, [1; 32], t0);
    let a = "192.0.2.1:5000".parse().unwrap();
    let b = "192.0.2.2:5000".parse().unwrap();
    let mut buf = Vec::new();
    let mut init = Vec::new();
    packet::write_initial(&mut init, 1234, None);
    ep.handle_datagram(t0, a, &init);
    let tr = ep.poll_transmit(t0, &mut buf).unwrap();
    assert_eq!(tr.destination, a);
    assert!(
        tr.size <= init.len(),
        "the answer is never larger than the request"
    );
    let Ok(Packet::Retry { cid: 1234, token }) = packet::parse(&buf[..tr.size]) else {
        panic!("no retry")
    };
    let with = |cid: u64| {
        let mut v = Vec::new();
        packet::write_initial(&mut v, cid, Some(&token));
        v
    };
    // Another address, another id, a forged token, too late: all refused.
    assert!(ep.handle_datagram(t0, b, &with(1234)).is_none());
    assert!(ep.handle_datagram(t0, a, &with(1235)).is_none());
    let mut forged = with(1234);
    forged[12] ^= 1;
    assert!(ep.handle_datagram(t0, a, &forged).is_none());
    assert!(
        ep.handle_datagram(t0 + 2 * period, a, &with(1234))
            .is_none()
    );
    assert_eq!(ep.stats().invalid_tokens, 4);
    assert_eq!(ep.len(), 0);
    // Still valid in the next bucket; a repeat does not make a second connection.
    let h = ep
        .handle_datagram(t0 + period, a, &with(1234))
        .expect("accepted");
    assert!(ep.handle_datagram(t0 + period, a, &with(1234)).is_none());
    assert_eq!(ep.len(), 1);
    assert_eq!(ep.connection(h).unwrap().remote_cid(), 1234);
}

#[test]
fn spoofed_handshake_flood_keeps_no_state() {
    let t0 = std::time::Instant::now();
    let cfg = EndpointConfig::default();
    let max_answers = cfg.max_pending_answers;
    let mut ep = Endpoint::new(cfg, [2; 32], t0);
    let mut init = Vec::new();
    for i in 0..200_000u32 {
        init.clear();
        packet::write_initial(&mut init, u64::from(i) + 1, None);
        let addr =
            std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
        ep.handle_datagram(t0, addr, &init);
        // A forged cookie from a spoofed source.
        init.clear();
        packet::write_initial(&mut init, u64::from(i) + 1, Some(&[i as u8; 16]));
        ep.handle_datagram(t0, addr, &init);
    }
    assert_eq!(ep.len(), 0);
    assert_eq!(ep.stats().invalid_tokens, 200_000);
    assert_eq!(ep.stats().retries_sent, max_answers as u64);
    assert_eq!(ep.stats().answers_dropped, 200_000 - max_answers as u64);
    let mut buf = Vec::new();
    let mut n = 0;
    while ep.poll_transmit(t0, &mut buf).is_some() {
        n += 1;
    }
    assert_eq!(n, max_answers);
}

#[test]
fn connection_limit_is_enforced() {
    let t0 = std::time::Instant::now();
    let cfg = EndpointConfig {
        max_connections: 3,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(cfg, [3; 32], t0);
    let mut clients: Vec<(std::net::SocketAddr, Connection)> = (0..5u16)
        .map(|i| {
            let addr = std::net::SocketAddr::from(([192, 0, 2, 1], 6000 + i));
            (
                addr,
                Connection::connect(Config::default(), t0, u64::from(i) + 100),
            )
        })
        .collect();
    let mut buf = Vec::new();
    for _ in 0..4 {
        for (addr, c) in clients.iter_mut() {
            while let Some(n) = c.poll_transmit(t0, &mut buf) {
                ep.handle_datagram(t0, *addr, &buf[..n]);
            }
        }
        while let Some(t) = ep.poll_transmit(t0, &mut buf) {
            let data = buf[..t.size].to_vec();
            for (addr, c) in clients.iter_mut() {
                if *addr == t.destination {
                    c.handle_datagram(t0, &data);
                }
            }
        }
    }
    let up = clients.iter().filter(|(_, c)| c.is_established()).count();
    assert_eq!(up, 3);
    assert_eq!(ep.len(), 3);
    assert_eq!(ep.stats().refused_full, 2);
}

#[test]
fn bulk_over_a_bottleneck_backs_off_and_completes() {
    let neck = LinkConfig {
        bandwidth: 1_000_000,
        queue_limit: 50_000,
        delay_min: Duration::from_millis(20),
        delay_max: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let mut p = pair_with(Config::default(), neck.clone(), neck, 18);
    assert!(p.connect(Duration::from_secs(5)));
    let start = p.now;
    let up: Vec<Bytes> = (0..8).map(|i| msg(i, 1 << 20)).collect();
    let (s, _) = transfer(&mut p, up.clone(), vec![], Duration::from_secs(120));
    assert_in_order(&s, &up, "bulk");
    let took = p.now - start;
    // 8 MiB at 1 MB/s is 8.4 s at best; a sane controller stays within 2x of it.
    assert!(took < Duration::from_secs(17), "took {took:?}");
    assert!(
        p.link.stats(Dir::Up).queue_drops > 0,
        "never filled the queue"
    );
    assert!(p.client.stats().fast_losses > 0);
    assert!(p.client.cwnd() < 200_000, "cwnd {}", p.client.cwnd());
}

#[test]
fn datagrams_never_exceed_the_configured_mtu() {
    for mtu in [128usize, 576, 1200, 9000, 65000] {
        let cfg = Config {
            mtu,
            ..Config::default()
        };
        // The link drops anything larger than the MTU: a single oversized datagram would
        // show up in `too_big` (and likely stall the transfer).
        let l = LinkConfig { mtu, ..link(0.1) };
        let mut p = pair_with(cfg, l.clone(), l, mtu as u64);
        assert!(p.connect(Duration::from_secs(20)), "mtu {mtu}");
        let up: Vec<Bytes> = (0..30)
            .map(|i| msg(i, 1 + (i as usize * 4999) % (40 * mtu)))
            .collect();
        let down: Vec<Bytes> = (0..30).map(|i| msg(i, 8 + i as usize)).collect();
        let (s, c) = transfer(&mut p, up.clone(), down.clone(), Duration::from_secs(300));
        assert_in_order(&s, &up, &format!("up, mtu {mtu}"));
        assert_in_order(&c, &down, &format!("down, mtu {mtu}"));
        assert_eq!(p.link.stats(Dir::Up).too_big, 0, "mtu {mtu}");
        assert_eq!(p.link.stats(Dir::Down).too_big, 0, "mtu {mtu}");
    }
}
