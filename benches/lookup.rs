//! Lookup throughput against echo, with a 100,000-entry knowledge base.
//!
//! `cargo bench --bench lookup`:
//!
//! 1. Generates a knowledge base of 100,000 distinct random 4–12-letter keywords and times
//!    loading it (in this process, and as the server logs it). Target: under 1 s.
//! 2. Starts the release binary twice — `sockit serve --service echo` and
//!    `sockit serve --service lookup --kb FILE`, each on 127.0.0.1 port 0 — and drives 50
//!    ping-pong connections (line framing) against each from one load generator in this
//!    process, in rounds that measure both servers back to back in alternating order.
//!    Two query sets: MISSES (random letter strings that match no keyword in either
//!    direction) and HITS (3–6-character substrings of random keywords). Echo gets the same
//!    queries. Target: lookup ≥ 0.8× echo's messages/s, for misses and for hits; the ratio is
//!    the median of the per-round ratios, which cancels the drift of a shared machine.
//!
//! Many short rounds rather than a few long ones: on a shared machine the background load
//! changes over seconds, and a round's two measurements must see the same load for their
//! ratio to mean something.
//!
//! Environment: `SOCKIT_BENCH_SECS` (default 1) per measurement, `SOCKIT_BENCH_ROUNDS`
//! (default 15), `SOCKIT_BENCH_CONNS` (default 50), `SOCKIT_BENCH_ENTRIES` (default 100000).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use sockit::{Knowledge, Lang};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");
const QUERIES: usize = 5_000;

fn main() {
    let secs: f64 = env_or("SOCKIT_BENCH_SECS", 1.0);
    let rounds: usize = env_or("SOCKIT_BENCH_ROUNDS", 15).max(1);
    let conns: usize = env_or("SOCKIT_BENCH_CONNS", 50).max(1);
    let entries: usize = env_or("SOCKIT_BENCH_ENTRIES", 100_000).max(100);
    println!(
        "lookup vs echo: {entries}-entry knowledge base, {conns} connections, line framing, \
         {secs}s per measurement, median of {rounds} rounds, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let kb_path = dir.path().join("kb.tsv");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let keywords = write_kb(&kb_path, entries, &mut rng);

    // Load time, in process: the library call the server makes.
    let mut loads = Vec::new();
    let mut knowledge = None;
    for _ in 0..3 {
        let started = Instant::now();
        let k = Knowledge::load(&kb_path).expect("load the generated knowledge base");
        loads.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(k.len(), entries);
        knowledge = Some(k);
    }
    let knowledge = knowledge.unwrap();
    let load_ms = median(loads.clone());
    println!(
        "\nknowledge base load, in process: median {load_ms:.0} ms (runs: {})",
        loads
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let hits: Vec<String> = (0..QUERIES)
        .map(|_| {
            let k = &keywords[rng.below(keywords.len())];
            let len = (3 + rng.below(4)).min(k.len());
            let start = rng.below(k.len() - len + 1);
            k[start..start + len].to_owned()
        })
        .collect();
    let mut misses = Vec::with_capacity(QUERIES);
    while misses.len() < QUERIES {
        let q = random_word(&mut rng, 6, 10);
        if knowledge.answer(&q, Lang::En).starts_with("not found: ") {
            misses.push(q);
        }
    }
    for q in &hits {
        assert!(!knowledge.answer(q, Lang::En).starts_with("not found: "));
    }

    for (name, queries) in [("misses", &misses), ("hits", &hits)] {
        let started = Instant::now();
        let mut bytes = 0;
        for q in queries.iter().cycle().take(100_000) {
            bytes += knowledge.answer(q, Lang::En).len();
        }
        println!(
            "in-process answer, {name}: {:.2} us per query ({bytes} reply bytes)",
            started.elapsed().as_secs_f64() * 1e6 / 100_000.0
        );
    }

    let echo = Server::start(&["--service", "echo"]);
    let lookup = Server::start(&["--service", "lookup", "--kb", kb_path.to_str().unwrap()]);
    println!("server log: {}", lookup.loaded_line());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The server really answers hits and misses as the library does.
    runtime.block_on(async {
        let replies = ask(lookup.addr, &[&hits[0], &misses[0]]).await;
        assert!(!replies[0].starts_with("not found"), "{replies:?}");
        assert_eq!(replies[1], format!("not found: {}", misses[0]));
    });

    println!(
        "\n(msgs/s: medians of the rounds; ratio: median of the per-round lookup/echo ratios)"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>8}   per-round ratios",
        "queries", "echo msgs/s", "lookup msgs/s", "ratio"
    );
    let mut verdicts = vec![(
        format!("load {load_ms:.0} ms (target < 1000)"),
        load_ms < 1000.0,
    )];
    for (name, queries) in [("misses", &misses), ("hits", &hits)] {
        let (mut echo_rates, mut lookup_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut order = [(&echo, true), (&lookup, false)];
            if round % 2 == 1 {
                order.reverse();
            }
            let (mut e, mut l) = (0.0, 0.0);
            for (server, is_echo) in order {
                runtime.block_on(drive(server.addr, queries, conns, 0.2));
                let rate = runtime.block_on(drive(server.addr, queries, conns, secs));
                if is_echo {
                    e = rate;
                } else {
                    l = rate;
                }
            }
            echo_rates.push(e);
            lookup_rates.push(l);
            ratios.push(l / e);
        }
        let ratio = median(ratios.clone());
        println!(
            "{:<8} {:>14.0} {:>14.0} {:>8.2}   {}",
            name,
            median(echo_rates),
            median(lookup_rates),
            ratio,
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        verdicts.push((
            format!("{name}: lookup {ratio:.2}x echo (target >= 0.80)"),
            ratio >= 0.8,
        ));
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// xorshift64*: reproducible random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_word(rng: &mut Rng, min: usize, max: usize) -> String {
    let len = min + rng.below(max - min + 1);
    (0..len)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect()
}

/// Writes `entries` distinct random keywords with short answers; returns the keywords.
fn write_kb(path: &Path, entries: usize, rng: &mut Rng) -> Vec<String> {
    let mut seen = HashSet::with_capacity(entries);
    let mut keywords = Vec::with_capacity(entries);
    let mut text = String::with_capacity(entries * 40);
    text.push_str("# generated by benches/lookup.rs\n");
    while keywords.len() < entries {
        let k = random_word(rng, 4, 12);
        if seen.insert(k.clone()) {
            text.push_str(&format!("{k}\tanswer {} about {k}\n", keywords.len() + 1));
            keywords.push(k);
        }
    }
    std::fs::write(path, text).expect("write the knowledge base");
    keywords
}

/// A `sockit serve` child process.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(SOCKIT)
            .args(["serve", "127.0.0.1", "0", "--max-conns", "20000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockit serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        // Keep reading the log so the server never waits on it; pass its lines on.
        let (tx, log) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Server { child, addr, log }
    }

    /// The server's "loaded N entries ... in X ms" log line.
    fn loaded_line(&self) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(10))
                .expect("a 'loaded' log line");
            if let Some(at) = line.find("loaded ") {
                return line[at..].to_owned();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends each query on one connection and returns the replies.
async fn ask(addr: SocketAddr, queries: &[&str]) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut replies = Vec::new();
    for q in queries {
        write.write_all(format!("{q}\n").as_bytes()).await.unwrap();
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        replies.push(line.trim_end().to_owned());
    }
    replies
}

/// `conns` ping-pong connections sending `queries` (each starting at its own offset) for
/// `secs` once all are connected; returns the replies per second.
async fn drive(addr: SocketAddr, queries: &[String], conns: usize, secs: f64) -> f64 {
    let lines: Arc<Vec<Vec<u8>>> = Arc::new(
        queries
            .iter()
            .map(|q| format!("{q}\n").into_bytes())
            .collect(),
    );
    let ready = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let (lines, ready, mut start) = (lines.clone(), ready.clone(), start_rx.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let (read, mut write) = stream.into_split();
            let mut read = tokio::io::BufReader::new(read);
            ready.wait().await;
            let deadline = loop {
                if let Some(at) = *start.borrow_and_update() {
                    break at + Duration::from_secs_f64(secs);
                }
                start.changed().await.expect("start signal");
            };
            let mut reply = Vec::with_capacity(256);
            let mut done = 0u64;
            let mut i = c * lines.len() / conns;
            while Instant::now() < deadline {
                write.write_all(&lines[i]).await.expect("write");
                reply.clear();
                let n = read.read_until(b'\n', &mut reply).await.expect("read");
                assert!(n > 0, "server closed the connection");
                done += 1;
                i = (i + 1) % lines.len();
            }
            done
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    start_tx.send_replace(Some(started));
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}
