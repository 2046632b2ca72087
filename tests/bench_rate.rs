//! `sockit bench --rate`: open-loop load on a fixed schedule, replies matched by their stamp,
//! latency counted from the scheduled send time.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::{ServeProcess, sockit_bin};

fn bench(args: &[&str]) -> Output {
    Command::new(sockit_bin())
        .arg("bench")
        .args(args)
        .output()
        .expect("run sockit bench")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn every_scheduled_message_is_answered_over_tcp_framings_and_udp() {
    let len32 = ServeProcess::start(&["--framing", "len32"]);
    let r = json(&bench(&[
        &len32.addr.to_string(),
        "--framing",
        "len32",
        "--rate",
        "200",
        "--conns",
        "4",
        "--count",
        "50",
        "--size",
        "8",
        "--json",
    ]));
    assert_eq!(r["sent"], 200);
    assert_eq!(r["messages"], 200);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["mismatches"], 0);
    assert_eq!(r["rate"], 200.0);
    assert!(r["latency_us"]["p50"].as_f64().unwrap() > 0.0);

    let line = ServeProcess::start(&[]);
    let r = json(&bench(&[
        &line.addr.to_string(),
        "--rate",
        "100",
        "--conns",
        "1",
        "--count",
        "30",
        "--size",
        "16",
        "--json",
    ]));
    assert_eq!(
        (r["sent"].clone(), r["messages"].clone()),
        (30.into(), 30.into())
    );
    assert_eq!(r["framing"], "line");

    let udp = ServeProcess::start(&["--udp"]);
    let r = json(&bench(&[
        &format!("udp:{}", udp.addr),
        "--rate",
        "100",
        "--conns",
        "3",
        "--count",
        "20",
        "--json",
    ]));
    assert_eq!(r["sent"], 60);
    assert_eq!(r["messages"], 60);
}

/// A len32 echo server that stops answering for `pause` once, after its `after`-th message.
fn stalling_echo(after: usize, pause: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut n = 0;
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            n += 1;
            if n == after {
                thread::sleep(pause);
            }
            if s.write_all(&len).and_then(|()| s.write_all(&body)).is_err() {
                return;
            }
        }
    });
    addr
}

#[test]
fn a_stall_shows_in_every_message_scheduled_during_it() {
    // 100 messages a second for half a second; the server freezes for 300 ms after the 10th.
    // A ping-pong client would wait once and record one slow reply; on a fixed schedule the
    // 30 messages due during the freeze are all late, by up to 300 ms.
    let addr = stalling_echo(10, Duration::from_millis(300));
    let r = json(&bench(&[
        &addr.to_string(),
        "--framing",
        "len32",
        "--rate",
        "100",
        "--conns",
        "1",
        "--count",
        "50",
        "--size",
        "8",
        "--json",
    ]));
    assert_eq!(r["messages"], 50);
    let lat = &r["latency_us"];
    assert!(lat["max"].as_f64().unwrap() >= 250_000.0, "{lat}");
    assert!(lat["p50"].as_f64().unwrap() >= 50_000.0, "{lat}");
}

#[test]
fn datagrams_that_get_no_reply_are_counted_lost() {
    // Answers only even-numbered datagrams (the stamp's sequence number).
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if seq % 2 == 0 {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    let r = json(&bench(&[
        &format!("udp:{addr}"),
        "--rate",
        "200",
        "--conns",
        "1",
        "--count",
        "40",
        "--timeout",
        "0.5",
        "--json",
    ]));
    assert_eq!(r["sent"], 40);
    assert_eq!(r["messages"], 20);
    assert_eq!(r["lost"], 20);
}

#[test]
fn rate_refuses_what_cannot_carry_its_stamp() {
    for args in [
        vec!["127.0.0.1:9", "--rate", "10", "--framing", "raw"],
        vec!["127.0.0.1:9", "--rate", "10", "--size", "8"],
        vec![
            "127.0.0.1:9",
            "--rate",
            "10",
            "--framing",
            "len32",
            "--size",
            "7",
        ],
        vec!["127.0.0.1:9", "--rate", "0"],
        vec!["127.0.0.1:9", "--rate", "-3"],
        vec!["127.0.0.1:9", "--rate", "10", "--chat"],
        vec!["udp:127.0.0.1:9", "--rate", "10", "--size", "4"],
    ] {
        let out = bench(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
