//! Side-by-side benchmarks of `sockit serve` against minimal peers, printing ratios.
//!
//! `cargo bench --bench compare` runs, on loopback:
//!
//! 1. TCP echo, line framing, 64-byte messages, at 1, 50 and 500 ping-pong clients: sockit vs a
//!    minimal tokio echo server (a bare read/write loop) vs a thread-per-connection Python
//!    server. Target: sockit ≥ 0.9× the minimal server's messages/s, p99 ≤ 1.2× its p99.
//! 2. UDP echo and ack vs a minimal tokio UDP echo. Target: ≥ 0.9× its datagrams/s.
//! 3. 10,000 idle TCP connections: server RSS growth per connection. Target: ≤ 2 KiB.
//!
//! Every server runs as its own process, and the load always comes from the same generator,
//! `sockit bench`, in another process. Each round measures every server back to back, in
//! alternating order; rates are medians over the rounds and ratios are medians of the per-round
//! ratios, which cancel the machine's drift between rounds. Environment: `SOCKIT_BENCH_SECS` (default 3) per measurement,
//! `SOCKIT_BENCH_ROUNDS` (default 5), `SOCKIT_BENCH_ONLY` (`tcp`, `udp` or `idle`).
//!
//! The minimal peers live in this file and are started by re-running this binary with
//! `--peer tcp` or `--peer udp`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--peer") {
        raise_fd_limit();
        match args.get(i + 1).map(String::as_str) {
            Some("tcp") => minimal_tcp_echo(),
            Some("udp") => minimal_udp_echo(),
            other => panic!("unknown peer {other:?}"),
        }
        return;
    }
    raise_fd_limit();
    let secs: f64 = env_or("SOCKIT_BENCH_SECS", 3.0);
    let rounds: usize = env_or("SOCKIT_BENCH_ROUNDS", 5).max(1);
    let only = std::env::var("SOCKIT_BENCH_ONLY").unwrap_or_default();
    println!(
        "sockit side-by-side benchmarks: {secs}s per measurement, median of {rounds} rounds, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut verdicts = Vec::new();
    if only.is_empty() || only == "tcp" {
        verdicts.extend(tcp_echo(secs, rounds));
    }
    if only.is_empty() || only == "udp" {
        verdicts.extend(udp(secs, rounds));
    }
    if only.is_empty() || only == "idle" {
        verdicts.extend(idle_memory());
    }
    println!("\nsummary");
    for (what, ok) in &verdicts {
        println!("  [{}] {what}", if *ok { "ok" } else { "MISSED" });
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A server under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    SockitEcho,
    SockitAck,
    MinimalTokio,
    PythonThreads,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::SockitEcho => "sockit echo",
            Peer::SockitAck => "sockit ack",
            Peer::MinimalTokio => "minimal tokio",
            Peer::PythonThreads => "python threads",
        }
    }

    fn start(self, udp: bool) -> Server {
        let mut cmd = match self {
            Peer::SockitEcho | Peer::SockitAck => {
                let mut c = Command::new(SOCKIT);
                c.args([
                    "serve",
                    "127.0.0.1",
                    "0",
                    "--service",
                    "echo",
                    "--max-conns",
                    "20000",
                ]);
                if self == Peer::SockitAck {
                    c.args(["--service", "ack"]);
                }
                if udp {
                    c.arg("--udp");
                }
                c
            }
            Peer::MinimalTokio => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args(["--peer", if udp { "udp" } else { "tcp" }]);
                c
            }
            Peer::PythonThreads => {
                let mut c = Command::new("python3");
                c.arg("-c").arg(PYTHON_THREADED_ECHO);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("{}: no address in {line:?}", self.name()));
        // Drain the rest of stdout in the background so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        Server { child, addr }
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `sockit bench` run's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    rate: f64,
    p99: f64,
    p50: f64,
}

fn load(addr: SocketAddr, udp: bool, conns: usize, secs: f64) -> Figures {
    let mut cmd = Command::new(SOCKIT);
    cmd.args(["bench", &addr.ip().to_string(), &addr.port().to_string()])
        .args([
            "--conns",
            &conns.to_string(),
            "--duration",
            &secs.to_string(),
        ])
        .args(["--size", "64", "--json"]);
    if udp {
        cmd.args(["--udp", "--timeout", "0.5"]);
    }
    let out = cmd.output().expect("run sockit bench");
    assert!(
        out.status.success(),
        "sockit bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench json");
    Figures {
        rate: report["messages_per_sec"].as_f64().unwrap(),
        p99: report["latency_us"]["p99"].as_f64().unwrap(),
        p50: report["latency_us"]["p50"].as_f64().unwrap(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians over the rounds of one peer's figures, and of its per-round ratios to the base
/// peer. A round measures every peer back to back, so the per-round ratio cancels the slow
/// drifts of a shared machine that make raw rates vary by ±20% between rounds.
#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    median: Figures,
    rate_ratio: f64,
    p99_ratio: f64,
}

/// Measures each peer `rounds` times at `conns`, alternating order; ratios are against
/// `peers[base]`.
fn compare(
    peers: &[Peer],
    base: usize,
    udp: bool,
    conns: usize,
    secs: f64,
    rounds: usize,
) -> Vec<Summary> {
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); peers.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..peers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let server = peers[i].start(udp);
            // A short warm-up so every server is measured in its steady state.
            load(server.addr, udp, conns, 0.3);
            runs[i].push(load(server.addr, udp, conns, secs));
        }
    }
    let base_runs = runs[base].clone();
    runs.iter()
        .map(|r| Summary {
            median: Figures {
                rate: median(r.iter().map(|f| f.rate).collect()),
                p99: median(r.iter().map(|f| f.p99).collect()),
                p50: median(r.iter().map(|f| f.p50).collect()),
            },
            rate_ratio: median(
                r.iter()
                    .zip(&base_runs)
                    .map(|(f, b)| f.rate / b.rate)
                    .collect(),
            ),
            p99_ratio: median(
                r.iter()
                    .zip(&base_runs)
                    .map(|(f, b)| f.p99 / b.p99)
                    .collect(),
            ),
        })
        .collect()
}

fn print_header(title: &str) {
    println!("\n{title}");
    println!("(msgs/s and latencies: medians of the rounds; ratios: medians of per-round ratios)");
    println!(
        "{:>6}  {:<15} {:>12} {:>9} {:>9} {:>11} {:>9}",
        "conns", "server", "msgs/s", "p50 us", "p99 us", "rate ratio", "p99 ratio"
    );
}

fn print_row(conns: usize, peer: Peer, s: Summary) {
    println!(
        "{:>6}  {:<15} {:>12.0} {:>9.0} {:>9.0} {:>11.2} {:>9.2}",
        conns,
        peer.name(),
        s.median.rate,
        s.median.p50,
        s.median.p99,
        s.rate_ratio,
        s.p99_ratio
    );
}

fn tcp_echo(secs: f64, rounds: usize) -> Vec<(String, bool)> {
    print_header("TCP echo, line framing, 64-byte messages (ratios against minimal tokio)");
    let peers = [Peer::SockitEcho, Peer::MinimalTokio, Peer::PythonThreads];
    let mut verdicts = Vec::new();
    for conns in [1, 50, 500] {
        let summaries = compare(&peers, 1, false, conns, secs, rounds);
        for (peer, s) in peers.iter().zip(&summaries) {
            print_row(conns, *peer, *s);
        }
        let (rate, p99) = (summaries[0].rate_ratio, summaries[0].p99_ratio);
        verdicts.push((
            format!("tcp {conns} conns: rate {rate:.2}x (target >= 0.90)"),
            rate >= 0.9,
        ));
        verdicts.push((
            format!("tcp {conns} conns: p99 {p99:.2}x (target <= 1.20)"),
            p99 <= 1.2,
        ));
    }
    verdicts
}

fn udp(secs: f64, rounds: usize) -> Vec<(String, bool)> {
    print_header("UDP, 64-byte datagrams (ratios against minimal tokio echo)");
    let peers = [Peer::SockitEcho, Peer::SockitAck, Peer::MinimalTokio];
    let mut verdicts = Vec::new();
    for conns in [1, 50] {
        let summaries = compare(&peers, 2, true, conns, secs, rounds);
        for (peer, s) in peers.iter().zip(&summaries) {
            print_row(conns, *peer, *s);
        }
        for (i, name) in [(0, "echo"), (1, "ack")] {
            let rate = summaries[i].rate_ratio;
            verdicts.push((
                format!("udp {name} {conns} clients: rate {rate:.2}x (target >= 0.90)"),
                rate >= 0.9,
            ));
        }
    }
    verdicts
}

fn idle_memory() -> Vec<(String, bool)> {
    const CONNS: usize = 10_000;
    println!("\nIdle TCP connections: server RSS growth with {CONNS} connected clients");
    println!(
        "{:<15} {:>12} {:>12} {:>14}",
        "server", "before KiB", "after KiB", "bytes/conn"
    );
    let mut verdicts = Vec::new();
    for peer in [Peer::SockitEcho, Peer::MinimalTokio] {
        let server = peer.start(false);
        let (before, after) = hold_idle(&server, CONNS);
        let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / CONNS as f64;
        println!(
            "{:<15} {:>12} {:>12} {:>14.0}",
            peer.name(),
            before,
            after,
            per_conn
        );
        if peer == Peer::SockitEcho {
            verdicts.push((
                format!("idle: {per_conn:.0} bytes per connection (target <= 2048)"),
                per_conn <= 2048.0,
            ));
        }
    }
    verdicts
}

/// Opens `n` connections that each exchange one line and then stay idle; returns the
/// server's RSS before and after, in KiB.
fn hold_idle(server: &Server, n: usize) -> (u64, u64) {
    // One exchange first so the runtime and allocator are warm before the baseline.
    {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.write_all(b"warm\n").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = server.rss_kib();
    let mut held = Vec::with_capacity(n);
    let started = Instant::now();
    // Batches of 100: every client says one line and reads the echo, then idles.
    for _ in 0..n / 100 {
        let mut batch = Vec::with_capacity(100);
        for _ in 0..100 {
            let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
            s.write_all(b"hello\n").unwrap();
            batch.push(s);
        }
        for s in &mut batch {
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf).unwrap();
        }
        held.extend(batch);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = server.rss_kib();
    eprintln!(
        "  ({} connections opened in {:.1}s)",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    (before, after)
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The minimal tokio TCP echo server: accept, spawn, and a bare read/write loop.
fn minimal_tcp_echo() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("minimal tcp echo on {}", listener.local_addr().unwrap());
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The minimal tokio UDP echo server: one socket, receive and send back.
fn minimal_udp_echo() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        println!("minimal udp echo on {}", socket.local_addr().unwrap());
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Ok((n, addr)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], addr).await;
            }
        }
    });
}

/// A thread-per-connection Python line echo server, as the tutorials would write it.
const PYTHON_THREADED_ECHO: &str = r#"
import socket, threading
def serve(conn):
    f = conn.makefile("rb")
    for line in f:
        conn.sendall(line)
    conn.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(1024)
print("python threaded echo on 127.0.0.1:%d" % s.getsockname()[1], flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;
