//! `--login` costs, measured against `sockit serve --service echo --login FILE` on loopback.
//!
//! `cargo bench --bench login` prints:
//!
//! 1. The time of a failed login (password sent → `login failed` read) for an unknown user and
//!    for a known user with a wrong password, over `SOCKIT_BENCH_ATTEMPTS` (default 50) attempts
//!    each, interleaved, one at a time; and of a successful login. The two failures should cost
//!    the same: both are one Argon2id verification.
//! 2. A login storm: `SOCKIT_BENCH_STORM` (default 16) clients failing logins as fast as they
//!    can, against 4 logged-in clients doing line echo ping-pong. Prints the echo rate and p99
//!    before and during the storm, and the storm's failed logins per second. Hashing runs on a
//!    few blocking threads, so echo should barely notice.
//!
//! Each client connects from its own loopback address (127.1.x.y), so the per-address limit of
//! 10 failures a minute never applies. `SOCKIT_BENCH_SECS` (default 3) per echo measurement.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server process; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(users: &std::path::Path) -> Server {
        let mut child = Command::new(SOCKIT)
            .args(["serve", "127.0.0.1", "0", "--quiet", "--service", "echo"])
            .arg("--login")
            .arg(users)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sockit serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).unwrap();
        let addr = banner
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .expect("address in the banner");
        Server {
            child,
            addr,
            _stdout: stdout,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hands out distinct loopback source addresses, 127.1.0.1 onwards.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(1);

fn next_source() -> IpAddr {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8))
}

/// A line client connected from its own loopback address.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let source = SocketAddr::new(next_source(), 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(source)?;
                socket.connect(addr).await
            })
            .and_then(|s| s.into_std())
            .expect("connect");
        stream.set_nonblocking(false).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        line.trim_end().to_owned()
    }

    fn ask(&mut self, text: &str) -> String {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .unwrap();
        self.line()
    }

    /// From the `username:` prompt: the reply to the password and how long it took.
    fn attempt(&mut self, name: &str, password: &str) -> (String, Duration) {
        assert_eq!(self.line(), "username:");
        assert_eq!(self.ask(name), "password:");
        let started = Instant::now();
        let reply = self.ask(password);
        (reply, started.elapsed())
    }
}

struct Stats {
    mean: Duration,
    median: Duration,
    p90: Duration,
}

fn stats(mut t: Vec<Duration>) -> Stats {
    t.sort();
    Stats {
        mean: t.iter().sum::<Duration>() / t.len() as u32,
        median: t[t.len() / 2],
        p90: t[t.len() * 9 / 10],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn timing(addr: SocketAddr, attempts: usize) {
    let (mut unknown, mut wrong, mut ok) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..attempts {
        let mut c = Client::connect(addr);
        let order = if i % 2 == 0 {
            [("nobody", true), ("alice", false)]
        } else {
            [("alice", false), ("nobody", true)]
        };
        for (name, is_unknown) in order {
            let (reply, took) = c.attempt(name, "wrong password");
            assert_eq!(reply, "login failed");
            if is_unknown {
                unknown.push(took);
            } else {
                wrong.push(took);
            }
        }
        if i % 2 == 0 {
            let (reply, took) = c.attempt("alice", "right password");
            assert_eq!(reply, "welcome alice");
            ok.push(took);
        }
    }
    let (u, w, s) = (stats(unknown), stats(wrong), stats(ok));
    println!("\nfailed login time, {attempts} attempts each, one at a time");
    println!("| attempt | mean | median | p90 |");
    println!("|---|---:|---:|---:|");
    for (what, st) in [
        ("unknown user", &u),
        ("wrong password", &w),
        ("success", &s),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            ms(st.mean),
            ms(st.median),
            ms(st.p90)
        );
    }
    println!(
        "unknown/wrong mean ratio: {:.3}",
        u.mean.as_secs_f64() / w.mean.as_secs_f64()
    );
}

/// Echo ping-pong from `conns` logged-in clients for `secs`: messages/s and p99.
fn echo_load(addr: SocketAddr, conns: usize, secs: f64) -> (f64, Duration) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(c.attempt("alice", "right password").0, "welcome alice");
                let mut lat = Vec::new();
                let started = Instant::now();
                while Instant::now() < stop {
                    let t = Instant::now();
                    assert_eq!(
                        c.ask("0123456789abcdef0123456789abcdef"),
                        "0123456789abcdef0123456789abcdef"
                    );
                    lat.push(t.elapsed());
                }
                (lat, started.elapsed())
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut rate = 0.0;
    for h in handles {
        let (lat, took) = h.join().unwrap();
        rate += lat.len() as f64 / took.as_secs_f64();
        all.extend(lat);
    }
    all.sort();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    (rate, p99)
}

fn storm(addr: SocketAddr, clients: usize, secs: f64) {
    let (base_rate, base_p99) = echo_load(addr, 4, secs);
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicU64::new(0));
    let fail_nanos = Arc::new(AtomicU64::new(0));
    let stormers: Vec<_> = (0..clients)
        .map(|_| {
            let (running, failures, fail_nanos) =
                (running.clone(), failures.clone(), fail_nanos.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let mut c = Client::connect(addr);
                    for _ in 0..3 {
                        if !running.load(Ordering::Relaxed) {
                            break;
                        }
                        let (reply, took) = c.attempt("alice", "guess");
                        assert_eq!(reply, "login failed");
                        failures.fetch_add(1, Ordering::Relaxed);
                        fail_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the storm fill the hashing queue first.
    std::thread::sleep(Duration::from_millis(300));
    let before = failures.load(Ordering::Relaxed);
    let started = Instant::now();
    let (storm_rate, storm_p99) = echo_load(addr, 4, secs);
    let storm_secs = started.elapsed().as_secs_f64();
    let during = failures.load(Ordering::Relaxed) - before;
    running.store(false, Ordering::Relaxed);
    for s in stormers {
        let _ = s.join();
    }
    let n = failures.load(Ordering::Relaxed).max(1);
    let mean_fail = Duration::from_nanos(fail_nanos.load(Ordering::Relaxed) / n);
    println!(
        "\nlogin storm: {clients} clients failing logins vs 4 logged-in echo clients, {secs}s each"
    );
    println!("| | echo msgs/s | echo p99 |");
    println!("|---|---:|---:|");
    println!("| no storm | {base_rate:.0} | {} |", ms(base_p99));
    println!("| during storm | {storm_rate:.0} | {} |", ms(storm_p99));
    println!(
        "echo rate ratio (storm/none): {:.2}; storm: {:.0} failed logins/s, mean failure {} \
         (queued for one of the hashing slots)",
        storm_rate / base_rate,
        during as f64 / storm_secs,
        ms(mean_fail)
    );
}

fn main() {
    let secs: f64 = env_or("SOCKIT_BENCH_SECS", 3.0);
    let attempts: usize = env_or("SOCKIT_BENCH_ATTEMPTS", 50);
    let clients: usize = env_or("SOCKIT_BENCH_STORM", 16);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    sockit::users::add_user(&users, "alice", b"right password").unwrap();
    let server = Server::start(&users);
    println!(
        "sockit --login benchmarks: {} cores, Argon2id default parameters (m=19456 KiB, t=2, p=1)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    timing(server.addr, attempts);
    storm(server.addr, clients, secs);
}
