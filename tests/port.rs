//! `sockit port` through the real binary: numbers to services, names (and aliases, in any
//! case) to ports, IANA ranges, the ephemeral-range check, `--json`, and the exit codes of
//! unknown names (1) and malformed or out-of-range arguments (2).

mod common;

use assert_cmd::cargo::cargo_bin_cmd;
use common::PATIENCE;
use serde_json::Value;

fn sockit(args: &[&str]) -> std::process::Output {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd.arg("port").args(args).output().unwrap()
}

fn stdout(args: &[&str]) -> String {
    let out = sockit(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    stdout(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn services(v: &Value) -> Vec<(String, String)> {
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(!s["description"].as_str().unwrap().is_empty());
            (
                s["name"].as_str().unwrap().to_owned(),
                s["protocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(name: &str, proto: &str) -> (String, String) {
    (name.to_owned(), proto.to_owned())
}

#[test]
fn a_number_lists_its_tcp_and_udp_services() {
    let text = stdout(&["80"]);
    assert!(text.starts_with("80: well-known (0-1023)"), "{text}");
    assert!(text.contains("80/tcp") && text.contains("80/udp"), "{text}");
    assert!(text.contains("http"), "{text}");

    let v = &json(&["80"])[0];
    assert_eq!(v["port"], 80);
    assert_eq!(v["range"], "well-known");
    assert_eq!(services(v), [pair("http", "tcp"), pair("http", "udp")]);
    assert_eq!(
        services(&json(&["53"])[0]),
        [pair("domain", "tcp"), pair("domain", "udp")]
    );
    assert_eq!(services(&json(&["123"])[0]), [pair("ntp", "udp")]);
    assert_eq!(
        services(&json(&["443"])[0]),
        [pair("https", "tcp"), pair("https", "udp")]
    );
}

#[test]
fn a_name_gives_its_port_ignoring_case_and_accepting_aliases() {
    for (name, port, service) in [
        ("ssh", 22, pair("ssh", "tcp")),
        ("SSH", 22, pair("ssh", "tcp")),
        ("Https", 443, pair("https", "tcp")),
        ("www", 80, pair("http", "tcp")),
        ("postgres", 5432, pair("postgresql", "tcp")),
        ("ntp", 123, pair("ntp", "udp")),
    ] {
        let v = &json(&[name])[0];
        assert_eq!(v["port"], port, "{name}");
        assert_eq!(v["input"], name);
        assert_eq!(services(v)[0], service, "{name}");
    }
    let dns = &json(&["dns"])[0];
    assert_eq!(dns["port"], 53);
    assert_eq!(
        services(dns),
        [pair("domain", "tcp"), pair("domain", "udp")]
    );
    let text = stdout(&["ssh"]);
    assert!(text.starts_with("22: well-known"), "{text}");
    assert!(
        text.contains("22/tcp") && !text.contains("22/udp"),
        "{text}"
    );
}

#[test]
fn ranges_at_their_boundaries_and_one_line_per_input() {
    let ports = ["0", "1023", "1024", "49151", "49152", "65535"];
    let found = json(&ports);
    let ranges: Vec<&str> = found.iter().map(|v| v["range"].as_str().unwrap()).collect();
    assert_eq!(
        ranges,
        [
            "well-known",
            "well-known",
            "registered",
            "registered",
            "dynamic",
            "dynamic"
        ]
    );
    let numbers: Vec<u64> = found.iter().map(|v| v["port"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [0, 1023, 1024, 49151, 49152, 65535]);
    assert!(found[5]["services"].as_array().unwrap().is_empty());
}

#[test]
fn ephemeral_agrees_with_proc() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let n: Vec<u16> = t
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (n.len() == 2).then(|| (n[0], n[1]))
        });
    for port in ["22", "32768", "49152", "61000", "65535"] {
        let v = &json(&[port])[0];
        let p: u16 = port.parse().unwrap();
        match range {
            Some((lo, hi)) => assert_eq!(v["ephemeral"], (lo..=hi).contains(&p), "{port}"),
            None => assert!(v["ephemeral"].is_null()),
        }
    }
}

#[test]
fn unknown_names_exit_1_with_one_line() {
    let out = sockit(&["no-such-service"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'no-such-service'"), "{stderr}");
    // The known ones are still answered.
    let out = sockit(&["ssh", "no-such-service", "80"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("22/tcp") && text.contains("80/tcp"), "{text}");
}

#[test]
fn malformed_or_out_of_range_exit_2() {
    for (arg, why) in [
        ("65536", "out of range"),
        ("99999999999", "out of range"),
        ("-1", ""),
        ("8o", "neither a port number"),
        ("a b", "neither a port number"),
        ("", "empty"),
    ] {
        let out = sockit(&[arg]);
        assert_eq!(out.status.code(), Some(2), "{arg:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(why), "{arg:?}: {stderr}");
        assert!(stderr.contains("Usage: sockit port"), "{stderr}");
    }
    assert_eq!(sockit(&[]).status.code(), Some(2));
}
