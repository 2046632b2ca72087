//! `sockit connect` as a byte pipe against `nc -N`, through the same echo server.
//!
//! `cargo bench --bench pipe` starts `sockit serve 127.0.0.1 0 --framing raw -q`, writes a file
//! of pseudo-random bytes (every byte value, with blank lines, `\r\n` and runs of NULs mixed
//! in), then, round after round and in alternating order, pipes it through
//! `sockit connect --framing raw 127.0.0.1 PORT < file > out` and `nc -N 127.0.0.1 PORT < file
//! > out`. Each output must equal the input (size and hash). It prints each run's throughput,
//! the median of the per-round ratios sockit/nc (target ≥ 0.8) and sockit connect's peak RSS
//! (`VmHWM`, sampled until it exits; target ≤ 16 MiB).
//!
//! Environment: `SOCKIT_PIPE_MB` (default 512) and `SOCKIT_PIPE_ROUNDS` (default 5).

use std::fs::File;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");

fn main() {
    let mb: usize = env_or("SOCKIT_PIPE_MB", 512);
    let rounds: usize = env_or("SOCKIT_PIPE_ROUNDS", 5).max(1);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let input = dir.path().join("input.bin");
    let output = dir.path().join("output.bin");
    let size = write_data(&input, mb << 20);
    let want = digest(&input);
    println!(
        "byte pipe through a raw echo server: {} MiB, {rounds} rounds, {} cores",
        size >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut server = Command::new(SOCKIT)
        .args([
            "serve",
            "127.0.0.1",
            "0",
            "--service",
            "echo",
            "--framing",
            "raw",
            "-q",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sockit serve");
    let mut banner = String::new();
    let mut server_out = BufReader::new(server.stdout.take().expect("serve stdout"));
    server_out.read_line(&mut banner).expect("serve banner");
    let addr: SocketAddr = banner
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("address in the banner");
    let port = addr.port().to_string();

    let sockit_cmd = || {
        let mut cmd = Command::new(SOCKIT);
        cmd.args(["connect", "--framing", "raw", "127.0.0.1", &port]);
        cmd
    };
    let nc_cmd = || {
        let mut cmd = Command::new("nc");
        cmd.args(["-N", "127.0.0.1", &port]);
        cmd
    };

    let (mut ratios, mut sockit_rates, mut nc_rates, mut peaks) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        // Alternate who goes first, so drift within a round favours neither.
        let mut order = [("sockit", true), ("nc", false)];
        if round % 2 == 0 {
            order.reverse();
        }
        let mut rates = [0.0f64; 2];
        for (name, is_sockit) in order {
            let cmd = if is_sockit { sockit_cmd() } else { nc_cmd() };
            let (secs, peak_kib) = run(cmd, &input, &output);
            let got = digest(&output);
            assert_eq!(got, want, "{name}: output differs from input");
            let rate = size as f64 / secs / 1e6;
            if is_sockit {
                rates[0] = rate;
                sockit_rates.push(rate);
                peaks.push(peak_kib);
                println!(
                    "  round {round}: sockit connect {rate:8.0} MB/s  ({secs:.3} s, peak RSS {:.1} MiB)",
                    peak_kib as f64 / 1024.0
                );
            } else {
                rates[1] = rate;
                nc_rates.push(rate);
                println!("  round {round}: nc -N          {rate:8.0} MB/s  ({secs:.3} s)");
            }
        }
        ratios.push(rates[0] / rates[1]);
    }
    let _ = server.kill();
    let _ = server.wait();

    let ratio = median(ratios);
    let peak = peaks.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    println!("\nsummary ({} MiB, byte-identical every run)", size >> 20);
    println!("  sockit connect: median {:.0} MB/s", median(sockit_rates));
    println!("  nc -N:          median {:.0} MB/s", median(nc_rates));
    println!(
        "  [{}] median ratio sockit/nc {ratio:.2} (target >= 0.8)",
        verdict(ratio >= 0.8)
    );
    println!(
        "  [{}] sockit connect peak RSS {peak:.1} MiB (target <= 16 MiB)",
        verdict(peak <= 16.0)
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// Runs `cmd < input > output`; returns the wall time and the peak RSS (KiB) seen in
/// `/proc/PID/status` while it ran.
fn run(mut cmd: Command, input: &Path, output: &Path) -> (f64, u64) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(File::open(input).expect("open input"))
        .stdout(File::create(output).expect("create output"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn client");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        // VmHWM is the peak so far; the last reading before exit is the run's peak.
        if let Some(kib) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| field_kib(&s, "VmHWM:"))
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "client failed: {status}");
    (secs, peak)
}

fn field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Writes `len` pseudo-random bytes: every byte value, blank lines, `\r\n` and NUL runs.
fn write_data(path: &Path, len: usize) -> usize {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create input"));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut written = 0;
    let mut chunk = Vec::with_capacity(1 << 16);
    while written < len {
        chunk.clear();
        while chunk.len() < (1 << 16) - 16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 256 {
                0 => chunk.extend_from_slice(b"\n\n"),
                1 => chunk.extend_from_slice(&[0; 16]),
                2 => chunk.extend_from_slice(b"\r\n"),
                _ => chunk.extend_from_slice(&x.to_le_bytes()),
            }
        }
        let take = chunk.len().min(len - written);
        out.write_all(&chunk[..take]).expect("write input");
        written += take;
    }
    out.flush().expect("flush input");
    written
}

/// Size and hash of a file's contents.
fn digest(path: &Path) -> (u64, u64) {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).expect("open"));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            return (total, hasher.finish());
        }
        hasher.write(&buf[..n]);
        total += n as u64;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
