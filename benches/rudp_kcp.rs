//! rudp against KCP on KCP's own test scenario, in simulated time (issue 8).
//!
//! Link: `loss` per direction (ACKs included), one-way delay uniform in 30–61 ms, FIFO per
//! direction. The client sends an 8-byte message every 20 ms, the server echoes it over the same
//! protocol, 1,000 messages, seeds 1–20. RTT per message runs from its send to its echo's
//! arrival; messages start once the connection is established (rudp's handshake is not timed).
//! Wire bytes are the UDP payload bytes handed to the link in both directions.
//!
//! `cargo bench --bench rudp_kcp` prints the table at 5% loss, a loss sweep 0–30%, and the
//! summary line `sockit/kcp-fast avg_rtt_ratio=X max_rtt_ratio=Y wire_bytes_ratio=Z`.
//! Options (after `--`): `--seeds N` (default 20), `--sweep-seeds N` (default 10),
//! `--no-sweep`, `--arq` (adds a row for sockit without redundancy).

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kcp::Kcp;
use sockit::rudp::sim::{Link, LinkConfig, Pair};
use sockit::rudp::{Config, EndpointConfig, Event};

const MESSAGES: u32 = 1000;
const INTERVAL_MS: u64 = 20;
/// Give up on missing echoes this long after the last send.
const GRACE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    KcpNormal,
    KcpFast,
    Sockit,
    /// sockit with redundancy (copies and tail copy) switched off: pure ARQ.
    SockitArq,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::KcpNormal => "kcp-normal",
            Proto::KcpFast => "kcp-fast",
            Proto::Sockit => "sockit",
            Proto::SockitArq => "sockit-arq",
        }
    }
}

/// One run's result.
struct Run {
    /// RTTs in microseconds of the messages that came back.
    rtts: Vec<u64>,
    wire_bytes: u64,
}

fn message(seq: u32) -> Vec<u8> {
    let mut m = seq.to_be_bytes().to_vec();
    m.extend_from_slice(&[0xa5; 4]);
    m
}

fn seq_of(m: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(m.get(..4)?.try_into().ok()?))
}

#[derive(Clone)]
struct Out(Rc<RefCell<Vec<Vec<u8>>>>);

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kcp_endpoint(fast: bool, out: Out) -> Kcp<Out> {
    let mut k = Kcp::new(0x5eed, out);
    if fast {
        k.set_nodelay(true, 10, 2, true);
        k.set_rx_minrto(10);
    } else {
        k.set_nodelay(false, 10, 0, true);
    }
    k.set_wndsize(128, 128);
    k
}

/// KCP driven as its own test driver does: `update` every millisecond of virtual time.
fn run_kcp(fast: bool, link_cfg: &LinkConfig, seed: u64) -> Run {
    let base = Instant::now();
    let mut link = Link::new(link_cfg.clone(), link_cfg.clone(), seed);
    let cq = Out(Rc::new(RefCell::new(Vec::new())));
    let sq = Out(Rc::new(RefCell::new(Vec::new())));
    let mut client = kcp_endpoint(fast, cq.clone());
    let mut server = kcp_endpoint(fast, sq.clone());
    let mut sent_at = vec![None::<u64>; MESSAGES as usize];
    let mut rtts = Vec::with_capacity(MESSAGES as usize);
    let mut next = 0u32;
    let mut buf = vec![0u8; 4096];
    let last_send_ms = u64::from(MESSAGES - 1) * INTERVAL_MS;
    let end_ms = last_send_ms + GRACE.as_millis() as u64;
    for ms in 0..=end_ms {
        let now = base + Duration::from_millis(ms);
        if next < MESSAGES && ms >= u64::from(next) * INTERVAL_MS {
            client.send(&message(next)).expect("kcp send");
            sent_at[next as usize] = Some(ms * 1000);
            next += 1;
        }
        client.update(ms as u32).expect("kcp update");
        server.update(ms as u32).expect("kcp update");
        for d in cq.0.borrow_mut().drain(..) {
            link.send(now, sockit::rudp::sim::Dir::Up, &d);
        }
        for d in sq.0.borrow_mut().drain(..) {
            link.send(now, sockit::rudp::sim::Dir::Down, &d);
        }
        while let Some(d) = link.recv(now, sockit::rudp::sim::Dir::Up) {
            let _ = server.input(&d);
        }
        while let Some(d) = link.recv(now, sockit::rudp::sim::Dir::Down) {
            let _ = client.input(&d);
        }
        while let Ok(n) = server.recv(&mut buf) {
            let echo = buf[..n].to_vec();
            server.send(&echo).expect("kcp echo");
        }
        while let Ok(n) = client.recv(&mut buf) {
            if let Some(t) = seq_of(&buf[..n]).and_then(|s| sent_at.get_mut(s as usize)?.take()) {
                rtts.push(ms * 1000 - t);
            }
        }
        if rtts.len() == MESSAGES as usize {
            break;
        }
    }
    Run {
        rtts,
        wire_bytes: link.stats(sockit::rudp::sim::Dir::Up).bytes
            + link.stats(sockit::rudp::sim::Dir::Down).bytes,
    }
}

/// rudp driven event by event over the same link model.
fn run_sockit(redundancy: bool, link_cfg: &LinkConfig, seed: u64) -> Run {
    let cfg = if redundancy {
        Config::default()
    } else {
        Config {
            redundancy_bytes: 0,
            ..Config::default()
        }
    };
    let mut p = Pair::new(
        cfg,
        EndpointConfig::default(),
        link_cfg.clone(),
        link_cfg.clone(),
        seed,
    );
    assert!(
        p.connect(Duration::from_secs(60)),
        "handshake failed (seed {seed})"
    );
    let h = p.server_conn.expect("server connection");
    p.client_events.clear();
    p.server_events.clear();
    let t0 = p.now;
    let mut sent_at = vec![None::<Instant>; MESSAGES as usize];
    let mut rtts = Vec::with_capacity(MESSAGES as usize);
    let mut next = 0u32;
    let end = t0 + Duration::from_millis(u64::from(MESSAGES - 1) * INTERVAL_MS) + GRACE;
    while p.now < end && rtts.len() < MESSAGES as usize {
        let next_send = t0 + Duration::from_millis(u64::from(next) * INTERVAL_MS);
        if next < MESSAGES && p.now >= next_send {
            p.client.send(Bytes::from(message(next))).expect("send");
            sent_at[next as usize] = Some(p.now);
            next += 1;
            continue;
        }
        let limit = if next < MESSAGES { next_send } else { end };
        p.step(limit);
        while let Some((hh, ev)) = p.server_events.pop_front() {
            if let Event::Message(m) = ev {
                p.server.send(hh, m).expect("echo");
            }
        }
        while let Some(ev) = p.client_events.pop_front() {
            if let Event::Message(m) = ev {
                if let Some(t) = seq_of(&m).and_then(|s| sent_at.get_mut(s as usize)?.take()) {
                    rtts.push((p.now - t).as_micros() as u64);
                    if std::env::var_os("RUDP_TRACE").is_some()
                        && p.now - t > Duration::from_millis(180)
                    {
                        eprintln!(
                            "seed {seed} msg {:?} rtt {:?} client {:?} server {:?}",
                            seq_of(&m),
                            p.now - t,
                            p.client.stats(),
                            p.server.connection(h).map(|c| c.stats().clone())
                        );
                    }
                }
            }
        }
    }
    Run {
        rtts,
        wire_bytes: p.wire_bytes(),
    }
}

fn run(proto: Proto, link: &LinkConfig, seed: u64) -> Run {
    match proto {
        Proto::KcpNormal => run_kcp(false, link, seed),
        Proto::KcpFast => run_kcp(true, link, seed),
        Proto::Sockit => run_sockit(true, link, seed),
        Proto::SockitArq => run_sockit(false, link, seed),
    }
}

/// Aggregate over seeds.
#[derive(Default, Clone, Copy)]
struct Agg {
    avg_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    wire: f64,
    missing: u64,
}

fn aggregate(proto: Proto, link: &LinkConfig, seeds: u64) -> Agg {
    let mut a = Agg::default();
    for seed in 1..=seeds {
        let mut r = run(proto, link, seed);
        a.missing += u64::from(MESSAGES) - r.rtts.len() as u64;
        r.rtts.sort_unstable();
        let n = r.rtts.len().max(1);
        let avg = r.rtts.iter().sum::<u64>() as f64 / n as f64 / 1000.0;
        let p99 = r
            .rtts
            .get((n * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0;
        let max = r.rtts.last().copied().unwrap_or(0) as f64 / 1000.0;
        a.avg_ms += avg / seeds as f64;
        a.p99_ms += p99 / seeds as f64;
        a.max_ms = a.max_ms.max(max);
        a.wire += r.wire_bytes as f64 / seeds as f64;
    }
    a
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seeds = arg("--seeds", 20);
    let sweep_seeds = arg("--sweep-seeds", 10);
    let sweep = !std::env::args().any(|a| a == "--no-sweep");
    let started = Instant::now();
    let link = LinkConfig::kcp_scenario(0.05);
    println!(
        "scenario: 5% loss per direction, one-way delay 30-61 ms uniform, FIFO, \
         8-byte message every 20 ms echoed, {MESSAGES} messages, seeds 1-{seeds}"
    );
    println!(
        "{:<11} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "protocol", "avg_rtt_ms", "p99_rtt_ms", "max_rtt_ms", "wire_bytes", "missing"
    );
    let mut results = Vec::new();
    let arq = std::env::args().any(|a| a == "--arq");
    let mut protos = vec![Proto::KcpNormal, Proto::KcpFast, Proto::Sockit];
    if arq {
        protos.push(Proto::SockitArq);
    }
    for proto in protos {
        let a = aggregate(proto, &link, seeds);
        println!(
            "{:<11} {:>12.1} {:>12.1} {:>12.1} {:>12.0} {:>8}",
            proto.name(),
            a.avg_ms,
            a.p99_ms,
            a.max_ms,
            a.wire,
            a.missing
        );
        results.push(a);
    }
    println!("(avg and p99: mean over seeds; max: over all seeds; wire_bytes: mean per run)");
    if sweep {
        println!();
        println!(
            "loss sweep (seeds 1-{sweep_seeds}): avg / max RTT in ms, wire bytes; ratios sockit/kcp-fast"
        );
        println!(
            "{:>5} {:>20} {:>20} {:>20} {:>9} {:>9} {:>9}",
            "loss", "kcp-normal", "kcp-fast", "sockit", "avg", "max", "wire"
        );
        for pct in [0u32, 5, 10, 15, 20, 25, 30] {
            let l = LinkConfig::kcp_scenario(f64::from(pct) / 100.0);
            let n = aggregate(Proto::KcpNormal, &l, sweep_seeds);
            let f = aggregate(Proto::KcpFast, &l, sweep_seeds);
            let s = aggregate(Proto::Sockit, &l, sweep_seeds);
            let cell = |a: &Agg| format!("{:.0}/{:.0}/{:.0}", a.avg_ms, a.max_ms, a.wire);
            println!(
                "{:>4}% {:>20} {:>20} {:>20} {:>9.2} {:>9.2} {:>9.2}{}",
                pct,
                cell(&n),
                cell(&f),
                cell(&s),
                s.avg_ms / f.avg_ms,
                s.max_ms / f.max_ms,
                s.wire / f.wire,
                if n.missing + f.missing + s.missing > 0 {
                    format!("  missing: {}/{}/{}", n.missing, f.missing, s.missing)
                } else {
                    String::new()
                }
            );
        }
    }
    let (f, s) = (results[1], results[2]);
    println!("(ran in {:.1} s)", started.elapsed().as_secs_f64());
    println!(
        "sockit/kcp-fast avg_rtt_ratio={:.3} max_rtt_ratio={:.3} wire_bytes_ratio={:.3}",
        s.avg_ms / f.avg_ms,
        s.max_ms / f.max_ms,
        s.wire / f.wire
    );
}
