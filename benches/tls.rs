//! Benchmark: TLS in one run, each figure side by side with its peer.
//!
//! 1. TLS echo throughput, 50 ping-pong clients (`sockit bench --tls --conns 50`), against
//!    `sockit serve --service echo --tls` and against `ncat --ssl -l -k --sh-exec cat` (target:
//!    sockit ≥ 1.5× ncat).
//! 2. Handshakes per second: `sockit bench --tls --reconnect --conns 50` (a new connection and
//!    a full handshake, no session resumption, per message) against `sockit serve --tls` and
//!    against `openssl s_server -rev` (target ≥ 1.0×). `-rev` answers each line reversed, and
//!    bench's messages are one repeated byte, so the reversed line is the line: bench counts it
//!    as an echo. s_server handles one connection at a time; that is how it serves.
//! 3. TLS echo against sockit's own plain-TCP echo, same load (target ≥ 0.7×).
//!
//! Every server uses the same ECDSA P-256 certificate; TLS 1.3 is negotiated everywhere.
//! `TLS_BENCH_SECS` (default 5) per measurement, `TLS_BENCH_ROUNDS` (default 3) rounds,
//! medians reported. Run: `nice cargo bench --bench tls`.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(1)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `sockit serve 127.0.0.1 0 --service echo -q ARGS`; returns it and its port.
fn sockit_echo(args: &[&str], data: &Path) -> (Proc, u16) {
    let mut child = Command::new(SOCKIT)
        .args(["serve", "127.0.0.1", "0", "--service", "echo", "-q"])
        .args(args)
        .env("XDG_DATA_HOME", data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split_whitespace()
        .find_map(|w| w.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .port();
    (Proc(child), port)
}

/// `sockit bench 127.0.0.1 PORT ARGS --json`: messages per second (0 and a note on failure).
fn bench(port: u16, secs: usize, args: &[&str]) -> f64 {
    let out = Command::new(SOCKIT)
        .args(["bench", "127.0.0.1", &port.to_string()])
        .args(["--conns", "50", "--duration", &secs.to_string(), "--json"])
        .args(args)
        .output()
        .unwrap();
    let report: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "bench {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return 0.0;
        }
    };
    let errors = report["errors"].as_u64().unwrap_or(0);
    let mismatches = report["mismatches"].as_u64().unwrap_or(0);
    if errors > 0 || mismatches > 0 {
        eprintln!("  ({errors} client errors, {mismatches} mismatches: {report})");
    }
    report["messages_per_sec"].as_f64().unwrap_or(0.0)
}

/// utime + stime, with reaped children's (ncat's `sh -c cat`), of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14-17 (utime, stime, cutime, cstime) are 11..=14 after the command name.
    let ticks: u64 = f.get(11..15).map(|s| s.iter().sum()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let secs = env_usize("TLS_BENCH_SECS", 5);
    let rounds = env_usize("TLS_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("bench.crt"), dir.path().join("bench.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (c, k) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());

    let (tls, tls_port) = sockit_echo(&["--tls", "--tls-cert", c, "--tls-key", k], dir.path());
    let (plain, plain_port) = sockit_echo(&[], dir.path());
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let ncat_port = free_port();
    let ncat = has("ncat").then(|| {
        let p = Proc(
            Command::new("ncat")
                .args(["--ssl", "-l", "-k", "127.0.0.1", &ncat_port.to_string()])
                .args(["--ssl-cert", c, "--ssl-key", k, "--sh-exec", "cat"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(ncat_port);
        p
    });
    let openssl_port = free_port();
    let openssl = has("openssl").then(|| {
        let p = Proc(
            Command::new("openssl")
                .args(["s_server", "-accept", &openssl_port.to_string(), "-rev"])
                .args(["-cert", c, "-key", k, "-quiet"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(openssl_port);
        p
    });
    let tls_flags = ["--tls", "--tls-ca", c];
    let reconnect = ["--tls", "--tls-ca", c, "--reconnect"];
    println!(
        "TLS benchmark: 50 clients, 64-byte messages, {secs} s per measurement, {rounds} rounds (medians)"
    );
    let mut rows: Vec<Row> = vec![
        Row::new("echo: sockit serve --tls", tls_port, tls.0.id(), &tls_flags),
        Row::new(
            "echo: sockit serve (plain TCP)",
            plain_port,
            plain.0.id(),
            &[],
        ),
        Row::new(
            "handshakes: sockit serve --tls",
            tls_port,
            tls.0.id(),
            &reconnect,
        ),
    ];
    if let Some(p) = &ncat {
        rows.push(Row::new(
            "echo: ncat --ssl --sh-exec cat",
            ncat_port,
            p.0.id(),
            &tls_flags,
        ));
    }
    if let Some(p) = &openssl {
        rows.push(Row::new(
            "handshakes: openssl s_server -rev",
            openssl_port,
            p.0.id(),
            &reconnect,
        ));
    }
    for round in 1..=rounds {
        for row in rows.iter_mut() {
            thread::sleep(Duration::from_millis(500));
            let before = cpu_secs(row.pid);
            let args: Vec<&str> = row.args.iter().map(String::as_str).collect();
            let rate = bench(row.port, secs, &args);
            // ncat's children are reaped (and their time added) once their connections end.
            thread::sleep(Duration::from_millis(300));
            let cpu_us = (cpu_secs(row.pid) - before) * 1e6 / (rate * secs as f64).max(1.0);
            println!(
                "round {round}: {:<36} {rate:>10.0}/s  server CPU {cpu_us:>6.1} us per message",
                row.name
            );
            row.rates.push(rate);
            row.cpu.push(cpu_us);
        }
    }
    let mut get = |name: &str| {
        rows.iter_mut()
            .find(|r| r.name == name)
            .map(|r| (median(&mut r.rates), median(&mut r.cpu)))
    };
    let (tls, tls_cpu) = get("echo: sockit serve --tls").unwrap_or_default();
    let (plain, plain_cpu) = get("echo: sockit serve (plain TCP)").unwrap_or_default();
    let (hs, hs_cpu) = get("handshakes: sockit serve --tls").unwrap_or_default();
    let ncat = get("echo: ncat --ssl --sh-exec cat");
    let openssl = get("handshakes: openssl s_server -rev");
    println!();
    println!(
        "| measure | sockit | peer | ratio | target | server CPU per message, sockit / peer |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    if let Some((ncat, ncat_cpu)) = ncat {
        println!(
            "| TLS echo, 50 clients (msg/s) vs ncat --ssl --sh-exec cat | {tls:.0} | {ncat:.0} | {:.2}x | >= 1.5x | {tls_cpu:.1} / {ncat_cpu:.1} us |",
            tls / ncat.max(1.0)
        );
    }
    if let Some((openssl, openssl_cpu)) = openssl {
        println!(
            "| handshakes/s, 50 clients, --reconnect vs openssl s_server -rev | {hs:.0} | {openssl:.0} | {:.2}x | >= 1.0x | {hs_cpu:.1} / {openssl_cpu:.1} us |",
            hs / openssl.max(1.0)
        );
    }
    println!(
        "| TLS echo vs sockit plain-TCP echo, 50 clients (msg/s) | {tls:.0} | {plain:.0} | {:.2}x | >= 0.7x | {tls_cpu:.1} / {plain_cpu:.1} us |",
        tls / plain.max(1.0)
    );
}

/// One measurement: a server, the bench flags, and each round's results.
struct Row {
    name: &'static str,
    port: u16,
    pid: u32,
    args: Vec<String>,
    rates: Vec<f64>,
    cpu: Vec<f64>,
}

impl Row {
    fn new(name: &'static str, port: u16, pid: u32, args: &[&str]) -> Row {
        Row {
            name,
            port,
            pid,
            args: args.iter().map(|a| a.to_string()).collect(),
            rates: Vec::new(),
            cpu: Vec::new(),
        }
    }
}
