//! Tests of `sockit ip` through the real binary: human and JSON output, several inputs in
//! order, IPv6 forms, and invalid inputs (their exact messages, exit status 2, no output).

mod common;

use assert_cmd::cargo::cargo_bin_cmd;
use common::PATIENCE;
use serde_json::{Value, json};

fn sockit() -> assert_cmd::Command {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd
}

/// Runs `sockit ip <args>`, expecting success; returns stdout.
fn ip(args: &[&str]) -> String {
    let out = sockit().arg("ip").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert!(out.stderr.is_empty(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `sockit ip --json <args>`; returns one object per line.
fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ip(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Runs `sockit ip <args>` expecting a usage error; returns stderr.
fn ip_error(args: &[&str]) -> String {
    let out = sockit().arg("ip").args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} prints nothing on stdout");
    assert!(
        stderr.contains("Usage: sockit ip"),
        "{args:?} shows usage: {stderr}"
    );
    stderr
}

#[test]
fn human_output_is_aligned_lines_with_a_blank_line_between_inputs() {
    let out = ip(&["192.168.1.10/24", "2001:db8::1"]);
    let blocks: Vec<&str> = out.trim_end().split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{out}");
    let first: Vec<&str> = blocks[0].lines().collect();
    let expected = [
        ("input", "192.168.1.10/24"),
        ("version", "IPv4"),
        ("address", "192.168.1.10"),
        ("class", "C"),
        ("kinds", "private"),
        ("network", "192.168.1.0/24"),
        ("netmask", "255.255.255.0"),
        ("wildcard", "0.0.0.255"),
        ("broadcast", "192.168.1.255"),
        ("first host", "192.168.1.1"),
        ("last host", "192.168.1.254"),
        ("hosts", "254"),
        ("address is", "the host address"),
    ];
    assert_eq!(first.len(), expected.len(), "{out}");
    // Every value starts in the same column, in both blocks.
    let column = first[0].find("192.168.1.10/24").unwrap();
    for (line, (key, value)) in first.iter().zip(expected) {
        assert!(line.starts_with(&format!("{key}:")), "{line}");
        assert_eq!(&line[column..], value, "{line}");
    }
    let second = blocks[1];
    assert!(second.starts_with("input:"), "{second}");
    for line in blocks.iter().flat_map(|b| b.lines()) {
        let (label, value) = line.split_at(column);
        assert!(label.ends_with(' ') && !value.starts_with(' '), "{line}");
    }
    let expanded = second.lines().find(|l| l.starts_with("expanded:")).unwrap();
    assert_eq!(
        &expanded[column..],
        "2001:0db8:0000:0000:0000:0000:0000:0001"
    );
    assert!(second.contains("kinds:") && second.contains("documentation"));
    assert!(!second.contains("class:"), "{second}");
}

#[test]
fn json_is_one_object_per_input_in_order() {
    let v = ip_json(&["10.1.2.3/8", "::ffff:192.0.2.1", "2001:db8::/32", "8.8.8.8"]);
    assert_eq!(v.len(), 4);
    assert_eq!(
        v[0],
        json!({
            "input": "10.1.2.3/8", "version": 4, "address": "10.1.2.3", "class": "A",
            "kinds": ["private"], "prefix": 8, "network": "10.0.0.0", "netmask": "255.0.0.0",
            "wildcard": "0.255.255.255", "broadcast": "10.255.255.255",
            "first_host": "10.0.0.1", "last_host": "10.255.255.254", "hosts": "16777214",
            "role": "host"
        })
    );
    assert_eq!(
        v[1],
        json!({
            "input": "::ffff:192.0.2.1", "version": 6, "address": "::ffff:192.0.2.1",
            "expanded": "0000:0000:0000:0000:0000:ffff:c000:0201", "kinds": ["ipv4-mapped"],
            "embedded_ipv4": "192.0.2.1"
        })
    );
    assert_eq!(v[2]["kinds"], json!(["documentation"]));
    assert_eq!(v[2]["role"], "network");
    assert_eq!(v[2]["hosts"], "79228162514264337593543950336");
    assert_eq!(v[2]["last_host"], "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
    assert!(v[2].get("broadcast").is_none());
    assert_eq!(v[3]["kinds"], json!(["global"]));
    assert_eq!(v[3]["input"], "8.8.8.8");
}

#[test]
fn host_counts_at_the_edges() {
    let v = ip_json(&[
        "1.2.3.4/31",
        "1.2.3.4/32",
        "0.0.0.0/0",
        "::/0",
        "::1/128",
        "10.0.0.255/24",
    ]);
    let hosts: Vec<&str> = v.iter().map(|o| o["hosts"].as_str().unwrap()).collect();
    assert_eq!(
        hosts,
        [
            "2",
            "1",
            "4294967294",
            "340282366920938463463374607431768211456",
            "1",
            "254"
        ]
    );
    assert!(v[0].get("broadcast").is_none() && v[1].get("broadcast").is_none());
    assert_eq!(v[0]["first_host"], "1.2.3.4");
    assert_eq!(v[0]["last_host"], "1.2.3.5");
    assert_eq!(v[5]["role"], "broadcast");
    assert_eq!(v[3]["role"], "network");
}

#[test]
fn ipv6_forms_and_embedded_ipv4() {
    let v = ip_json(&[
        "2001:DB8:0:0:0:0:0:1",
        "[fe80::1]",
        "64:ff9b::192.0.2.33",
        "2002:c000:0204::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "::",
        "::1",
        "fd12:3456::1",
        "ff02::1",
    ]);
    assert_eq!(v[0]["address"], "2001:db8::1");
    assert_eq!(v[0]["expanded"], "2001:0db8:0000:0000:0000:0000:0000:0001");
    let kinds: Vec<&Value> = v.iter().map(|o| &o["kinds"]).collect();
    assert_eq!(
        kinds,
        [
            &json!(["documentation"]),
            &json!(["link-local"]),
            &json!(["nat64"]),
            &json!(["6to4"]),
            &json!(["teredo"]),
            &json!(["unspecified"]),
            &json!(["loopback"]),
            &json!(["unique-local"]),
            &json!(["multicast"]),
        ]
    );
    assert_eq!(v[2]["embedded_ipv4"], "192.0.2.33");
    assert_eq!(v[3]["embedded_ipv4"], "192.0.2.4");
    assert_eq!(v[4]["embedded_ipv4"], "192.0.2.45");
    assert!(v[0].get("embedded_ipv4").is_none());
}

#[test]
fn ipv4_kinds_and_classes() {
    let v = ip_json(&[
        "0.0.0.0",
        "0.1.2.3",
        "100.64.0.1",
        "169.254.1.1",
        "198.18.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "203.0.113.9",
        "172.31.255.255",
        "128.0.0.1",
    ]);
    let got: Vec<(String, String)> = v
        .iter()
        .map(|o| (o["class"].to_string(), o["kinds"].to_string()))
        .collect();
    let want = [
        ("A", "unspecified"),
        ("A", "reserved"),
        ("A", "shared"),
        ("B", "link-local"),
        ("C", "benchmarking"),
        ("D", "multicast"),
        ("E", "reserved"),
        ("E", "broadcast"),
        ("C", "documentation"),
        ("B", "private"),
        ("B", "global"),
    ];
    for ((class, kinds), (wclass, wkind)) in got.iter().zip(want) {
        assert_eq!(class, &format!("\"{wclass}\""));
        assert_eq!(kinds, &format!("[\"{wkind}\"]"));
    }
}

#[test]
fn invalid_inputs_give_exact_messages_and_exit_2() {
    let e = ip_error(&["256.1.1.1"]);
    assert!(
        e.starts_with("error: 256.1.1.1: octet 1 is 256, above 255\n"),
        "{e}"
    );
    let e = ip_error(&["1.2.3"]);
    assert!(
        e.starts_with("error: 1.2.3: expected 4 octets, found 3\n"),
        "{e}"
    );
    let e = ip_error(&["010.0.0.1"]);
    assert!(
        e.starts_with("error: 010.0.0.1: octet 1 is 010: a leading zero is ambiguous"),
        "{e}"
    );
    let e = ip_error(&["10.0.0.0/33"]);
    assert!(
        e.starts_with("error: 10.0.0.0/33: prefix /33 is out of range: IPv4 prefixes are 0-32\n"),
        "{e}"
    );
    let e = ip_error(&["::1/129"]);
    assert!(e.contains("::1/129: prefix /129 is out of range: IPv6 prefixes are 0-128"));
    let e = ip_error(&["example.com"]);
    assert!(e.contains("example.com: not an IP address"), "{e}");
    let e = ip_error(&["::g"]);
    assert!(e.contains("::g: 'g' is not a hex digit"), "{e}");
    let e = ip_error(&["1.2.3.4/x"]);
    assert!(
        e.contains("1.2.3.4/x: prefix 'x' is not a number 0-32"),
        "{e}"
    );
}

#[test]
fn any_invalid_input_stops_all_output_and_every_error_is_reported() {
    let e = ip_error(&["8.8.8.8", "256.1.1.1", "::1", "1.2.3", "garbage"]);
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(
        errors,
        [
            "error: 256.1.1.1: octet 1 is 256, above 255",
            "error: 1.2.3: expected 4 octets, found 3",
            "error: garbage: not an IP address (IPv4 like 192.0.2.1, IPv6 like 2001:db8::1, \
             optionally /PREFIX)",
        ],
        "{e}"
    );
    // The same with --json: no partial NDJSON either.
    ip_error(&["--json", "8.8.8.8", "1.2.3.4/40"]);
}

#[test]
fn no_address_is_a_usage_error() {
    let e = ip_error(&[]);
    assert!(e.contains("ADDR[/PREFIX]"), "{e}");
}
