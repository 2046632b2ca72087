//! `sockit ping` through the real binary, on loopback only: a live TCP port (a listener this
//! test opens), a closed one (bound, never listening) that refuses every probe and exits 1, and
//! UDP against `sockit serve --udp --service echo`.

mod common;

use std::net::{TcpListener, UdpSocket};

use assert_cmd::cargo::cargo_bin_cmd;
use common::{PATIENCE, ServeProcess};
use serde_json::Value;

fn ping(args: &[&str]) -> std::process::Output {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd.arg("ping").args(args).output().unwrap()
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_live_port_answers_every_probe() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let out = ping(&["127.0.0.1", &port, "-c", "3", "-i", "0.05"]);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(out.status.success(), "{out:?}");
    for seq in 1..=3 {
        let prefix = format!("connected to 127.0.0.1:{port}: seq={seq} time=");
        let line = text.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("no probe {seq} in {text}"));
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(
        text.contains("3 probes sent, 3 received, 0.0% loss"),
        "{text}"
    );
    assert!(text.contains("rtt min/avg/max/mdev = "), "{text}");

    // HOST:PORT in one argument, and --json: one object per probe, then the summary.
    let out = ping(&[&format!("127.0.0.1:{port}"), "-c", "2", "-i", "0", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for (i, probe) in lines[..2].iter().enumerate() {
        assert_eq!(probe["type"], "probe");
        assert_eq!(probe["seq"], i + 1);
        assert_eq!(probe["status"], "connected");
        assert_eq!(probe["protocol"], "tcp");
        assert!(probe["time_ms"].as_f64().unwrap() >= 0.0);
    }
    let summary = &lines[2];
    assert_eq!(summary["type"], "summary");
    assert_eq!(
        (summary["sent"].as_u64(), summary["received"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(summary["loss_percent"], 0.0);
    let (min, avg, max) = (
        summary["min_ms"].as_f64().unwrap(),
        summary["avg_ms"].as_f64().unwrap(),
        summary["max_ms"].as_f64().unwrap(),
    );
    assert!(min <= avg && avg <= max, "{summary}");
    assert!(summary["mdev_ms"].as_f64().unwrap() >= 0.0);
    drop(listener);
}

#[test]
fn a_closed_port_is_refused_and_exits_1() {
    // Bound but not listening: connects are refused, and the port stays ours, so no other
    // test's listener (nor a loopback self-connect) can take it while this test runs.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    let out = ping(&["127.0.0.1", &port, "-c", "2", "-i", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        text.contains(&format!("refused by 127.0.0.1:{port}: seq=1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("refused by 127.0.0.1:{port}: seq=2")),
        "{text}"
    );
    assert!(
        text.contains("2 probes sent, 0 received, 100.0% loss"),
        "{text}"
    );
    assert!(text.contains("(2 refused)"), "{text}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sockit: error: no answer from"),
        "{stderr}"
    );

    let out = ping(&["127.0.0.1", &port, "-c", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["status"], "refused");
    assert!(lines[0]["time_ms"].is_null());
    assert_eq!(lines[1]["loss_percent"], 100.0);
    assert!(lines[1]["avg_ms"].is_null());
    drop(closed);
}

#[test]
fn udp_against_a_sockit_echo_service() {
    let server = ServeProcess::start(&["--udp", "--service", "echo"]);
    let addr = server.addr.to_string();
    let out = ping(&[&addr, "--udp", "-c", "3", "-i", "0.05"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for seq in 1..=3 {
        assert!(
            text.contains(&format!("reply from {addr}: seq={seq} time=")),
            "{text}"
        );
    }
    assert!(
        text.contains("3 probes sent, 3 received, 0.0% loss"),
        "{text}"
    );
    assert!(text.contains("udp ping statistics"), "{text}");
    server.stop();

    // The ack service answers with a receipt instead of the datagram: a reply all the same.
    let server = ServeProcess::start(&["--udp", "--service", "ack"]);
    let addr = format!("udp:{}", server.addr);
    let out = ping(&[&addr, "-c", "2", "-i", "0", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["status"], "reply");
    assert_eq!(lines[0]["protocol"], "udp");
    assert_eq!(lines[2]["received"], 2);
    server.stop();
}

#[test]
fn udp_silence_times_out_and_is_lost() {
    // A bound socket that never answers: every probe times out.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let out = ping(&[
        "127.0.0.1",
        &port,
        "--udp",
        "-c",
        "2",
        "-i",
        "0",
        "--timeout",
        "100ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("seq=1 timed out after 100 ms"), "{text}");
    assert!(
        text.contains("2 probes sent, 0 received, 100.0% loss"),
        "{text}"
    );
    assert!(text.contains("(2 timed out)"), "{text}");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["127.0.0.1"][..],
        &["127.0.0.1", "0"],
        &["127.0.0.1", "70000"],
        &["127.0.0.1", "80", "-c", "0"],
        &["127.0.0.1", "80", "--timeout", "0"],
        &["256.1.1.1", "80"],
        &["127.0.0.1", "80", "-t", "-c", "3"],
    ] {
        let out = ping(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains("Usage: sockit ping"), "{args:?}: {stderr}");
    }
}

#[test]
fn ctrl_c_ends_an_endless_ping_with_the_summary() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut child = Command::new(common::sockit_bin())
        .args(["ping", "127.0.0.1", &port, "-t", "-i", "0.05"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut probes = 0;
    while probes < 2 {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "ping ended early");
        if line.starts_with("connected to") {
            probes += 1;
        }
    }
    // SAFETY: kill() with the pid of our own child and a valid signal.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("tcp ping statistics"), "{rest}");
    assert!(rest.contains("0.0% loss"), "{rest}");
    assert!(rest.contains("rtt min/avg/max/mdev"), "{rest}");
}

#[test]
fn tls_probes_time_the_handshake_and_unix_probes_the_socket() {
    // TLS: each probe is a connect and a full handshake with the certificate checked.
    let server = ServeProcess::start(&["--tls", "--tls-ephemeral"]);
    let tls_addr = format!("tls:{}", server.addr);
    let out = ping(&[
        &tls_addr,
        "-c",
        "2",
        "-i",
        "0.05",
        "--tls-insecure",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    for probe in &lines[..2] {
        assert_eq!(probe["protocol"], "tls");
        assert_eq!(probe["status"], "connected", "{probe}");
        assert!(probe["time_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(lines[2]["received"], 2);
    // An unknown certificate fails every probe, with the reason, and exits 1.
    let out = ping(&[&tls_addr, "-c", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    // A plain TCP server does not finish a handshake.
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port().to_string();
    let out = ping(&[
        "127.0.0.1",
        &port,
        "--tls",
        "--tls-insecure",
        "-c",
        "1",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    server.stop();

    // unix: a live socket is connected to; a stale socket file refuses.
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let out = ping(&[
        &format!("unix:{}", live.display()),
        "-c",
        "2",
        "-i",
        "0.05",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["protocol"], "unix");
    assert_eq!(lines[0]["address"], format!("unix:{}", live.display()));
    assert_eq!(lines[2]["received"], 2);
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = ping(&[&format!("unix:{}", stale.display()), "-c", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(json_lines(&out)[1]["refused"], 1);
    // A unix stream socket cannot be pinged with --udp.
    let out = ping(&[&format!("unix:{}", live.display()), "--udp"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
