//! `sockit relay` through the real binary: forwarding (TCP, unix, UDP), half-close and reset
//! relaying, splice and copy giving the same bytes, limits and filters, a target that refuses,
//! the taps (`--hex`, `--framing`, `--trace`, `--json`) and every fault's observable effect.
//! Everything listens on 127.0.0.1 port 0 (or a temporary unix path).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{PATIENCE, sockit_bin};

/// A running `sockit relay LISTEN TARGET ARGS…`, its banner read, its stderr collected.
struct Relay {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    fn start(listen: &str, target: &str, args: &[&str]) -> Relay {
        let mut child = Command::new(sockit_bin())
            .args(["relay", listen, target])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockit relay");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).expect("banner");
        let addr = banner
            .split(|c: char| c.is_whitespace() || c == '"' || c == '/')
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Relay {
            child,
            addr,
            stdout,
            log,
        }
    }

    /// Waits for a stderr line containing every one of `parts`; returns it.
    fn wait_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {parts:?}; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, PATIENCE).expect("connect to the relay");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the relay exited; log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// A target that echoes every connection's bytes back, half-closing after the client does.
fn echo_target() -> String {
    let (l, addr) = listener();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn accept(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(false).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

fn set_linger_zero(fd: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER with a properly sized struct on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// Deterministic bytes that are not periodic at any small scale.
fn pattern(n: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `data` through `stream` from another thread and reads everything back.
fn round_trip(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    let mut r = stream;
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

#[test]
fn tcp_relay_forwards_both_ways_and_logs_fin_on_both_sides() {
    let target = echo_target();
    let relay = Relay::start("127.0.0.1:0", &target, &[]);
    let data = pattern(300_000);
    let back = round_trip(relay.connect(), data.clone());
    assert!(back == data, "echo through the relay differs");
    let line = relay.wait_log(&["conn 1 tcp", "300000 B up", "300000 B down"]);
    assert!(line.contains("client FIN, target FIN [splice]"), "{line}");
    assert!(line.contains(&format!("-> {target}")), "{line}");
}

#[test]
fn splice_and_copy_paths_give_identical_bytes() {
    let target = echo_target();
    let data = pattern(8 << 20);
    for args in [&[][..], &["--no-splice"][..], &["--hex"][..]] {
        let relay = Relay::start("127.0.0.1:0", &target, args);
        let back = round_trip(relay.connect(), data.clone());
        assert_eq!(back.len(), data.len(), "{args:?}");
        assert!(back == data, "bytes differ with {args:?}");
        let path = if args.is_empty() {
            "[splice]"
        } else {
            "[copy]"
        };
        relay.wait_log(&["conn 1", "8388608 B up", path]);
        if args == ["--hex"] {
            // The dump is bounded (it drops rather than stall); it did see the first chunk.
            relay.wait_log(&["> conn 1 up", "bytes at offset 0"]);
        }
    }
}

#[test]
fn small_and_large_writes_mixed_arrive_intact_through_the_splice_path() {
    // Small chunks are copied, full reads switch to splice, a short one switches back: the
    // bytes must come out the same whatever the mix.
    let target = echo_target();
    let relay = Relay::start("127.0.0.1:0", &target, &[]);
    let data = pattern(3 << 20);
    let stream = relay.connect();
    let mut w = stream.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        let mut at = 0;
        let mut k = 0usize;
        while at < sent.len() {
            // 1 B … 200 KiB, with pauses so that small writes arrive as small reads.
            let size = [
                1,
                7,
                100,
                1500,
                16 * 1024,
                16 * 1024 + 1,
                64 * 1024,
                200 * 1024,
            ][k % 8];
            let end = (at + size).min(sent.len());
            w.write_all(&sent[at..end]).unwrap();
            at = end;
            k += 1;
            if k % 3 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    let mut r = stream;
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes differ");
}

#[test]
fn half_close_keeps_the_other_direction_flowing() {
    for args in [&[][..], &["--no-splice"][..]] {
        let (l, target) = listener();
        let relay = Relay::start("127.0.0.1:0", &target, args);
        let mut client = relay.connect();
        let mut server = accept(&l);
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap(); // EOF: the FIN was relayed
        assert_eq!(got, b"request");
        // The other direction still flows, long after the client's FIN.
        let reply = pattern(1 << 20);
        server.write_all(&reply).unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert!(back == reply, "{args:?}");
        let line = relay.wait_log(&["conn 1", "client FIN, target FIN"]);
        assert!(line.contains("7 B up, 1048576 B down"), "{line}");
    }
}

#[test]
fn a_reset_is_relayed_as_a_reset_both_ways() {
    for args in [&[][..], &["--no-splice"][..]] {
        // The target resets: the client sees a reset, not a clean end.
        let (l, target) = listener();
        let relay = Relay::start("127.0.0.1:0", &target, args);
        let mut client = relay.connect();
        let mut server = accept(&l);
        let mut buf = [0u8; 16];
        // One byte through first: the relay is connected and relaying, not still connecting.
        client.write_all(b"1").unwrap();
        server.read_exact(&mut buf[..1]).unwrap();
        set_linger_zero(&server);
        drop(server);
        let err = client.read(&mut buf).expect_err("a reset, not EOF");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{args:?}");
        let line = relay.wait_log(&["conn 1", "target RST"]);
        assert!(line.contains("client closed by relay"), "{line}");

        // The client resets: the target sees a reset.
        let mut client = relay.connect();
        let mut server = accept(&l);
        client.write_all(b"2").unwrap();
        server.read_exact(&mut buf[..1]).unwrap();
        set_linger_zero(&client);
        drop(client);
        let err = server.read(&mut buf).expect_err("a reset, not EOF");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{args:?}");
        relay.wait_log(&["conn 2", "client RST, target closed by relay"]);
    }
}

#[test]
fn unix_and_tcp_relay_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    // A unix socket exposed on a TCP port.
    let upath = dir.path().join("target.sock");
    let ul = UnixListener::bind(&upath).unwrap();
    thread::spawn(move || {
        for s in ul.incoming() {
            let Ok(mut s) = s else { break };
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            s.write_all(format!("unix got {line}").as_bytes()).unwrap();
        }
    });
    let relay = Relay::start("127.0.0.1:0", &format!("unix:{}", upath.display()), &[]);
    let mut c = relay.connect();
    c.write_all(b"ping\n").unwrap();
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply).unwrap();
    assert_eq!(reply, "unix got ping\n");
    relay.wait_log(&["conn 1 tcp", "unix:", "target.sock"]);

    // A TCP server exposed as a unix socket.
    let target = echo_target();
    let lpath = dir.path().join("relay.sock");
    let relay = Relay::start(&format!("unix:{}", lpath.display()), &target, &[]);
    let mut u = UnixStream::connect(&lpath).unwrap();
    u.set_read_timeout(Some(PATIENCE)).unwrap();
    u.write_all(b"over unix").unwrap();
    u.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    u.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"over unix");
    let line = relay.wait_log(&["conn 1 unix"]);
    assert!(line.contains("9 B up, 9 B down"), "{line}");
}

#[test]
fn a_refusing_target_is_logged_the_client_closed_and_the_relay_keeps_running() {
    let (l, target) = listener();
    drop(l); // nothing listens there now
    let mut relay = Relay::start("127.0.0.1:0", &target, &[]);
    for n in 1..=3 {
        let mut c = relay.connect();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).unwrap(), 0, "client closed");
        relay.wait_log(&[
            &format!("conn {n} "),
            "cannot connect to the target",
            "refused",
        ]);
    }
    relay.assert_running();
    // The target comes back: the same relay forwards to it.
    let l = TcpListener::bind(&target).unwrap();
    let mut c = relay.connect();
    c.write_all(b"x").unwrap();
    let mut s = accept(&l);
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn max_conns_and_deny_refuse_clients_with_a_log_line() {
    let (l, target) = listener();
    let relay = Relay::start("127.0.0.1:0", &target, &["--max-conns", "1"]);
    let _first = relay.connect();
    let _held = accept(&l);
    let mut second = relay.connect();
    let mut buf = [0u8; 1];
    assert_eq!(second.read(&mut buf).unwrap_or(0), 0);
    relay.wait_log(&["conn 2", "refused: --max-conns 1 reached"]);

    let relay = Relay::start("127.0.0.1:0", &target, &["--deny", "127.0.0.0/8"]);
    let mut c = relay.connect();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    relay.wait_log(&["conn 1", "not allowed by --allow/--deny"]);

    let relay = Relay::start("127.0.0.1:0", &target, &["--allow", "10.0.0.0/8,192.0.2.1"]);
    let mut c = relay.connect();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    relay.wait_log(&["conn 1", "not allowed"]);

    let relay = Relay::start("127.0.0.1:0", &target, &["--allow", "127.0.0.1/32"]);
    let mut c = relay.connect();
    c.write_all(b"y").unwrap();
    let mut s = accept(&l);
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"y");
}

#[test]
fn bad_arguments_are_refused_with_exit_2() {
    for args in [
        &["relay", "127.0.0.1:0"][..],
        &["relay", "127.0.0.1:0", "nowhere"],
        &["relay", "127.0.0.1:0", "127.0.0.1:1", "--fault", "teleport"],
        &[
            "relay",
            "127.0.0.1:0",
            "127.0.0.1:1",
            "--fault",
            "loss=200%",
        ],
        &[
            "relay",
            "127.0.0.1:0",
            "127.0.0.1:1",
            "--deny",
            "10.0.0.0/40",
        ],
        &["relay", "127.0.0.1:0", "127.0.0.1:1", "--framing", "line"],
    ] {
        let out = Command::new(sockit_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // A UDP listener cannot relay to TCP: a runtime error naming both.
    let out = Command::new(sockit_bin())
        .args(["relay", "udp:127.0.0.1:0", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot relay udp to tcp"), "{err}");
}

#[test]
fn real_peers_nc_through_the_relay_to_a_sockit_echo_server() {
    let server = common::ServeProcess::start(&["--service", "echo"]);
    let relay = Relay::start("127.0.0.1:0", &server.addr.to_string(), &[]);
    let out = Command::new("nc")
        .args(["-N", "127.0.0.1", &relay.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut nc| {
            nc.stdin.take().unwrap().write_all(b"one\ntwo\n")?;
            nc.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    relay.wait_log(&["conn 1", "8 B up, 8 B down", "client FIN"]);
}

#[test]
fn json_records_and_the_trace_file() {
    let target = echo_target();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let mut relay = Relay::start(
        "127.0.0.1:0",
        &target,
        &["--json", "--trace", trace.to_str().unwrap()],
    );
    assert_ne!(relay.addr.port(), 0, "the JSON banner names the address");
    let data = pattern(200_000);
    assert!(round_trip(relay.connect(), data.clone()) == data);
    let mut line = String::new();
    relay.stdout.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["conn"], 1);
    assert_eq!(v["bytes_up"], 200_000);
    assert_eq!(v["bytes_down"], 200_000);
    assert_eq!(v["client_close"], "fin");
    assert_eq!(v["target_close"], "fin");
    assert_eq!(v["path"], "copy");
    assert!(v["duration_secs"].as_f64().unwrap() >= 0.0);
    // The trace, reassembled per direction, is exactly what passed.
    let deadline = Instant::now() + PATIENCE;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        (up, down) = (Vec::new(), Vec::new());
        for l in std::fs::read_to_string(&trace).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap())
                .unwrap();
            assert_eq!(v["len"].as_u64().unwrap() as usize, bytes.len());
            assert!(v["time"].as_str().unwrap().ends_with('Z'));
            match v["dir"].as_str().unwrap() {
                "up" => up.extend(bytes),
                _ => down.extend(bytes),
            }
        }
        if up.len() == data.len() && down.len() == data.len() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        up == data && down == data,
        "trace {} / {}",
        up.len(),
        down.len()
    );
    relay.assert_running();
}

#[test]
fn hex_dump_shows_direction_offsets_text_and_frame_boundaries() {
    let (l, target) = listener();
    let relay = Relay::start("127.0.0.1:0", &target, &["--hex", "--framing", "line"]);
    let mut c = relay.connect();
    let mut s = accept(&l);
    // Two lines and half of a third in one write: the sticky-packet lesson.
    c.write_all(b"hello\nworld\npart").unwrap();
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).unwrap();
    relay.wait_log(&["> conn 1 up 16 bytes at offset 0"]);
    relay.wait_log(&["00000000", "68 65 6c 6c 6f 0a", "|hello.world.part|"]);
    relay.wait_log(&["line message 1 ends at offset 6"]);
    relay.wait_log(&["line message 2 ends at offset 12"]);
    relay.wait_log(&["4 bytes wait for the rest of message 3"]);
    s.write_all(b"back").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    relay.wait_log(&["< conn 1 down 4 bytes at offset 0"]);
}

// ---- UDP ----

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// A UDP target answering each datagram with "FROM <sender address>: <datagram>".
fn udp_target() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut reply = format!("FROM {from}: ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from);
        }
    });
    addr
}

/// A UDP target echoing each datagram unchanged.
fn udp_echo() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 65536];
    match s.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Every datagram that arrives within `wait` of the last one.
fn recv_all(s: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    while let Some(d) = recv(s) {
        out.push(d);
    }
    out
}

fn udp_relay(target: &str, args: &[&str]) -> (Relay, SocketAddr) {
    let relay = Relay::start("udp:127.0.0.1:0", &format!("udp:{target}"), args);
    let addr = relay.addr;
    (relay, addr)
}

#[test]
fn udp_one_upstream_socket_per_client_and_an_idle_timeout() {
    let target = udp_target();
    let (relay, addr) = udp_relay(&target, &["--idle-timeout", "300ms"]);
    let (a, b) = (udp_client(), udp_client());
    let mut senders = Vec::new();
    for (c, text) in [(&a, "a1"), (&b, "b1"), (&a, "a2")] {
        c.send_to(text.as_bytes(), addr).unwrap();
        let reply = String::from_utf8(recv(c).expect("a reply")).unwrap();
        assert!(reply.ends_with(text), "{reply}");
        senders.push(reply.split(": ").next().unwrap().to_owned());
    }
    assert_eq!(senders[0], senders[2], "one upstream socket per client");
    assert_ne!(
        senders[0], senders[1],
        "another client, another upstream socket"
    );
    let line = relay.wait_log(&["udp", "timeout", &a.local_addr().unwrap().to_string()]);
    assert!(line.contains("(2 datagrams up, 2 down)"), "{line}");
    // After the timeout, the client gets a new flow.
    a.send_to(b"a3", addr).unwrap();
    assert!(recv(&a).is_some());
    relay.wait_log(&["conn 3 udp"]);
}

#[test]
fn udp_flow_table_is_bounded_least_recently_used_out() {
    let target = udp_echo();
    let (relay, addr) = udp_relay(&target, &["--udp-flows", "2"]);
    let clients: Vec<UdpSocket> = (0..3).map(|_| udp_client()).collect();
    for c in &clients {
        c.send_to(b"x", addr).unwrap();
        assert_eq!(recv(c).unwrap(), b"x");
    }
    let first = clients[0].local_addr().unwrap().to_string();
    relay.wait_log(&["conn 1 udp", &first, "evicted"]);
}

#[test]
fn udp_loss_100_percent_makes_sockit_connect_report_no_reply() {
    let target = udp_echo();
    let (_relay, addr) = udp_relay(&target, &["--fault", "loss=100%"]);
    let out = Command::new(sockit_bin())
        .args(["connect", &format!("udp:{addr}"), "-m", "hello"])
        .args(["--timeout", "0.3", "--retries", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply"));
    // Without the fault the same command gets its echo.
    let (_relay, addr) = udp_relay(&target, &[]);
    let out = Command::new(sockit_bin())
        .args(["connect", &format!("udp:{addr}"), "-m", "hello"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
}

/// Sends `n` numbered datagrams (`0`, `1`, …) and returns what comes back, in order.
fn numbered(args: &[&str], n: usize) -> Vec<Vec<u8>> {
    let target = udp_echo();
    let (_relay, addr) = udp_relay(&target, args);
    let c = udp_client();
    for i in 0..n {
        c.send_to(format!("{i:04}").as_bytes(), addr).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    recv_all(&c, Duration::from_millis(600))
}

#[test]
fn udp_bursts_from_several_clients_arrive_complete_and_in_order() {
    // Back-to-back datagrams queue up and reach the relay's batched receive together; each
    // client's must come back complete, in order, and only to it.
    let target = udp_echo();
    let (_relay, addr) = udp_relay(&target, &[]);
    let clients: Vec<UdpSocket> = (0..4).map(|_| udp_client()).collect();
    for i in 0..25 {
        for (k, c) in clients.iter().enumerate() {
            c.send_to(format!("c{k} {i:04}").as_bytes(), addr).unwrap();
        }
    }
    for (k, c) in clients.iter().enumerate() {
        let got: Vec<String> = recv_all(c, Duration::from_millis(800))
            .iter()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect();
        let want: Vec<String> = (0..25).map(|i| format!("c{k} {i:04}")).collect();
        assert_eq!(got, want, "client {k}");
    }
    // The largest datagram IPv4 carries, both ways, byte for byte.
    let c = udp_client();
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
    c.send_to(&big, addr).unwrap();
    assert_eq!(
        recv(&c).as_deref(),
        Some(&big[..]),
        "a 65,507-byte datagram"
    );
}

#[test]
fn udp_and_tcp_relay_over_ipv6() {
    // The batched receive decodes IPv6 senders as well as IPv4 ones.
    let Ok(target) = UdpSocket::bind("[::1]:0") else {
        return; // no IPv6 loopback here
    };
    let target_addr = target.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = target.recv_from(&mut buf) {
            let _ = target.send_to(&buf[..n], from);
        }
    });
    let relay = Relay::start("udp:[::1]:0", &format!("udp:{target_addr}"), &[]);
    assert!(relay.addr.is_ipv6(), "{}", relay.addr);
    for k in 0..2 {
        let c = UdpSocket::bind("[::1]:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(format!("six {k}").as_bytes(), relay.addr)
            .unwrap();
        assert_eq!(
            recv(&c),
            Some(format!("six {k}").into_bytes()),
            "client {k}"
        );
    }
    let echo = TcpListener::bind("[::1]:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    thread::spawn(move || {
        for s in echo.incoming() {
            let Ok(mut s) = s else { break };
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    let relay = Relay::start("[::1]:0", &echo_addr.to_string(), &[]);
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.write_all(b"over v6").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "over v6");
}

#[test]
fn udp_faults_duplicate_drop_truncate_corrupt_blackhole() {
    let got = numbered(&["--fault", "up:duplicate=100%"], 5);
    assert_eq!(got.len(), 10, "every datagram twice");
    let got = numbered(&["--fault", "drop=3"], 5);
    // Both ways: up drops 0002; of 0000, 0001, 0003, 0004 coming down, the 3rd (0003).
    let texts: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(d).into())
        .collect();
    assert_eq!(texts, ["0000", "0001", "0004"]);
    let got = numbered(&["--fault", "down:truncate=2"], 3);
    assert!(got.iter().all(|d| d.len() == 2), "{got:?}");
    let got = numbered(&["--fault", "up:corrupt=100%"], 20);
    assert_eq!(got.len(), 20);
    for (i, d) in got.iter().enumerate() {
        let sent = format!("{i:04}").into_bytes();
        let flipped: u32 = d.iter().zip(&sent).map(|(a, b)| (a ^ b).count_ones()).sum();
        assert_eq!(flipped, 1, "one bit flipped in {d:?}");
    }
    assert!(numbered(&["--fault", "blackhole"], 5).is_empty());
    assert!(
        numbered(&["--fault", "down:blackhole,p=0"], 5).len() == 5,
        "p=0: never"
    );
}

#[test]
fn udp_reorder_delay_and_rate() {
    let got = numbered(&["--seed", "7", "--fault", "up:reorder=2,prob=50%"], 40);
    assert_eq!(got.len(), 40, "reordering loses nothing");
    let order: Vec<usize> = got
        .iter()
        .map(|d| String::from_utf8_lossy(d).parse().unwrap())
        .collect();
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "some overtaking: {order:?}"
    );
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..40).collect::<Vec<_>>());

    let target = udp_echo();
    let (_relay, addr) = udp_relay(&target, &["--fault", "down:latency=300ms,jitter=50ms"]);
    let c = udp_client();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let t = Instant::now();
    c.send_to(b"x", addr).unwrap();
    assert!(recv(&c).is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    let (_relay, addr) = udp_relay(&target, &["--fault", "up:rate=20"]);
    let t = Instant::now();
    for _ in 0..10 {
        c.send_to(b"r", addr).unwrap();
    }
    for _ in 0..10 {
        assert!(recv(&c).is_some());
    }
    // 10 datagrams at 20/s: the last leaves 450 ms after the first.
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn udp_loss_random_and_in_bursts() {
    let count_runs = |args: &[&str]| {
        let got = numbered(args, 400);
        let seen: std::collections::HashSet<usize> = got
            .iter()
            .map(|d| String::from_utf8_lossy(d).parse().unwrap())
            .collect();
        let lost: Vec<bool> = (0..400).map(|i| !seen.contains(&i)).collect();
        let losses = lost.iter().filter(|&&l| l).count();
        let runs = lost.windows(2).filter(|w| w[1] && !w[0]).count() + usize::from(lost[0]);
        (losses, runs)
    };
    let (losses, runs) = count_runs(&["--seed", "1", "--fault", "up:loss=30%"]);
    assert!((60..=180).contains(&losses), "{losses}");
    let random_mean = losses as f64 / runs.max(1) as f64;
    let (losses, runs) = count_runs(&["--seed", "1", "--fault", "up:loss=30%,burst=8"]);
    assert!((40..=220).contains(&losses), "{losses}");
    let burst_mean = losses as f64 / runs.max(1) as f64;
    assert!(
        burst_mean > 2.0 * random_mean,
        "bursts {burst_mean:.1} vs random {random_mean:.1}"
    );
}

// ---- TCP faults ----

#[test]
fn slicer_makes_a_line_client_see_partial_reads() {
    let (l, target) = listener();
    let relay = Relay::start(
        "127.0.0.1:0",
        &target,
        &["--fault", "down:slicer=8,delay=5ms"],
    );
    let mut c = relay.connect();
    let mut s = accept(&l);
    let line = b"this line is written in one call by the server\n";
    s.write_all(line).unwrap();
    let mut reads = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    assert_eq!(got, line);
    assert!(reads >= 4, "one write became {reads} reads");
    relay.wait_log(&["faults (seed"]);
}

#[test]
fn coalesce_merges_many_writes_into_one_read() {
    let (l, target) = listener();
    let relay = Relay::start("127.0.0.1:0", &target, &["--fault", "down:coalesce=300ms"]);
    let mut c = relay.connect();
    let mut s = accept(&l);
    s.set_nodelay(true).unwrap();
    for i in 0..5 {
        s.write_all(format!("m{i};").as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"m0;m1;m2;m3;m4;");
}

#[test]
fn latency_bandwidth_and_slow_close_delay_what_they_should() {
    let (l, target) = listener();
    let relay = Relay::start(
        "127.0.0.1:0",
        &target,
        &[
            "--fault",
            "up:latency=300ms",
            "--fault",
            "down:bandwidth=20k",
        ],
    );
    let mut c = relay.connect();
    let mut s = accept(&l);
    let t = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    s.write_all(&[7u8; 10_000]).unwrap();
    let mut back = vec![0u8; 10_000];
    c.read_exact(&mut back).unwrap();
    // 10 kB at 20 kB/s: about half a second.
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    let relay = Relay::start("127.0.0.1:0", &target, &["--fault", "up:slow_close=400ms"]);
    let c = relay.connect();
    let mut s = accept(&l);
    let t = Instant::now();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn limit_data_timeout_reset_peer_and_down() {
    let (l, target) = listener();
    // limit_data: 10 bytes pass, then the connection closes.
    let relay = Relay::start("127.0.0.1:0", &target, &["--fault", "up:limit_data=10"]);
    let mut c = relay.connect();
    let mut s = accept(&l);
    c.write_all(&[1u8; 100]).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 10);
    relay.wait_log(&["conn 1", "limit_data fault"]);

    // timeout: nothing passes; closed after the time.
    let relay = Relay::start("127.0.0.1:0", &target, &["--fault", "timeout=300ms"]);
    let mut c = relay.connect();
    let mut s = accept(&l);
    c.write_all(b"lost").unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(250));
    relay.wait_log(&["conn 1", "client timeout, target timeout"]);

    // reset_peer: both sides reset.
    let relay = Relay::start("127.0.0.1:0", &target, &["--fault", "reset_peer=100ms"]);
    let mut c = relay.connect();
    let _s = accept(&l);
    let mut buf = [0u8; 4];
    let err = c.read(&mut buf).expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);

    // down: connections are closed at once and never reach the target.
    let mut relay = Relay::start("127.0.0.1:0", &target, &["--fault", "down"]);
    let mut c = relay.connect();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    relay.wait_log(&["conn 1", "closed at once: fault down"]);
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err(), "nothing reached the target");
    relay.assert_running();
}

#[test]
fn fault_probability_is_per_connection_and_seeded() {
    let target = echo_target();
    let decide = |seed: &str| -> Vec<bool> {
        let relay = Relay::start(
            "127.0.0.1:0",
            &target,
            &["--seed", seed, "--fault", "down:latency=1ms,p=0.5"],
        );
        (1..=12)
            .map(|n| {
                round_trip(relay.connect(), b"z".to_vec());
                let line = relay.wait_log(&[&format!("conn {n} ")]);
                line.ends_with("[copy]")
            })
            .collect()
    };
    let a = decide("42");
    assert_eq!(a, decide("42"), "same seed, same choices");
    assert!(a.iter().any(|&x| x) && a.iter().any(|&x| !x), "{a:?}");
}

// ---- Load and memory ----

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_client_that_never_reads_keeps_the_relay_memory_bounded() {
    for args in [
        &[][..],
        &["--no-splice"][..],
        &["--fault", "down:slicer=1000"][..],
    ] {
        let (l, target) = listener();
        let relay = Relay::start("127.0.0.1:0", &target, args);
        let _client = relay.connect(); // never reads
        let mut server = accept(&l);
        server
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0usize;
        // Write until the relay stops taking bytes (everything on the way is full).
        while sent < 512 << 20 {
            match server.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(
            sent < 512 << 20,
            "{args:?}: the relay buffered {sent} bytes"
        );
        let rss = rss_kib(relay.child.id());
        assert!(rss < 64 * 1024, "{args:?}: relay RSS {rss} KiB");
    }
}

/// Raises this process's open-file limit (children inherit it) to at least `want`: the soft
/// limit to the hard one, and the hard one too where allowed (root, as in CI).
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim);
        if lim.rlim_max < want {
            let higher = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const higher) == 0 {
                return want;
            }
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim);
    }
    lim.rlim_cur
}

#[test]
fn ten_thousand_connections_opened_at_once_are_relayed_or_refused_cleanly() {
    const N: usize = 10_000;
    // Each relayed connection takes two descriptors in the relay (idle ones hold no pipe: pipes
    // are pooled per chunk). The relay inherits this limit; where it holds fewer than N
    // connections (a hard limit of 20,000 and no root), the excess is refused at once.
    let limit = raise_nofile(65_536);
    let capacity = ((limit - 64) / 2) as usize;
    let server = common::ServeProcess::start(&["--service", "echo", "--max-conns", "20000"]);
    let relay = Relay::start("127.0.0.1:0", &server.addr.to_string(), &[]);
    let conns: Vec<TcpStream> = (0..N).map(|_| relay.connect()).collect();
    for (i, c) in conns.iter().enumerate() {
        // A refused connection may already be closed: its write may fail.
        let _ = (&*c).write_all(format!("{i:05}\n").as_bytes());
    }
    let (mut echoed, mut closed) = (0, 0);
    for (i, c) in conns.iter().enumerate() {
        let mut b = [0u8; 6];
        match (&*c).read_exact(&mut b) {
            Ok(()) => {
                assert_eq!(b, *format!("{i:05}\n").as_bytes());
                echoed += 1;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                panic!("conn {i} neither relayed nor closed: {e}")
            }
            Err(_) => closed += 1,
        }
    }
    assert_eq!(echoed, N.min(capacity), "limit {limit}: {closed} refused");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", relay.child.id()))
        .unwrap()
        .count();
    assert!(
        fds < 2 * echoed + 300,
        "{fds} descriptors for {echoed} connections"
    );
    if closed > 0 {
        relay.wait_log(&["refused: the open file limit allows"]);
    }
    drop(conns);
    relay.wait_log(&[&format!("conn {} ", N.min(capacity)), "6 B up, 6 B down"]);
    // Still serving.
    assert_eq!(round_trip(relay.connect(), b"after\n".to_vec()), b"after\n");
}

#[test]
fn latency_delays_chunks_without_capping_throughput() {
    let target = echo_target();
    let relay = Relay::start("127.0.0.1:0", &target, &["--fault", "up:latency=200ms"]);
    // 8 MiB is at least 128 chunks of 64 KiB: one at a time, 200 ms each, that is 25 s; a
    // delay line passes it in about 200 ms plus the copying.
    let data = pattern(8 << 20);
    let t = Instant::now();
    let back = round_trip(relay.connect(), data.clone());
    assert!(back == data);
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

// ---- PROXY protocol ----

#[test]
fn proxy_v1_header_is_sent_before_the_clients_bytes() {
    let (l, target) = listener();
    let relay = Relay::start("127.0.0.1:0", &target, &["--proxy-send", "v1"]);
    let mut c = relay.connect();
    c.write_all(b"data").unwrap();
    let mut s = accept(&l);
    let expect = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\ndata",
        c.local_addr().unwrap().port(),
        relay.addr.port()
    );
    let mut got = vec![0u8; expect.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), expect);
}

#[test]
fn proxy_v2_sent_by_one_relay_is_accepted_by_another() {
    let target = echo_target();
    let inner = Relay::start("127.0.0.1:0", &target, &["--proxy-accept"]);
    let outer = Relay::start(
        "127.0.0.1:0",
        &inner.addr.to_string(),
        &["--proxy-send", "v2"],
    );
    let c = outer.connect();
    let me = c.local_addr().unwrap().to_string();
    let data = pattern(100_000);
    assert!(
        round_trip(c, data.clone()) == data,
        "no header bytes leak into the data"
    );
    // The inner relay knows the original client.
    let line = inner.wait_log(&["conn 1", "(via 127.0.0.1:"]);
    assert!(line.contains(&format!("tcp {me} (via")), "{line}");
}

#[test]
fn proxy_accept_refuses_malformed_headers_and_filters_on_the_real_client() {
    let (l, target) = listener();
    let mut relay = Relay::start(
        "127.0.0.1:0",
        &target,
        &["--proxy-accept", "--deny", "10.0.0.0/8"],
    );
    let mut buf = [0u8; 8];
    for (n, bad) in [
        (1, &b"PROXY GARBAGE here\r\nhello"[..]),
        (2, b"GET / HTTP/1.1\r\n\r\n"),
        (3, b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"),
    ] {
        let mut c = relay.connect();
        c.write_all(bad).unwrap();
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
        relay.wait_log(&[&format!("conn {n} "), "PROXY"]);
    }
    let mut c = relay.connect();
    c.write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 1000 80\r\nhi")
        .unwrap();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    relay.wait_log(&["conn 4 tcp 10.1.2.3:1000 (via", "not allowed"]);
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err(), "nothing reached the target");
    // A good header: the bytes after it are the client's.
    let mut c = relay.connect();
    c.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 1000 80\r\nhi")
        .unwrap();
    let mut s = accept(&l);
    let mut got = [0u8; 2];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");
    relay.assert_running();
}

// ---- toxiproxy-compatible API ----

/// One HTTP/1.1 request; returns the status and the body.
fn http(api: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[test]
fn api_creates_proxies_and_toxics_like_toxiproxy() {
    let relay = Relay::start("--api", "127.0.0.1:0", &[]);
    let api = relay.addr;
    let (code, body) = http(api, "GET", "/version", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(http(api, "GET", "/proxies", "").1.trim(), "{}");

    // A TCP proxy.
    let target = echo_target();
    let (code, body) = http(
        api,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"echo","listen":"127.0.0.1:0","upstream":"{target}"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let proxy = json(&body);
    assert_eq!(proxy["enabled"], true);
    let listen: SocketAddr = proxy["listen"].as_str().unwrap().parse().unwrap();
    let c = TcpStream::connect(listen).unwrap();
    assert_eq!(round_trip(c, b"plain".to_vec()), b"plain");
    // The same name again: 409.
    let (code, _) = http(
        api,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"echo","listen":"127.0.0.1:0","upstream":"{target}"}}"#),
    );
    assert_eq!(code, 409);

    // A toxic: latency downstream, in toxiproxy's units (ms).
    let (code, body) = http(
        api,
        "POST",
        "/proxies/echo/toxics",
        r#"{"type":"latency","stream":"downstream","attributes":{"latency":300}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["name"], "latency_downstream");
    let t = Instant::now();
    let c = TcpStream::connect(listen).unwrap();
    assert_eq!(round_trip(c, b"slow".to_vec()), b"slow");
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );

    // Bad toxics: 400 with a message, nothing changed.
    for bad in [
        r#"{"type":"teleport"}"#,
        r#"{"type":"latency","stream":"sideways"}"#,
        r#"{"type":"latency","attributes":{"latency":-5}}"#,
        r#"{"type":"latency","toxicity":3}"#,
        r#"{"type":"slicer","attributes":{"average_size":0}}"#,
        r#"not json"#,
    ] {
        let (code, body) = http(api, "POST", "/proxies/echo/toxics", bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(json(&body)["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (_, body) = http(api, "GET", "/proxies/echo/toxics", "");
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    assert_eq!(http(api, "GET", "/proxies/nope", "").0, 404);

    // Metrics in Prometheus text.
    let (code, body) = http(api, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(
        body.contains("sockit_relay_proxy_toxics{proxy=\"echo\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE sockit_relay_connections_total counter"),
        "{body}"
    );

    // Disable: the port closes; reset: enabled again, no toxics.
    let (code, _) = http(api, "POST", "/proxies/echo", r#"{"enabled":false}"#);
    assert_eq!(code, 200);
    assert!(TcpStream::connect(listen).is_err());
    assert_eq!(http(api, "POST", "/reset", "").0, 204);
    let (_, body) = http(api, "GET", "/proxies/echo", "");
    let proxy = json(&body);
    assert_eq!(proxy["enabled"], true);
    assert_eq!(proxy["toxics"].as_array().unwrap().len(), 0);
    let listen: SocketAddr = proxy["listen"].as_str().unwrap().parse().unwrap();
    let c = TcpStream::connect(listen).unwrap();
    assert_eq!(round_trip(c, b"again".to_vec()), b"again");
    assert_eq!(http(api, "DELETE", "/proxies/echo", "").0, 204);
    assert!(TcpStream::connect(listen).is_err());
}

#[test]
fn api_udp_proxy_with_a_loss_toxic() {
    let relay = Relay::start("--api", "127.0.0.1:0", &[]);
    let api = relay.addr;
    let target = udp_echo();
    let (code, body) = http(
        api,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"dns","listen":"udp:127.0.0.1:0","upstream":"udp:{target}"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let listen = json(&body)["listen"].as_str().unwrap().to_owned();
    let addr: SocketAddr = listen.strip_prefix("udp:").unwrap().parse().unwrap();
    let c = udp_client();
    c.send_to(b"before", addr).unwrap();
    assert_eq!(recv(&c).unwrap(), b"before");
    let (code, body) = http(
        api,
        "POST",
        "/proxies/dns/toxics",
        r#"{"name":"lossy","type":"loss","stream":"upstream","attributes":{"probability":1.0}}"#,
    );
    assert_eq!(code, 200, "{body}");
    // The open flow takes the toxic at its next datagram, and so does a new client.
    c.send_to(b"after", addr).unwrap();
    assert!(recv(&c).is_none());
    let c2 = udp_client();
    c2.send_to(b"after", addr).unwrap();
    assert!(recv(&c2).is_none());
    assert_eq!(http(api, "DELETE", "/proxies/dns/toxics/lossy", "").0, 204);
    c.send_to(b"healed", addr).unwrap();
    assert_eq!(recv(&c).unwrap(), b"healed");
    let c3 = udp_client();
    c3.send_to(b"healed", addr).unwrap();
    assert_eq!(recv(&c3).unwrap(), b"healed");
}

/// One line through an open connection to the echo target, and how long its echo took.
fn echo_line(c: &mut TcpStream, line: &[u8]) -> Duration {
    let t = Instant::now();
    c.write_all(line).unwrap();
    let mut back = vec![0u8; line.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, line);
    t.elapsed()
}

#[test]
fn api_toxic_changes_reach_connections_already_open() {
    let relay = Relay::start("--api", "127.0.0.1:0", &[]);
    let api = relay.addr;
    let target = echo_target();
    let (code, body) = http(
        api,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"echo","listen":"127.0.0.1:0","upstream":"{target}"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let listen: SocketAddr = json(&body)["listen"].as_str().unwrap().parse().unwrap();
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    echo_line(&mut c, b"before\n");

    // Latency added while the connection is open (and spliced) delays its next bytes.
    let (code, body) = http(
        api,
        "POST",
        "/proxies/echo/toxics",
        r#"{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":1500}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let slow = echo_line(&mut c, b"during\n");
    assert!(slow >= Duration::from_millis(1400), "{slow:?}");
    // Removed: the same connection is quick again.
    assert_eq!(http(api, "DELETE", "/proxies/echo/toxics/slow", "").0, 204);
    echo_line(&mut c, b"flush\n");
    let quick = echo_line(&mut c, b"after\n");
    assert!(quick < Duration::from_millis(1000), "{quick:?}");

    // A connection-wide timer starts when its toxic is added, even on an idle connection.
    let (code, body) = http(
        api,
        "POST",
        "/proxies/echo/toxics",
        r#"{"type":"reset_peer","stream":"upstream","attributes":{"timeout":200}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let mut buf = [0u8; 16];
    let t = Instant::now();
    match c.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    assert!(t.elapsed() < PATIENCE, "{:?}", t.elapsed());
    relay.wait_log(&["reset_peer fault"]);
}

#[test]
fn the_relay_restarted_on_the_same_port_serves_again() {
    let target = echo_target();
    let relay = Relay::start("127.0.0.1:0", &target, &[]);
    let port = relay.addr.port();
    let mut open = relay.connect();
    assert_eq!(round_trip(relay.connect(), b"before".to_vec()), b"before");
    drop(relay); // killed
    // The open connection ends (the process is gone), with an error or an end of stream.
    let mut b = [0u8; 1];
    assert!(matches!(open.read(&mut b), Ok(0) | Err(_)));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    // Restarted on the same port (address reuse: no wait for TIME_WAIT to expire).
    let relay = Relay::start(&format!("127.0.0.1:{port}"), &target, &[]);
    assert_eq!(relay.addr.port(), port);
    assert_eq!(round_trip(relay.connect(), b"after\n".to_vec()), b"after\n");
}

#[test]
fn api_populate_creates_keeps_and_replaces_proxies() {
    let relay = Relay::start("--api", "127.0.0.1:0", &[]);
    let api = relay.addr;
    let target = echo_target();
    let (code, body) = http(
        api,
        "POST",
        "/populate",
        &format!(
            r#"[{{"name":"a","listen":"127.0.0.1:0","upstream":"{target}"}},
                {{"name":"b","listen":"127.0.0.1:0","upstream":"{target}","enabled":false}}]"#
        ),
    );
    assert_eq!(code, 201, "{body}");
    let proxies = json(&body)["proxies"].as_array().unwrap().clone();
    assert_eq!(proxies.len(), 2);
    let a_listen = proxies[0]["listen"].as_str().unwrap().to_owned();
    assert_eq!(proxies[1]["enabled"], false);
    let a: SocketAddr = a_listen.parse().unwrap();
    let mut open = TcpStream::connect(a).unwrap();
    open.set_read_timeout(Some(PATIENCE)).unwrap();
    echo_line(&mut open, b"one\n");
    let (code, _) = http(
        api,
        "POST",
        "/proxies/a/toxics",
        r#"{"name":"keep","type":"latency","attributes":{"latency":1}}"#,
    );
    assert_eq!(code, 200);

    // Again with `a` unchanged (its bound address) and `b` enabled: `a` keeps its toxic and
    // its open connection, `b` is replaced and now listens.
    let (code, body) = http(
        api,
        "POST",
        "/populate",
        &format!(
            r#"[{{"name":"a","listen":"{a_listen}","upstream":"{target}"}},
                {{"name":"b","listen":"127.0.0.1:0","upstream":"{target}"}}]"#
        ),
    );
    assert_eq!(code, 201, "{body}");
    let proxies = json(&body)["proxies"].as_array().unwrap().clone();
    assert_eq!(proxies[0]["toxics"].as_array().unwrap().len(), 1);
    echo_line(&mut open, b"two\n");
    let b: SocketAddr = proxies[1]["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        round_trip(TcpStream::connect(b).unwrap(), b"b".to_vec()),
        b"b"
    );

    // Bad bodies change nothing.
    for bad in [
        "{}",
        r#"[{"name":"","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"}]"#,
        r#"[{"name":"c","listen":"127.0.0.1:0","upstream":"x:1"},{"name":"c","listen":"127.0.0.1:0","upstream":"x:1"}]"#,
    ] {
        let (code, body) = http(api, "POST", "/populate", bad);
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // A proxy that cannot start: 400, with the ones done before it.
    let (code, body) = http(
        api,
        "POST",
        "/populate",
        &format!(
            r#"[{{"name":"a","listen":"{a_listen}","upstream":"{target}"}},
                {{"name":"d","listen":"{a_listen}","upstream":"{target}"}}]"#
        ),
    );
    assert_eq!(code, 400, "{body}");
    let v = json(&body);
    assert!(
        v["error"].as_str().unwrap().contains("cannot listen"),
        "{body}"
    );
    assert_eq!(v["proxies"].as_array().unwrap().len(), 1);
    assert_eq!(http(api, "GET", "/proxies/d", "").0, 404);
}
