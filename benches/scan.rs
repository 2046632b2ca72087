//! Benchmark: `sockit scan 127.0.0.1 all` against `nmap -sT -p- -T4 127.0.0.1`, side by side in
//! the same run: wall times, their ratio, and whether both found the same open ports.
//!
//! The benchmark opens 20 listeners of its own on 127.0.0.1 so there is something to find.
//! Rounds alternate which scanner goes first; the medians are compared. `SCAN_BENCH_ROUNDS`
//! sets the number of rounds (default 5). Without nmap on PATH it says so and stops.
//!
//! Run: `nice cargo bench --bench scan`.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    if Command::new("nmap").arg("--version").output().is_err() {
        println!("scan benchmark: nmap is not installed, nothing to compare with");
        return;
    }
    let rounds: usize = std::env::var("SCAN_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let listeners: Vec<TcpListener> = (0..20)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let ours: BTreeSet<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let (mut sockit_times, mut nmap_times) = (Vec::new(), Vec::new());
    let mut all_match = true;
    for round in 1..=rounds {
        let (s, n) = if round % 2 == 1 {
            let s = run_sockit();
            (s, run_nmap())
        } else {
            let n = run_nmap();
            (run_sockit(), n)
        };
        let same = s.1 == n.1;
        all_match &= same;
        let found_ours = ours.is_subset(&s.1) && ours.is_subset(&n.1);
        println!(
            "round {round}: sockit {:.3} s ({} open), nmap {:.3} s ({} open), same ports: {}, our 20 listeners found by both: {}",
            s.0.as_secs_f64(),
            s.1.len(),
            n.0.as_secs_f64(),
            n.1.len(),
            if same { "yes" } else { "NO" },
            if found_ours { "yes" } else { "NO" },
        );
        if !same {
            let only_s: Vec<_> = s.1.difference(&n.1).collect();
            let only_n: Vec<_> = n.1.difference(&s.1).collect();
            println!("  only sockit: {only_s:?}; only nmap: {only_n:?}");
        }
        sockit_times.push(s.0);
        nmap_times.push(n.0);
    }
    let (s, n) = (median(&mut sockit_times), median(&mut nmap_times));
    println!(
        "median of {rounds}: sockit {:.3} s, nmap {:.3} s, sockit/nmap = {:.2}, open-port sets match in every round: {}",
        s.as_secs_f64(),
        n.as_secs_f64(),
        s.as_secs_f64() / n.as_secs_f64(),
        if all_match { "yes" } else { "no" }
    );
    drop(listeners);
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `sockit scan 127.0.0.1 all --json` (the release binary): wall time and open ports.
fn run_sockit() -> (Duration, BTreeSet<u16>) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sockit"))
        .args(["scan", "127.0.0.1", "all", "--json"])
        .output()
        .expect("run sockit");
    let elapsed = started.elapsed();
    assert!(out.status.success(), "sockit scan failed: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sockit JSON");
    let ports = report["ports"]
        .as_array()
        .expect("a ports array")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .map(|p| p as u16)
        .collect();
    (elapsed, ports)
}

/// `nmap -sT -p- -T4 127.0.0.1` with grepable output: wall time and open ports.
fn run_nmap() -> (Duration, BTreeSet<u16>) {
    let started = Instant::now();
    let out = Command::new("nmap")
        .args(["-sT", "-p-", "-T4", "127.0.0.1", "-oG", "-"])
        .output()
        .expect("run nmap");
    let elapsed = started.elapsed();
    assert!(out.status.success(), "nmap failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ports = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.split_once("Ports: ").map(|(_, r)| r) else {
            continue;
        };
        let list = rest.split('\t').next().unwrap_or("");
        for entry in list.split(", ") {
            let mut fields = entry.split('/');
            if let (Some(port), Some("open")) = (fields.next(), fields.next()) {
                ports.extend(port.trim().parse::<u16>().ok());
            }
        }
    }
    (elapsed, ports)
}
