//! `sockit resolve` through the real binary, against localhost and /etc/hosts only (no outside
//! network): forward, reverse, `--fqdn`, `--json`, and the one-line failure for a `.invalid`
//! name (RFC 6761 guarantees it never resolves).

mod common;

use assert_cmd::cargo::cargo_bin_cmd;
use common::PATIENCE;
use serde_json::Value;

fn sockit(args: &[&str]) -> std::process::Output {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd.arg("resolve").args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = sockit(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn localhost_resolves_ipv4_first() {
    let text = ok(&["localhost"]);
    let first = text.lines().next().unwrap();
    assert_eq!(first, "localhost 127.0.0.1", "{text}");
    let v: Value = serde_json::from_str(ok(&["--json", "localhost"]).trim()).unwrap();
    assert_eq!(v["type"], "forward");
    assert_eq!(v["input"], "localhost");
    let addrs: Vec<&str> = v["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(addrs[0], "127.0.0.1");
    let mut unique = addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), addrs.len(), "no duplicates: {addrs:?}");
    // IPv4 before IPv6.
    let first_v6 = addrs.iter().position(|a| a.contains(':'));
    assert!(first_v6.is_none_or(|i| addrs[i..].iter().all(|a| a.contains(':'))));
}

#[test]
fn address_literals_and_several_names() {
    let text = ok(&["127.0.0.1", "localhost"]);
    assert!(
        text.starts_with("127.0.0.1 127.0.0.1\nlocalhost 127.0.0.1"),
        "{text}"
    );
}

#[test]
fn reverse_of_loopback() {
    assert_eq!(ok(&["-r", "127.0.0.1"]), "127.0.0.1 localhost\n");
    let v: Value = serde_json::from_str(ok(&["--json", "-r", "127.0.0.1"]).trim()).unwrap();
    assert_eq!(v["type"], "reverse");
    assert_eq!(v["input"], "127.0.0.1");
    assert_eq!(v["name"], "localhost");
}

#[test]
fn fqdn_of_this_machine() {
    let text = ok(&["--fqdn"]);
    assert_eq!(text.lines().count(), 1);
    assert!(!text.trim().is_empty());
    let v: Value = serde_json::from_str(ok(&["--fqdn", "--json"]).trim()).unwrap();
    assert_eq!(v["type"], "fqdn");
    assert_eq!(v["fqdn"], text.trim());
    assert!(!v["hostname"].as_str().unwrap().is_empty());
}

#[test]
fn failures_name_the_name_and_the_reason() {
    let out = sockit(&["no-such-host.invalid"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sockit: error: cannot resolve 'no-such-host.invalid': "),
        "{stderr}"
    );
    let reason = stderr.trim_end().rsplit(": ").next().unwrap();
    assert!(
        !reason.is_empty() && reason != "no-such-host.invalid'",
        "{stderr}"
    );

    // --json: the failure is also an object on stdout, and the good name is still answered.
    let out = sockit(&["--json", "localhost", "no-such-host.invalid"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["addresses"][0], "127.0.0.1");
    assert_eq!(lines[1]["input"], "no-such-host.invalid");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("cannot resolve")
    );
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &[][..],
        &["-r", "localhost"],
        &["-r", "1.2.3"],
        &["bad name"],
        &["256.1.1.1"],
        &["--fqdn", "localhost"],
    ] {
        let out = sockit(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("Usage: sockit resolve"),
            "{args:?}: {stderr}"
        );
    }
}
