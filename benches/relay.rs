//! Benchmark: `sockit relay` against socat and a direct connection.
//!
//! 1. Bulk: 1 GiB (`RELAY_BENCH_MB`, default 1024) from an in-bench sender to an in-bench sink
//!    (1 MiB writes and reads) directly, through `sockit relay` (splice), through
//!    `sockit relay --no-splice` (copy) and through `socat TCP-LISTEN:P,fork,reuseaddr TCP:…`
//!    (default options), and through a floor splice relay (the least a splice relay does: a
//!    blocking thread per direction, socket → 1 MiB pipe → socket, in this process).
//!    Throughput, and CPU seconds per GiB of the relaying process from /proc/PID/stat (socat:
//!    its forked child's time, collected when the child is reaped).
//! 2. Latency: `sockit bench --rate 10 --conns 1000` (open loop) against `sockit serve
//!    --service echo`, directly, through the relay, through a floor relay (the least a
//!    user-space relay does: one epoll thread reading and sending, in this process) and through
//!    socat; `RELAY_BENCH_LAT_ROUNDS` (default 3) interleaved rounds, medians, and the p50 and
//!    p99 each relay adds.
//! 3. UDP: `sockit bench udp:… --conns 50` against a UDP echo server, directly and through the
//!    relay: datagrams per second.
//!
//! `RELAY_BENCH_ROUNDS` (default 3) rounds of the bulk test; medians reported.
//! Run: `nice cargo bench --bench relay`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// A sink that reads and discards everything, reporting each connection's byte count.
fn sink() -> (SocketAddr, std::sync::mpsc::Receiver<(u64, Instant)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = tx.send((total, Instant::now()));
            });
        }
    });
    (addr, rx)
}

/// Sends `bytes` to `addr`; returns the seconds until the sink has them all.
fn bulk(addr: SocketAddr, bytes: u64, done: &std::sync::mpsc::Receiver<(u64, Instant)>) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    let buf = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    drop(s);
    let (got, end) = done.recv_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(got, bytes, "the sink got every byte");
    (end - start).as_secs_f64()
}

/// utime + stime (+ reaped children's) of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14-17 (utime, stime, cutime, cstime) are 11..15 after the ')' split.
    let ticks: u64 = f.get(11..15).map(|s| s.iter().sum()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a sockit command that prints an address in its first stdout line.
fn start_sockit(args: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(SOCKIT)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (Proc(child), addr)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        thread::sleep(Duration::from_millis(20));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(SOCKIT)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("bench {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The least a user-space relay can do, as a floor for the latency figures: one thread, one
/// level-triggered epoll set, each readable socket read into one 16 KiB buffer and sent on to
/// its partner. No runtime, no accounting, no faults. Returns its address.
fn floor_relay(target: SocketAddr) -> SocketAddr {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        // SAFETY (this block's calls): plain syscalls on descriptors this thread owns; the
        // buffers passed are valid for the lengths given.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let add = |fd: i32| {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        };
        let lfd = l.as_raw_fd();
        add(lfd);
        let mut partner = std::collections::HashMap::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 256, -1) };
            for ev in events.iter().take(n.max(0) as usize) {
                let fd = ev.u64 as i32;
                if fd == lfd {
                    while let Ok((c, _)) = l.accept() {
                        let Ok(t) = TcpStream::connect(target) else {
                            continue;
                        };
                        let _ = (c.set_nodelay(true), t.set_nodelay(true));
                        let _ = (c.set_nonblocking(true), t.set_nonblocking(true));
                        let (c, t) = (c.into_raw_fd(), t.into_raw_fd());
                        partner.insert(c, t);
                        partner.insert(t, c);
                        add(c);
                        add(t);
                    }
                    continue;
                }
                let Some(&to) = partner.get(&fd) else {
                    continue;
                };
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
                {
                    continue;
                }
                if r <= 0 {
                    partner.remove(&fd);
                    partner.remove(&to);
                    unsafe { (libc::close(fd), libc::close(to)) };
                    continue;
                }
                let mut off = 0;
                while off < r as usize {
                    let w = unsafe {
                        libc::send(
                            to,
                            buf[off..].as_ptr().cast(),
                            r as usize - off,
                            libc::MSG_NOSIGNAL,
                        )
                    };
                    if w > 0 {
                        off += w as usize;
                    } else if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::WouldBlock
                    {
                        let mut p = libc::pollfd {
                            fd: to,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        unsafe { libc::poll(&mut p, 1, 100) };
                    } else {
                        break;
                    }
                }
            }
        }
    });
    addr
}

/// The least a splice relay can do, as a floor for the bulk figures: for each connection,
/// one blocking thread per direction splicing socket → 1 MiB pipe → socket. Returns its
/// address.
fn floor_splice_relay(target: SocketAddr) -> SocketAddr {
    use std::os::fd::AsRawFd;
    fn pump(from: TcpStream, to: TcpStream) {
        let mut fds = [0; 2];
        // SAFETY (this function's calls): plain syscalls on descriptors owned here (the
        // streams live until the end of the function; the pipe's are closed at its end).
        unsafe {
            libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC);
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20);
        }
        loop {
            let n = unsafe {
                libc::splice(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    fds[1],
                    std::ptr::null_mut(),
                    1 << 20,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n <= 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                let m = unsafe {
                    libc::splice(
                        fds[0],
                        std::ptr::null_mut(),
                        to.as_raw_fd(),
                        std::ptr::null_mut(),
                        left as usize,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if m <= 0 {
                    break;
                }
                left -= m;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        unsafe { (libc::close(fds[0]), libc::close(fds[1])) };
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { break };
            let Ok(t) = TcpStream::connect(target) else {
                continue;
            };
            let (c2, t2) = (c.try_clone().unwrap(), t.try_clone().unwrap());
            thread::spawn(move || pump(c, t));
            thread::spawn(move || pump(t2, c2));
        }
    });
    addr
}

fn main() {
    let mib = env_usize("RELAY_BENCH_MB", 1024) as u64;
    let rounds = env_usize("RELAY_BENCH_ROUNDS", 3);
    let bytes = mib << 20;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let (sink_addr, done) = sink();
    let target = sink_addr.to_string();
    let has_socat = Command::new("socat").arg("-V").output().is_ok();
    println!("relay benchmark: {mib} MiB per transfer, {rounds} rounds");

    let (relay, relay_addr) = start_sockit(&["relay", "127.0.0.1:0", &target, "-q"]);
    let (copy, copy_addr) = start_sockit(&["relay", "127.0.0.1:0", &target, "-q", "--no-splice"]);
    let socat_port = free_port();
    let socat = has_socat.then(|| {
        let p = Proc(
            Command::new("socat")
                .arg(format!("TCP-LISTEN:{socat_port},fork,reuseaddr"))
                .arg(format!("TCP:{target}"))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(socat_port);
        // The probe connection's child must be gone before the CPU counts start.
        thread::sleep(Duration::from_millis(300));
        let _ = done.recv_timeout(Duration::from_secs(2));
        p
    });
    let socat_addr: SocketAddr = format!("127.0.0.1:{socat_port}").parse().unwrap();

    let floor_addr = floor_splice_relay(sink_addr);
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("direct", vec![], vec![]),
        ("sockit relay (splice)", vec![], vec![]),
        ("sockit relay --no-splice", vec![], vec![]),
        ("floor splice relay", vec![], vec![]),
    ];
    if socat.is_some() {
        rows.push(("socat fork", vec![], vec![]));
    }
    for round in 1..=rounds {
        for (name, secs, cpu) in rows.iter_mut() {
            let (addr, pid) = match *name {
                "direct" => (sink_addr, None),
                "sockit relay (splice)" => (relay_addr, Some(relay.0.id())),
                "sockit relay --no-splice" => (copy_addr, Some(copy.0.id())),
                // In this process: its CPU is not separable from the sender's and sink's.
                "floor splice relay" => (floor_addr, None),
                _ => (socat_addr, socat.as_ref().map(|p| p.0.id())),
            };
            thread::sleep(Duration::from_millis(300));
            let before = pid.map(cpu_secs).unwrap_or(0.0);
            let t = bulk(addr, bytes, &done);
            // socat's child is reaped (and its CPU time added) just after it exits.
            thread::sleep(Duration::from_millis(300));
            let used = pid.map(cpu_secs).unwrap_or(0.0) - before;
            println!(
                "round {round}: {name:<26} {:>6.3} s {:>6.2} GB/s  cpu {:.3} s/GiB",
                t,
                bytes as f64 / t / 1e9,
                used / gib
            );
            secs.push(t);
            cpu.push(used / gib);
        }
    }
    println!("\nmedians ({mib} MiB):");
    let mut medians = Vec::new();
    for (name, secs, cpu) in rows.iter_mut() {
        let (t, c) = (median(secs), median(cpu));
        println!(
            "  {name:<26} {:.2} GB/s, relay CPU {:.3} s/GiB",
            bytes as f64 / t / 1e9,
            c
        );
        medians.push((bytes as f64 / t / 1e9, c));
    }
    println!(
        "  splice vs direct: {:.2}x; the floor splice relay vs direct: {:.2}x",
        medians[1].0 / medians[0].0,
        medians[3].0 / medians[0].0
    );
    if medians.len() == 5 {
        println!(
            "  splice vs socat: {:.2}x throughput, {:.2}x CPU",
            medians[1].0 / medians[4].0,
            medians[1].1 / medians[4].1.max(1e-9),
        );
    }
    drop((relay, copy, socat));

    // 2. Open-loop latency, 1,000 connections x 10 msg/s, rounds interleaved.
    let conns = env_usize("RELAY_BENCH_CONNS", 1000).to_string();
    let lat_rounds = env_usize("RELAY_BENCH_LAT_ROUNDS", 3);
    let (_echo, echo_addr) = start_sockit(&[
        "serve",
        "127.0.0.1",
        "0",
        "--service",
        "echo",
        "--max-conns",
        "5000",
    ]);
    let (_lrelay, lrelay_addr) =
        start_sockit(&["relay", "127.0.0.1:0", &echo_addr.to_string(), "-q"]);
    let floor_addr = floor_relay(echo_addr);
    let lsocat_port = free_port();
    let _lsocat = has_socat.then(|| {
        let p = Proc(
            Command::new("socat")
                // A deep backlog, or 1,000 simultaneous connects lose SYNs and wait seconds.
                .arg(format!(
                    "TCP-LISTEN:{lsocat_port},fork,reuseaddr,backlog=4096"
                ))
                .arg(format!("TCP:{echo_addr}"))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(lsocat_port);
        p
    });
    let lsocat_addr: SocketAddr = format!("127.0.0.1:{lsocat_port}").parse().unwrap();
    println!("\nopen loop: {conns} connections x 10 msg/s, 10 s, {lat_rounds} rounds");
    let mut lat: Vec<(&str, SocketAddr, Vec<f64>, Vec<f64>)> = vec![
        ("direct", echo_addr, vec![], vec![]),
        ("sockit relay", lrelay_addr, vec![], vec![]),
        ("floor relay", floor_addr, vec![], vec![]),
    ];
    if has_socat {
        lat.push(("socat fork", lsocat_addr, vec![], vec![]));
    }
    for round in 1..=lat_rounds {
        for (name, addr, p50s, p99s) in lat.iter_mut() {
            let v = bench_json(&[
                &addr.to_string(),
                "--rate",
                "10",
                "--conns",
                &conns,
                "--duration",
                "10",
            ]);
            let (p50, p99) = (
                v["latency_us"]["p50"].as_f64().unwrap_or(f64::NAN),
                v["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN),
            );
            println!(
                "round {round}: {name:<13} {} msgs, p50 {p50:.0} us, p99 {p99:.0} us, errors {}, timeouts {}",
                v["messages"], v["errors"], v["timeouts"]
            );
            p50s.push(p50);
            p99s.push(p99);
        }
    }
    println!("medians, and what each relay adds to the direct medians:");
    let (d50, d99) = (median(&mut lat[0].2), median(&mut lat[0].3));
    for (name, _, p50s, p99s) in lat.iter_mut() {
        let (p50, p99) = (median(p50s), median(p99s));
        println!(
            "  {name:<13} p50 {p50:.0} us ({:+.0}), p99 {p99:.0} us ({:+.0})",
            p50 - d50,
            p99 - d99
        );
    }

    // 3. UDP datagrams per second at 50 clients.
    let (_uecho, uecho_addr) =
        start_sockit(&["serve", "127.0.0.1", "0", "--udp", "--service", "echo"]);
    let (_urelay, urelay_addr) = start_sockit(&[
        "relay",
        "udp:127.0.0.1:0",
        &format!("udp:{uecho_addr}"),
        "-q",
    ]);
    println!("\nUDP: 50 clients, 5 s");
    let mut rates = Vec::new();
    for (name, addr) in [("direct", uecho_addr), ("relay", urelay_addr)] {
        let v = bench_json(&[&format!("udp:{addr}"), "--conns", "50", "--duration", "5"]);
        let rate = v["messages_per_sec"].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {name:<7} {rate:.0} datagrams/s, p50 {:.0} us, lost {}",
            v["latency_us"]["p50"].as_f64().unwrap_or(f64::NAN),
            v["lost"]
        );
        rates.push(rate);
    }
    println!("  relay/direct: {:.2}x", rates[1] / rates[0]);
}
