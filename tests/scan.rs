//! Tests of `sockit scan` through the real binary: accuracy against listeners the test opens
//! (TCP at several concurrency levels, UDP open/closed/silent), output formats, and argument
//! errors. Every scan targets a private loopback address 127.77.X.Y (X per test, Y from the
//! process id), so it neither sees nor disturbs other tests' listeners on 127.0.0.1.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::Value;

/// A whole-range scan in a debug build on a busy machine can take a few seconds.
const SCAN_PATIENCE: Duration = Duration::from_secs(120);

fn sockit() -> assert_cmd::Command {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(SCAN_PATIENCE);
    cmd
}

/// This test's own loopback address: 127.77.`test`.(from the pid).
fn private_ip(test: u8) -> IpAddr {
    let y = (std::process::id() % 250) as u8 + 2;
    IpAddr::V4(Ipv4Addr::new(127, 77, test, y))
}

/// Runs a scan that must succeed (exit 0) and returns its JSON report.
fn scan_json(args: &[&str]) -> Value {
    let out = sockit()
        .arg("scan")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

fn open_ports(report: &Value) -> BTreeSet<u16> {
    report["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap() as u16)
        .collect()
}

/// TCP ports some process listens on at the wildcard address (0.0.0.0 or ::): those answer on
/// every local address, the private one included, so a scan of it rightly finds them too.
fn wildcard_listeners() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((addr, port)) = local.split_once(':') else {
                continue;
            };
            if *state == "0A" && addr.bytes().all(|b| b == b'0') {
                ports.extend(u16::from_str_radix(port, 16).ok());
            }
        }
    }
    ports
}

/// Checks that a scan found every port of `want` and nothing else but wildcard listeners.
fn assert_exactly(found: &BTreeSet<u16>, want: &BTreeSet<u16>, context: &str) {
    let missed: Vec<_> = want.difference(found).collect();
    assert!(missed.is_empty(), "{context}: missed {missed:?}");
    let wildcard = wildcard_listeners();
    let extra: Vec<_> = found
        .difference(want)
        .filter(|p| !wildcard.contains(p))
        .collect();
    assert!(extra.is_empty(), "{context}: extra {extra:?}");
}

#[test]
fn a_tcp_scan_finds_exactly_the_listeners_at_every_concurrency() {
    let ip = private_ip(1);
    let listeners: Vec<TcpListener> = (0..50)
        .map(|_| TcpListener::bind((ip, 0)).expect("bind a private loopback address"))
        .collect();
    let want: BTreeSet<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    assert_eq!(want.len(), 50);
    let host = ip.to_string();
    for concurrency in [Some("1"), Some("64"), Some("1024"), Some("20000"), None] {
        let mut args = vec![host.as_str(), "all"];
        if let Some(c) = concurrency {
            args.extend(["--concurrency", c]);
        }
        let report = scan_json(&args);
        let found = open_ports(&report);
        assert_exactly(&found, &want, &format!("concurrency {concurrency:?}"));
        let summary = &report["summary"];
        assert_eq!(summary["scanned"], 65535, "{summary}");
        assert_eq!(summary["open"], found.len(), "{summary}");
        assert_eq!(summary["closed"], 65535 - found.len(), "{summary}");
        assert_eq!(summary["filtered"], 0, "{summary}");
        assert!(summary["seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(report["host"], host.as_str());
        for p in report["ports"].as_array().unwrap() {
            assert_eq!(p["protocol"], "tcp");
            assert_eq!(p["state"], "open");
        }
    }
}

#[test]
fn a_tcp_scan_of_a_list_and_ranges_reports_only_those_ports() {
    let ip = private_ip(2);
    let a = TcpListener::bind((ip, 0)).unwrap();
    let b = TcpListener::bind((ip, 0)).unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    // A closed port next to an open one, both in the list; b outside it.
    let closed = if pa > 1 { pa - 1 } else { pa + 1 };
    let spec = format!("{closed},{pa}-{pa},1-3");
    let report = scan_json(&[&ip.to_string(), &spec]);
    let mut want = BTreeSet::from([pa]);
    if closed == pb {
        want.insert(pb);
    }
    assert_exactly(&open_ports(&report), &want, &report.to_string());
    assert_eq!(report["summary"]["scanned"], 5, "{report}");
}

#[test]
fn the_table_lists_open_ports_with_services_and_a_summary() {
    let ip = private_ip(3);
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Ports 1-10 carry no wildcard listener here (checked below).
    let spec = format!("{port},1-10");
    let out = sockit()
        .args(["scan", &ip.to_string(), &spec])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    if wildcard_listeners().range(1..=10).next().is_some() {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("PORT") && lines[0].contains("SERVICE"),
        "{text}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..2], [format!("{port}/tcp").as_str(), "open"], "{text}");
    assert!(
        lines[2].starts_with(&format!(
            "scanned 11 tcp ports of {ip}: 1 open, 10 closed, 0 filtered in "
        )),
        "{text}"
    );
    assert!(lines[2].ends_with(" s"), "{text}");
}

#[test]
fn nothing_open_is_still_a_completed_scan() {
    let ip = private_ip(4);
    let report = scan_json(&[&ip.to_string(), "--top", "50"]);
    let found = open_ports(&report);
    assert_exactly(&found, &BTreeSet::new(), &report.to_string());
    assert_eq!(report["summary"]["scanned"], 50);
    assert_eq!(report["summary"]["closed"], 50 - found.len());
}

#[test]
fn a_udp_scan_tells_open_closed_and_silent_ports_apart() {
    let ip = private_ip(5);
    // Open: replies to whatever arrives.
    let echo = UdpSocket::bind((ip, 0)).unwrap();
    let open = echo.local_addr().unwrap().port();
    echo.set_read_timeout(Some(SCAN_PATIENCE)).unwrap();
    let replier = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        if let Ok((_, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(b"hello", from);
        }
    });
    // Silent: bound, never answers.
    let silent = UdpSocket::bind((ip, 0)).unwrap();
    let quiet = silent.local_addr().unwrap().port();
    // Closed: bound then released.
    let closed = UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("{open},{quiet},{closed}");
    let report = scan_json(&[&ip.to_string(), &spec, "--udp", "--timeout", "1s"]);
    assert_eq!(open_ports(&report), BTreeSet::from([open]), "{report}");
    assert_eq!(report["ports"][0]["protocol"], "udp");
    assert_eq!(report["ports"][0]["state"], "open");
    let summary = &report["summary"];
    assert_eq!(summary["scanned"], 3, "{summary}");
    assert_eq!(summary["open"], 1, "{summary}");
    assert_eq!(summary["closed"], 1, "{summary}");
    assert_eq!(summary["filtered"], 1, "{summary}");
    replier.join().unwrap();
    drop(silent);
}

#[test]
fn an_unresolvable_host_fails_with_one_line() {
    let out = sockit()
        .args(["scan", "no-such-host.invalid", "80"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sockit: error: cannot scan no-such-host.invalid"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_are_usage_errors_that_say_why() {
    let cases: &[(&[&str], &str)] = &[
        (&["127.0.0.1", "10-5"], "backwards"),
        (&["127.0.0.1", "0"], "port 0"),
        (&["127.0.0.1", "1-70000"], "out of range"),
        (&["127.0.0.1", "http"], "not a port"),
        (&["127.0.0.1", "80,,81"], "empty item"),
        (&["127.0.0.1"], "no ports to scan"),
        (&["127.0.0.1", "80", "--top", "5"], "cannot be used with"),
        (&["127.0.0.1", "--top", "0"], "--top"),
        (&["127.0.0.1", "--top", "100000"], "built-in list"),
        (&["127.0.0.1", "80", "--concurrency", "0"], "--concurrency"),
        (&["127.0.0.1", "80", "--timeout", "0"], "more than 0"),
        (&["127.0.0.1", "80", "--timeout", "soon"], "not a duration"),
        (&["256.1.1.1", "80"], "IPv4"),
    ];
    for (args, why) in cases {
        let out = sockit().arg("scan").args(*args).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage: sockit scan"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn ipv6_hosts_and_the_dash_spelling_of_all_ports_work() {
    // `-` means every port (of this test's private address: nothing but wildcard listeners).
    let ip = private_ip(6);
    let report = scan_json(&[&ip.to_string(), "-"]);
    assert_eq!(report["summary"]["scanned"], 65535);
    assert_exactly(&open_ports(&report), &BTreeSet::new(), "-");
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        return; // no IPv6 loopback here
    };
    // Only this test's own port of ::1, to disturb no one else's listener.
    let port = listener.local_addr().unwrap().port();
    let report = scan_json(&["::1", &port.to_string()]);
    assert_eq!(report["host"], "::1");
    assert_eq!(open_ports(&report), BTreeSet::from([port]), "{report}");
}

#[test]
fn a_low_open_file_limit_lowers_the_concurrency_not_the_accuracy() {
    let ip = private_ip(7);
    let listeners: Vec<TcpListener> = (0..50)
        .map(|_| TcpListener::bind((ip, 0)).unwrap())
        .collect();
    let want: BTreeSet<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    // Soft and hard limit 128: far below the 4096 asked for.
    let script = format!("ulimit -n 128 && exec \"$0\" scan {ip} all --concurrency 4096 --json",);
    let out = std::process::Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_sockit")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_exactly(&open_ports(&report), &want, "ulimit -n 128");
    assert_eq!(report["summary"]["scanned"], 65535);
}
