//! Tests of `sockit bench` through the real binary: that it tells the truth about replies
//! (error texts, mangled, late and lost ones), stops on a count or on Ctrl-C with a report,
//! rejects sizes the framing cannot carry, and stays bounded in memory and in its output.
//! The misbehaving servers are small fakes written here, on `127.0.0.1:0`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin_cmd;
use common::*;
use serde_json::Value;

fn sockit() -> assert_cmd::Command {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd
}

/// Runs `sockit bench 127.0.0.1 <port> <args>`.
fn bench(port: u16, args: &[&str]) -> Output {
    sockit()
        .args(["bench", "127.0.0.1", &port.to_string()])
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TCP server that answers each line of each connection with `reply(line)`: the text to
/// send, and whether to keep the connection open afterwards.
fn line_server(reply: fn(&str) -> (String, bool)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let (answer, keep_open) = reply(line.trim_end_matches('\n'));
                    if writer.write_all(answer.as_bytes()).is_err() || !keep_open {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

#[test]
fn error_replies_fail_the_run_and_name_the_servers_error() {
    let port = line_server(|_| ("error: unknown command\n".into(), false));
    let out = bench(port, &["--conns", "2", "--count", "5", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["errors"], 2);
    assert_eq!(report["messages"], 0);
    assert_eq!(report["mismatches"], 2);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("sockit: error: 2 of 2 clients failed"),
        "{err}"
    );
    assert!(err.contains("\"error: unknown command\""), "{err}");
}

#[test]
fn mangled_replies_are_mismatches() {
    let port = line_server(|line| (format!("X{}\n", &line[1..]), true));
    let out = bench(port, &["--conns", "2", "--count", "10", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["sent"], 20);
    assert_eq!(report["mismatches"], 20);
    assert_eq!(report["messages"], 0);
    assert_eq!(report["errors"], 0);
    let err = stderr(&out);
    assert!(
        err.contains("20 of 20 replies were not the message sent")
            && err.contains("differs from the message at byte 0"),
        "{err}"
    );
}

#[test]
fn a_count_sends_exactly_that_many_messages_per_client() {
    let server = ServeProcess::start(&["-q"]);
    let out = bench(
        server.addr.port(),
        &["--count", "100", "--conns", "3", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    for field in [
        "transport",
        "framing",
        "addr",
        "conns",
        "size",
        "duration_secs",
        "messages",
        "messages_per_sec",
        "sent",
        "mismatches",
        "lost",
        "out_of_order",
        "timeouts",
        "errors",
    ] {
        assert!(report.get(field).is_some(), "{field} missing: {report}");
    }
    for field in ["p50", "p90", "p99", "max", "mean"] {
        assert!(report["latency_us"][field].is_number(), "{field}: {report}");
    }
    assert_eq!(report["messages"], 300);
    assert_eq!(report["sent"], 300);
    for zero in ["mismatches", "lost", "out_of_order", "timeouts", "errors"] {
        assert_eq!(report[zero], 0, "{zero}");
    }
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn every_framing_round_trips_against_the_real_server() {
    for (framing, size) in [
        ("raw", "100"),
        ("len8", "255"),
        ("len32", "100K"),
        ("header", "1"),
    ] {
        let server = ServeProcess::start(&["-q", "--framing", framing]);
        let out = bench(
            server.addr.port(),
            &[
                "--framing",
                framing,
                "--size",
                size,
                "--count",
                "20",
                "--conns",
                "2",
            ],
        );
        assert!(out.status.success(), "{framing}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("messages: 40 ("), "{framing}: {text}");
        assert!(text.contains("sent: 40, mismatches: 0, lost: 0"), "{text}");
    }
}

#[test]
fn the_ack_services_receipts_count_as_right_replies() {
    for transport in [&[][..], &["--udp"]] {
        let mut serve = vec!["-q", "--service", "ack"];
        serve.extend_from_slice(transport);
        let server = ServeProcess::start(&serve);
        let mut args = vec!["--count", "20", "--conns", "2", "--json"];
        args.extend_from_slice(transport);
        let out = bench(server.addr.port(), &args);
        assert!(out.status.success(), "{transport:?}: {}", stderr(&out));
        let report = json(&out);
        assert_eq!(report["messages"], 40, "{report}");
        assert_eq!(report["mismatches"], 0, "{report}");
    }
}

/// A UDP echo server that holds back the reply to datagram 1 until datagram 2 comes, and
/// never answers datagram 3.
fn unreliable_udp_server() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    thread::spawn(move || {
        let mut held = None;
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
            match seq {
                1 => held = Some(buf[..n].to_vec()),
                3 => {}
                _ => {
                    if let Some(late) = held.take() {
                        socket.send_to(&late, peer).unwrap();
                    }
                    socket.send_to(&buf[..n], peer).unwrap();
                }
            }
        }
    });
    port
}

#[test]
fn late_udp_replies_are_out_of_order_and_missing_ones_lost() {
    let port = unreliable_udp_server();
    let out = sockit()
        .args(["bench", "--udp", "127.0.0.1", &port.to_string()])
        .args(["--conns", "1", "--count", "6", "--size", "16"])
        .args(["--timeout", "0.3", "--json"])
        .output()
        .unwrap();
    // UDP may lose datagrams: timeouts alone do not fail the run.
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["sent"], 6, "{report}");
    // 0, 2, 4 and 5 come back in time; 1 comes late, after 2 was sent; 3 never does.
    assert_eq!(report["messages"], 4, "{report}");
    assert_eq!(report["timeouts"], 2, "{report}");
    assert_eq!(report["out_of_order"], 1, "{report}");
    assert_eq!(report["lost"], 1, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
}

/// Resident memory of process `pid` in KiB, if it is still running.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn a_hundred_thousand_clients_against_a_closed_port_stay_small_and_fail_in_one_line() {
    let port = unused_port();
    let mut child = Command::new(sockit_bin())
        .args(["bench", "127.0.0.1", &port.to_string(), "--conns", "100000"])
        // Only errors: the open file limit may be lower than 100000 here.
        .env("SOCKIT_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(rss_kib(child.id()).unwrap_or(0));
        assert!(Instant::now() < deadline, "bench did not finish");
        thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.unwrap().read_to_string(&mut out).unwrap();
    child.stderr.unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "sockit: error: cannot connect to 127.0.0.1:{port}"
        )),
        "{err}"
    );
}

#[test]
fn sizes_the_framing_cannot_carry_are_usage_errors() {
    for args in [
        &["--framing", "len8", "--size", "256"][..],
        &["--framing", "len16", "--size", "64K"],
        &["--udp", "--size", "65508"],
        &["--size", "2G"],
        &["--size", "0"],
    ] {
        // Checked before connecting: nothing listens on this port.
        let out = bench(unused_port(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--size") && err.contains("Usage: sockit bench"),
            "{err}"
        );
    }
}

#[test]
fn sigint_prints_the_partial_report_and_exits_130() {
    let server = ServeProcess::start(&["-q"]);
    for as_json in [true, false] {
        let mut cmd = Command::new(sockit_bin());
        cmd.args(["bench", "127.0.0.1", &server.addr.port().to_string()])
            .args(["--conns", "2", "--duration", "60"]);
        if as_json {
            cmd.arg("--json");
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(700));
        // SAFETY: kill() with a pid we own and a valid signal number.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
            0
        );
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(started.elapsed() < PATIENCE);
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        if as_json {
            let report = json(&out);
            assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
            assert!(report["duration_secs"].as_f64().unwrap() < 30.0, "{report}");
            assert_eq!(report["errors"], 0, "{report}");
        } else {
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.contains("(interrupted)"), "{text}");
            assert!(text.contains("latency (us): p50"), "{text}");
        }
    }
}

#[test]
fn more_clients_than_the_open_file_limit_get_a_warning() {
    let server = ServeProcess::start(&["-q"]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 256 && exec "$0" "$@""#)
        .arg(sockit_bin())
        .args(["bench", "127.0.0.1", &server.addr.port().to_string()])
        .args(["--conns", "300", "--count", "1"])
        .output()
        .unwrap();
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("--conns 300") && warnings[0].contains("open file limit (256)"),
        "{err}"
    );
}

#[test]
fn verbose_logs_each_failed_client() {
    let port = line_server(|_| ("error: go away\n".into(), false));
    let out = bench(port, &["--conns", "3", "--count", "2", "-v"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let logged = err.lines().filter(|l| l.contains("client failed")).count();
    assert_eq!(logged, 3, "{err}");
    let quiet = bench(port, &["--conns", "3", "--count", "2"]);
    assert_eq!(stderr(&quiet).lines().count(), 1, "{}", stderr(&quiet));
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let server = ServeProcess::start(&["-q"]);
    let mut child = Command::new(sockit_bin())
        .args(["bench", "127.0.0.1", &server.addr.port().to_string()])
        .args(["--conns", "2", "--count", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
}
