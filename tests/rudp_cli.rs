//! rudp through the real binary: `serve --rudp` with the services, `connect --rudp` (also
//! through a lossy, reordering relay), `bench --rudp` (ping-pong, open loop, 1,000
//! connections), and the flags it refuses.

mod common;

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::{ServeProcess, sockit_bin};

fn sockit(args: &[&str]) -> Output {
    Command::new(sockit_bin())
        .args(args)
        .output()
        .expect("run sockit")
}

fn with_input(args: &[&str], input: &str) -> Output {
    let mut cmd = Command::new(sockit_bin());
    cmd.args(args);
    common::run_with_input(cmd, input)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn connect_rudp_talks_to_the_echo_service() {
    let server = ServeProcess::start(&["--rudp"]);
    let addr = server.addr.to_string();
    let out = sockit(&["connect", "--rudp", &addr, "-m", "hello", "-m", "world"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    // The scheme says the same as the flag.
    let out = sockit(&["connect", &format!("rudp:{addr}"), "-m", "again"]);
    assert_eq!(text(&out.stdout), "again\n");
}

#[test]
fn the_hub_greets_and_answers_over_rudp() {
    let server = ServeProcess::start(&["--rudp", "--service", "hub"]);
    let out = with_input(
        &["connect", "--rudp", &server.addr.to_string()],
        "echo over rudp\nlookup tcp\nbye\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("sockit hub: commands"), "{stdout}");
    assert!(stdout.contains("\nover rudp\n"), "{stdout}");
    assert!(stdout.contains("Transmission Control Protocol"), "{stdout}");
    assert!(stdout.ends_with("bye\n"), "{stdout}");
}

#[test]
fn chat_members_over_rudp_hear_each_other() {
    let server = ServeProcess::start(&["--rudp", "--service", "chat"]);
    let addr = server.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        use sockit::transport::rudp::connect;
        let cfg = sockit::rudp::Config::default();
        let a = connect(addr, cfg.clone()).await.unwrap();
        let mut b = connect(addr, cfg).await.unwrap();
        a.send("/nick ann".into()).await.unwrap();
        b.send("/nick bob".into()).await.unwrap();
        a.send("hi bob".into()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut heard = String::new();
        while !heard.contains("<ann> hi bob") {
            let got = tokio::time::timeout_at(deadline, b.recv())
                .await
                .expect("bob heard nothing in time")
                .expect("bob's connection ended");
            heard.push_str(&String::from_utf8_lossy(&got));
        }
    });
}

#[test]
fn bench_rudp_runs_ping_pong_and_open_loop() {
    let server = ServeProcess::start(&["--rudp"]);
    let target = format!("rudp:{}", server.addr);
    let out = sockit(&["bench", &target, "--conns", "4", "--count", "100", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["transport"], "rudp");
    assert_eq!(r["messages"], 400);
    assert_eq!(r["mismatches"], 0);
    let out = sockit(&[
        "bench", &target, "--conns", "2", "--rate", "200", "--count", "50", "--size", "8", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["messages"], 100);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["out_of_order"], 0);
}

#[test]
fn a_thousand_rudp_connections_share_one_server() {
    let server = ServeProcess::start(&["--rudp", "-q"]);
    let out = sockit(&[
        "bench",
        &format!("rudp:{}", server.addr),
        "--conns",
        "1000",
        "--count",
        "3",
        "--timeout",
        "20",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["messages"], 3000, "{r}");
}

/// A UDP relay between one client and `server` that drops about one datagram in ten each way
/// and swaps neighbours now and then (a seeded generator: the same run every time).
fn lossy_relay(server: SocketAddr) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(server).unwrap();
    let client: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>> = Default::default();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut coin = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100
    };
    let mut coin2 = {
        let mut r = 0x9E37_79B9_7F4A_7C15u64;
        move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r % 100
        }
    };
    let (f2, b2, c2) = (
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        client.clone(),
    );
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut held: VecDeque<Vec<u8>> = VecDeque::new();
        while let Ok((n, from)) = front.recv_from(&mut buf) {
            *client.lock().unwrap() = Some(from);
            let roll = coin();
            if roll < 10 {
                continue;
            }
            if roll < 20 && held.is_empty() {
                held.push_back(buf[..n].to_vec());
                continue;
            }
            let _ = back.send(&buf[..n]);
            while let Some(d) = held.pop_front() {
                let _ = back.send(&d);
            }
        }
    });
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut held: VecDeque<Vec<u8>> = VecDeque::new();
        while let Ok(n) = b2.recv(&mut buf) {
            let Some(to) = *c2.lock().unwrap() else {
                continue;
            };
            let roll = coin2();
            if roll < 10 {
                continue;
            }
            if roll < 20 && held.is_empty() {
                held.push_back(buf[..n].to_vec());
                continue;
            }
            let _ = f2.send_to(&buf[..n], to);
            while let Some(d) = held.pop_front() {
                let _ = f2.send_to(&d, to);
            }
        }
    });
    addr
}

#[test]
fn every_message_arrives_once_in_order_through_loss_and_reordering() {
    let server = ServeProcess::start(&["--rudp"]);
    let relay = lossy_relay(server.addr);
    let lines: String = (1..=200).map(|i| format!("message {i}\n")).collect();
    let out = with_input(
        &["connect", "--rudp", &relay.to_string(), "--timeout", "10"],
        &lines,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), lines);
}

#[test]
fn rudp_refuses_framings_and_flags_it_has_no_use_for() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["serve", "--rudp", "--framing", "line"],
        vec!["serve", "--rudp", "--udp"],
        vec!["serve", "--mtu", "1400"],
        vec!["serve", "--rudp", "--mtu", "100"],
        vec!["serve", "--rudp", "--max-line", "1K"],
        vec![
            "serve",
            "--rudp",
            "--service",
            "files",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        vec![
            "connect",
            "--rudp",
            "127.0.0.1:9",
            "--framing",
            "len32",
            "-m",
            "x",
        ],
        vec!["connect", "--udp", "rudp:127.0.0.1:9", "-m", "x"],
        vec!["connect", "--rudp", "udp:127.0.0.1:9", "-m", "x"],
        vec!["connect", "127.0.0.1:9", "--mtu", "1400", "-m", "x"],
        vec!["bench", "--rudp", "127.0.0.1:9", "--chat"],
    ] {
        let out = sockit(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Nothing listening: the handshake times out, exit 1 with one line.
    let out = sockit(&[
        "connect",
        "--rudp",
        "127.0.0.1:9",
        "--timeout",
        "1",
        "-m",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}
