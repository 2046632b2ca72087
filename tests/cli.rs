//! Tests of the real `sockit` binary: argument errors and exit codes, serve/connect round
//! trips, client failure modes, logging of bad input, signals, EMFILE, and bench output.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin_cmd;
use common::*;

fn sockit() -> assert_cmd::Command {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd
}

/// Runs `sockit <args>` expecting a usage error; returns stderr.
fn usage_error(args: &[&str]) -> String {
    let out = sockit().args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert!(
        stderr.contains("Usage: sockit"),
        "{args:?} shows usage: {stderr}"
    );
    stderr
}

#[test]
fn bad_ports_are_usage_errors_that_say_why() {
    let e = usage_error(&["serve", "70000"]);
    assert!(e.contains("'70000'") && e.contains("out of range"), "{e}");
    assert!(e.contains("Usage: sockit serve"), "{e}");
    let e = usage_error(&["serve", "127.0.0.1", "http"]);
    assert!(e.contains("'http'") && e.contains("not a number"), "{e}");
    let e = usage_error(&["connect", "127.0.0.1", "70000"]);
    assert!(e.contains("[PORT]") && e.contains("out of range"), "{e}");
    let e = usage_error(&["connect", "127.0.0.1:70000"]);
    assert!(e.contains("<ADDR>") && e.contains("out of range"), "{e}");
    assert!(e.contains("Usage: sockit connect"), "{e}");
    let e = usage_error(&["connect", "127.0.0.1", "0"]);
    assert!(e.contains("port 0"), "{e}");
}

#[test]
fn bad_addresses_are_usage_errors_that_say_why() {
    let e = usage_error(&["serve", "256.1.1.1", "9000"]);
    assert!(e.contains("'256.1.1.1'") && e.contains("IPv4"), "{e}");
    let e = usage_error(&["connect", "256.1.1.1", "9000"]);
    assert!(e.contains("<ADDR>") && e.contains("IPv4"), "{e}");
    let e = usage_error(&["connect", "::1:x:9000"]);
    assert!(e.contains("brackets"), "{e}");
    let e = usage_error(&["connect", "127.0.0.1"]);
    assert!(e.contains("no port"), "{e}");
    let e = usage_error(&["connect", "--udp", "unix:/tmp/sockit.sock"]);
    assert!(e.contains("unix stream socket"), "{e}");
    let e = usage_error(&["bench", "bad host", "9000"]);
    assert!(e.contains("'bad host'"), "{e}");
}

#[test]
fn unknown_framing_and_service_are_usage_errors() {
    let e = usage_error(&["serve", "--framing", "len24"]);
    assert!(
        e.contains("--framing") && e.contains("unknown framing 'len24'"),
        "{e}"
    );
    assert!(e.contains("len32le"), "lists the valid names: {e}");
    let e = usage_error(&["serve", "--service", "gopher"]);
    assert!(
        e.contains("--service") && e.contains("unknown service 'gopher'"),
        "{e}"
    );
    let e = usage_error(&["serve", "--udp", "--framing", "len32"]);
    assert!(e.contains("--framing applies to TCP only"), "{e}");
    let e = usage_error(&["serve", "--max-conns", "0"]);
    assert!(e.contains("--max-conns"), "{e}");
    let e = usage_error(&["connect", "127.0.0.1", "9", "--timeout", "soon"]);
    assert!(e.contains("--timeout") && e.contains("'soon'"), "{e}");
}

#[test]
fn help_and_version_exit_zero() {
    sockit().arg("--help").assert().success();
    sockit().args(["serve", "--help"]).assert().success();
    let out = sockit().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("sockit ")
    );
}

#[test]
fn serve_prints_how_to_connect_and_connect_gets_replies() {
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args(["connect", "127.0.0.1", &port, "-m", "hello", "-m", "world"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "hello\nworld\n");
    let log = server.stop();
    assert!(log.contains("listening on tcp 127.0.0.1:"), "{log}");
    assert!(log.contains("connect from 127.0.0.1:"), "{log}");
    assert!(
        log.contains("disconnect 127.0.0.1:") && log.contains("2 messages in, 2 out"),
        "{log}"
    );
}

#[test]
fn serve_banner_names_the_service_and_a_command_to_connect() {
    let mut cmd = Command::new(sockit_bin());
    cmd.args([
        "serve",
        "127.0.0.1",
        "0",
        "--framing",
        "len32le",
        "--service",
        "ack",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = vec![0u8; 512];
    let mut got = 0;
    while !String::from_utf8_lossy(&banner[..got]).contains("connect with") {
        got += stdout.read(&mut banner[got..]).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    let banner = String::from_utf8_lossy(&banner[..got]).into_owned();
    assert!(
        banner.contains("ack service listening on tcp 127.0.0.1:"),
        "{banner}"
    );
    assert!(banner.contains("(len32le framing)"), "{banner}");
    assert!(
        banner.contains("connect with: sockit connect --framing len32le 127.0.0.1 "),
        "{banner}"
    );
}

#[test]
fn connect_pipe_mode_sends_each_line_and_prints_replies() {
    let server = ServeProcess::start(&["--service", "ack"]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args(["connect", "127.0.0.1", &port])
        .write_stdin("one\ntwo\r\nthree")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let sizes: Vec<&str> = text
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap_or(""))
        .collect();
    assert_eq!(sizes, ["3", "3", "5"], "{text}");
}

#[test]
fn connect_prints_bye_and_stops_at_a_quit_word() {
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args(["connect", "127.0.0.1", &port])
        .write_stdin("before\nbye\nafter\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "before\nbye\n");
}

#[test]
fn connect_over_udp_sends_datagrams() {
    let server = ServeProcess::start(&["--udp", "--service", "ack"]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args(["connect", "--udp", "127.0.0.1", &port, "-m", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("ack ") && text.ends_with(" 5 bytes\n"),
        "{text}"
    );
    let log = server.stop();
    assert!(log.contains("new udp peer 127.0.0.1:"), "{log}");
}

#[test]
fn connect_to_a_closed_port_fails_with_one_line_naming_it() {
    let port = unused_port();
    let out = sockit()
        .args(["connect", "127.0.0.1", &port.to_string(), "-m", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")) && err.contains("refused"),
        "{err}"
    );
}

#[test]
fn udp_connect_without_reply_gives_up_after_retries() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let out = sockit()
        .args(["connect", "--udp", "127.0.0.1", &port, "-m", "anyone?"])
        .args(["--timeout", "0.2", "--retries", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("no reply from 127.0.0.1:{port} within 0.6")),
        "{err}"
    );
    // All three tries reached the silent socket.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let tries = std::iter::from_fn(|| silent.recv(&mut buf).ok()).count();
    assert_eq!(tries, 3);
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[test]
fn tcp_connect_without_reply_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let out = sockit()
        .args([
            "connect",
            "127.0.0.1",
            &port,
            "-m",
            "hello",
            "--timeout",
            "0.3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no reply from 127.0.0.1:"), "{err}");
    drop(listener);
}

#[test]
fn bad_input_is_logged_and_the_server_keeps_serving() {
    let server = ServeProcess::start(&["--framing", "len32", "--max-frame", "1K"]);
    let mut bad = TcpStream::connect(server.addr).unwrap();
    bad.write_all(&100_000u32.to_be_bytes()).unwrap();
    let mut reply = Vec::new();
    bad.read_to_end(&mut reply).unwrap();
    assert!(String::from_utf8_lossy(&reply).contains("exceeds the limit of 1024 bytes"));
    let port = server.addr.port().to_string();
    sockit()
        .args([
            "connect",
            "--framing",
            "len32",
            "127.0.0.1",
            &port,
            "-m",
            "ok",
        ])
        .assert()
        .success()
        .stdout("ok\n");
    let log = server.stop();
    assert!(
        log.contains("WARN") && log.contains("frame of 100000 bytes exceeds the limit"),
        "{log}"
    );
}

#[test]
fn sigterm_and_sigint_stop_the_server_with_status_zero() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut server = ServeProcess::start(&[]);
        let mut idle = TcpStream::connect(server.addr).unwrap();
        idle.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 3];
        idle.read_exact(&mut buf).unwrap();
        let started = Instant::now();
        server.signal(sig);
        let (status, log) = server.wait(Duration::from_secs(5));
        assert!(status.success(), "{status}: {log}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The client was closed, not abandoned.
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(log.contains("shutting down"), "{log}");
    }
}

#[test]
fn a_file_descriptor_limit_below_max_conns_lowers_it_and_refuses_the_excess() {
    // 64 descriptors cannot hold the default 10,000 connections: the server says so once,
    // serves what fits, and refuses the rest with the usual line instead of leaving them
    // hanging in the backlog.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" serve 127.0.0.1 0 --service echo"#)
        .arg(sockit_bin());
    let server = ServeProcess::spawn(cmd);
    let mut crowd = Vec::new();
    for _ in 0..120 {
        match TcpStream::connect(server.addr) {
            Ok(s) => crowd.push(s),
            Err(_) => break,
        }
    }
    assert!(
        crowd.len() > 64,
        "more clients than descriptors ({})",
        crowd.len()
    );
    let (mut served, mut refused) = (0, 0);
    for s in &mut crowd {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        if s.write_all(b"hi\n").is_err() {
            refused += 1;
            continue;
        }
        let mut reply = String::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = s.read(&mut byte) {
            if byte[0] == b'\n' {
                break;
            }
            reply.push(byte[0] as char);
        }
        match reply.as_str() {
            "hi" => served += 1,
            r if r.starts_with("error: server busy") => refused += 1,
            // A refused client whose "hi" raced the close may see a reset instead.
            "" => refused += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    assert!(served <= 64, "served {served} with 64 descriptors");
    drop(crowd);
    // Once the crowd leaves, the server answers again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let attempt = TcpStream::connect(server.addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"back?\n")?;
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf)?;
            Ok(buf)
        });
        match attempt {
            Ok(buf) if buf == *b"back?\n" => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("server never recovered: {other:?}"),
        }
    }
    let log = server.stop();
    assert_eq!(
        log.matches("cannot hold --max-conns 10000").count(),
        1,
        "{log}"
    );
}

#[test]
fn bench_reports_json_against_an_echo_server() {
    let server = ServeProcess::start(&["-q"]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args([
            "bench",
            "127.0.0.1",
            &port,
            "--conns",
            "4",
            "--duration",
            "0.5",
        ])
        .args(["--size", "32", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["conns"], 4);
    assert_eq!(report["size"], 32);
    assert_eq!(report["errors"], 0);
    assert!(report["messages"].as_u64().unwrap() > 0);
    let lat = &report["latency_us"];
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
    assert!(lat["p99"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());
}

#[test]
fn bench_over_udp_and_in_text_form() {
    let server = ServeProcess::start(&["--udp", "-q"]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args(["bench", "--udp", "127.0.0.1", &port, "--conns", "2"])
        .args(["--duration", "0.3", "--size", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("udp 2 clients x 100-byte messages"), "{text}");
    assert!(text.contains("latency (us): p50"), "{text}");
}

#[test]
fn bench_against_nothing_fails_cleanly() {
    let port = unused_port();
    let out = sockit()
        .args(["bench", "127.0.0.1", &port.to_string(), "--conns", "2"])
        .args(["--duration", "0.2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut child = Command::new(sockit_bin())
        .args(["connect", "127.0.0.1", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..100 {
        if writeln!(stdin, "line {i}").is_err() {
            break;
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn verbose_serve_logs_every_message_and_quiet_logs_none_of_the_chatter() {
    let server = ServeProcess::start(&["-v"]);
    let port = server.addr.port().to_string();
    sockit()
        .args(["connect", "127.0.0.1", &port, "-m", "12345"])
        .assert()
        .success();
    let log = server.stop();
    assert!(
        log.contains("message from 127.0.0.1:") && log.contains("5 bytes"),
        "{log}"
    );

    let server = ServeProcess::start(&["-q"]);
    let port = server.addr.port().to_string();
    sockit()
        .args(["connect", "127.0.0.1", &port, "-m", "12345"])
        .assert()
        .success();
    let log = server.stop();
    assert!(!log.contains("connect from"), "{log}");
}

#[test]
fn a_little_endian_header_sent_to_header_framing_is_told_to_try_headerle() {
    let server = ServeProcess::start(&["--framing", "header"]);
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    // The tutorial's file client: struct.pack('i', len(header)), the JSON header, the body.
    let header = br#"{"file_name": "a.txt", "len": 5}"#;
    c.write_all(&(header.len() as u32).to_le_bytes()).unwrap();
    c.write_all(header).unwrap();
    c.write_all(b"hello").unwrap();
    let mut reply = Vec::new();
    let _ = c.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("error: header of") && text.contains("try --framing headerle"),
        "{text}"
    );
    let log = server.stop();
    assert!(log.contains("try --framing headerle"), "{log}");
}
