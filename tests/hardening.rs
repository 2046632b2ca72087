//! The server against hostile conditions, through the real binary: a stderr whose reader is
//! gone, hundreds of clients sending 8 MiB frames without reading, slow senders, and a flood
//! of UDP replies to one address.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Starts `sockit serve 127.0.0.1 0 ARGS` with stderr on a pipe that is closed at once, as in
/// `sockit serve 2>&1 | head -n 3` after `head` has exited.
fn serve_with_closed_stderr(args: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(sockit_bin());
    cmd.args(["serve", "127.0.0.1", "0", "--service", "echo"])
        .args(args);
    let mut server = ServeProcess::spawn(cmd);
    drop(server.stderr.take());
    server
}

#[test]
fn a_closed_stderr_neither_kills_nor_wedges_a_tcp_server() {
    let mut server = serve_with_closed_stderr(&["-v"]);
    // Every connection logs several lines, each one a failed write.
    for i in 0..50 {
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        let line = format!("hello {i}\n");
        c.write_all(line.as_bytes()).unwrap();
        let mut reply = vec![0u8; line.len()];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(reply, line.as_bytes());
    }
    server.signal(libc::SIGTERM);
    let (status, _) = server.wait(PATIENCE);
    assert!(status.success(), "{status}");
}

#[test]
fn a_closed_stderr_neither_kills_nor_wedges_a_udp_server() {
    let mut server = serve_with_closed_stderr(&["--udp", "-v"]);
    for i in 0..50 {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        sock.connect(server.addr).unwrap();
        let msg = format!("datagram {i}");
        sock.send(msg.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    server.signal(libc::SIGTERM);
    let (status, _) = server.wait(PATIENCE);
    assert!(status.success(), "SIGTERM must stop it: {status}");
}

/// A `len32le` frame.
fn len32le(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn two_hundred_clients_sending_8_mib_frames_stay_within_the_memory_budget() {
    const BUDGET_MIB: u64 = 64;
    let budget = format!("{BUDGET_MIB}M");
    let server = ServeProcess::start(&[
        "--framing",
        "len32le",
        "--max-memory",
        &budget,
        "--frame-timeout",
        "3",
        "-q",
    ]);
    let pid = server.child.id();
    // A warm-up exchange, so the baseline includes a running worker's usual allocations.
    let mut probe = TcpStream::connect(server.addr).unwrap();
    probe.set_read_timeout(Some(PATIENCE)).unwrap();
    probe.write_all(&len32le(b"warm")).unwrap();
    let mut reply = [0u8; 8];
    probe.read_exact(&mut reply).unwrap();
    let baseline = rss(pid);

    // 200 clients, each sending one 8 MiB frame and never reading the echo.
    let frame = std::sync::Arc::new(len32le(&vec![b'x'; 8 * 1024 * 1024]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..200 {
        let (frame, stop, addr) = (frame.clone(), stop.clone(), server.addr);
        senders.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return;
            };
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let mut sent = 0;
            while sent < frame.len() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match s.write(&frame[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
            // Hold the connection, never reading, until the test ends.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }

    // Watch the server for a while; meanwhile a small client must still be answered.
    let mut peak = 0;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(6) {
        peak = peak.max(rss(pid));
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        c.write_all(&len32le(b"ping")).unwrap();
        let mut reply = [0u8; 8];
        if let Err(e) = c.read_exact(&mut reply) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let log = server.stop();
            panic!(
                "ping unanswered: {e}; {}",
                &log[log.len().saturating_sub(3000)..]
            );
        }
        assert_eq!(&reply[4..], b"ping");
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    assert!(answered > 10);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "peak RSS {:.1} MiB (baseline {:.1} MiB, budget {BUDGET_MIB} MiB)",
        mib(peak),
        mib(baseline)
    );
    assert!(
        peak < baseline + BUDGET_MIB * 1024 * 1024,
        "peak RSS {:.1} MiB exceeds the baseline {:.1} MiB plus the {BUDGET_MIB} MiB budget",
        mib(peak),
        mib(baseline)
    );
    drop(probe);
    server.stop();
}

#[test]
fn slow_senders_cannot_hold_every_slot() {
    let server = ServeProcess::start(&[
        "--max-conns",
        "10",
        "--frame-timeout",
        "500ms",
        "--idle-timeout",
        "1s",
        "-q",
    ]);
    // Ten clients take every slot and send one byte every 100 ms, never finishing a line.
    let mut slow: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let started = Instant::now();
    let mut all_closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        all_closed = slow.iter_mut().all(|s| s.write_all(b"x").is_err());
        if all_closed {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(all_closed, "slow senders still connected after 8 s");
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(b"served\n").unwrap();
    let mut reply = [0u8; 7];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"served\n");
    let log = server.stop();
    assert!(log.contains("unfinished frame too slow"), "{log}");
}

#[test]
fn udp_rate_caps_replies_to_one_address() {
    let server = ServeProcess::start(&["--udp", "--service", "ack", "--udp-rate", "3"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server.addr).unwrap();
    for _ in 0..20 {
        sock.send(b"").unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 128];
    let mut replies = 0;
    while sock.recv(&mut buf).is_ok() {
        replies += 1;
    }
    assert!((3..=6).contains(&replies), "{replies} replies of 20");
    let log = server.stop();
    assert!(log.contains("rate limit"), "{log}");
}

#[test]
fn options_for_the_other_transport_are_refused() {
    for (args, flag) in [
        (&["serve", "--udp", "--max-line", "1K"][..], "--max-line"),
        (&["serve", "--udp", "--max-frame", "1K"][..], "--max-frame"),
        (&["serve", "--udp-rate", "5"][..], "--udp-rate"),
        (&["serve", "--max-memory", "10M"][..], "--max-memory"),
    ] {
        let out = Command::new(sockit_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains("Usage: sockit serve"),
            "{err}"
        );
    }
    let out = Command::new(sockit_bin())
        .args(["serve", "-q", "-v"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("Usage: sockit serve [OPTIONS] [ADDR] [PORT]"),
        "{err}"
    );
}

/// Runs `sockit ARGS` with stdout and stderr on pipes whose readers are already gone.
fn run_with_closed_output(args: &[&str], stdin: &[u8]) -> std::process::ExitStatus {
    let mut child = Command::new(sockit_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "sockit {args:?} hung");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_command_panics_on_closed_stdout_and_stderr() {
    let server = ServeProcess::start(&["-q"]);
    let addr = server.addr.to_string();
    let unused = format!("127.0.0.1:{}", unused_port());
    // (arguments, stdin, whether the command itself succeeds)
    let cases: [(&[&str], &[u8], bool); 5] = [
        (&["connect", &addr, "-m", "hello"], b"", true),
        (&["connect", &addr], b"one\ntwo\n", true),
        (&["connect", &unused, "-m", "x"], b"", false),
        (&["bench", &addr, "--count", "5", "--conns", "2"], b"", true),
        (&["bench", &unused, "--conns", "2"], b"", false),
    ];
    for (args, stdin, ok) in cases {
        let status = run_with_closed_output(args, stdin);
        // 101 would be a panic; a failure is 1, success (or a broken pipe on output) 0.
        let code = status.code();
        assert_ne!(code, Some(101), "{args:?} panicked");
        if ok {
            assert_eq!(code, Some(0), "{args:?}: {status}");
        } else {
            assert_eq!(code, Some(1), "{args:?}: {status}");
        }
    }
    drop(server);
}

#[test]
fn a_flood_of_udp_source_ports_does_not_lock_a_real_client_out() {
    let server = ServeProcess::start(&["--udp", "--max-conns", "50", "-q"]);
    let real = UdpSocket::bind("127.0.0.1:0").unwrap();
    real.connect(server.addr).unwrap();
    real.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    for round in 0..10 {
        // 100 new source ports per round, each sending once and never reading: ten times the
        // peer table over the whole test.
        let flood: Vec<UdpSocket> = (0..100)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.send_to(b"junk", server.addr).unwrap();
                s
            })
            .collect();
        let msg = format!("real {round}");
        real.send(msg.as_bytes()).unwrap();
        let n = real.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.as_bytes(), "round {round}");
        drop(flood);
    }
    server.stop();
}
