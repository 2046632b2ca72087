//! Benchmark: `sockit send` of a 1 GiB file to `sockit serve --service files` (BLAKE3 checked
//! by both sides, fsync and rename included), side by side with `nc -N` piping the same file
//! to `nc -l` writing it to disk followed by `sync FILE`. Wall time from the sender's start
//! until the file is durable on disk; rounds alternate which goes first; medians compared.
//!
//! `FILES_BENCH_MB` sets the file size in MiB (default 1024), `FILES_BENCH_ROUNDS` the number
//! of rounds (default 3). The file is written under `target/` (a real disk, not tmpfs).
//! Without netcat-openbsd it says so and stops.
//!
//! Run: `nice cargo bench --bench files`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    if Command::new("nc").arg("-h").output().is_err() {
        println!("files benchmark: nc (netcat-openbsd) is not installed, nothing to compare with");
        return;
    }
    let mib = env_usize("FILES_BENCH_MB", 1024);
    let rounds = env_usize("FILES_BENCH_ROUNDS", 3);
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/files-bench");
    let _ = std::fs::remove_dir_all(&base);
    let (src, srv, sink) = (base.join("src"), base.join("srv"), base.join("nc"));
    for d in [&src, &srv, &sink] {
        std::fs::create_dir_all(d).expect("create bench dirs");
    }
    let file = src.join("payload.bin");
    write_payload(&file, mib);
    let bytes = (mib as u64) << 20;
    println!("files benchmark: {mib} MiB, {rounds} rounds");

    let mut server = start_server(&srv);
    let port = server.1;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (s, n) = if round % 2 == 1 {
            settle();
            let s = run_sockit(port, &file, &srv);
            settle();
            (s, run_nc(&file, &sink))
        } else {
            settle();
            let n = run_nc(&file, &sink);
            settle();
            (run_sockit(port, &file, &srv), n)
        };
        println!(
            "round {round}: sockit send {:.3} s ({:.0} MB/s), nc -N + sync {:.3} s ({:.0} MB/s)",
            s.as_secs_f64(),
            rate(bytes, s),
            n.as_secs_f64(),
            rate(bytes, n)
        );
        ours.push(s);
        theirs.push(n);
    }
    let _ = server.0.kill();
    let _ = server.0.wait();
    let (s, n) = (median(&mut ours), median(&mut theirs));
    println!(
        "median: sockit {:.0} MB/s, nc {:.0} MB/s: throughput ratio sockit/nc = {:.2} (target >= 0.8)",
        rate(bytes, s),
        rate(bytes, n),
        n.as_secs_f64() / s.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// Untimed: removes the previous round's outputs and flushes every dirty page, so each timed
/// run starts with the disk idle.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(300));
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Incompressible bytes from a fast generator, written once.
fn write_payload(path: &Path, mib: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create payload"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block).expect("write payload");
    }
    out.into_inner()
        .expect("flush")
        .sync_all()
        .expect("sync payload");
}

fn start_server(dir: &Path) -> (Child, u16, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockit"))
        .args([
            "serve",
            "127.0.0.1",
            "0",
            "--service",
            "files",
            "-q",
            "--overwrite",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sockit serve");
    let mut banner = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut banner).expect("banner");
    let port = banner
        .split_whitespace()
        .find_map(|w| w.parse::<std::net::SocketAddr>().ok())
        .expect("address in banner")
        .port();
    // Kept open: the server may still write to its stdout.
    (child, port, stdout)
}

fn run_sockit(port: u16, file: &Path, srv: &Path) -> Duration {
    let _ = std::fs::remove_file(srv.join("payload.bin"));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sockit"))
        .args(["send", "127.0.0.1", &port.to_string()])
        .arg(file)
        .output()
        .expect("run sockit send");
    let elapsed = started.elapsed();
    assert!(out.status.success(), "sockit send failed: {out:?}");
    elapsed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn run_nc(file: &Path, sink: &Path) -> Duration {
    let out = sink.join("payload.bin");
    let _ = std::fs::remove_file(&out);
    let port = free_port().to_string();
    let mut listener = Command::new("nc")
        .args(["-l", "127.0.0.1", &port])
        .stdout(std::fs::File::create(&out).expect("create nc output"))
        .spawn()
        .expect("start nc -l");
    // nc -l serves one connection: a probe would use it up, so give it a moment instead.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = Command::new("nc")
        .args(["-N", "127.0.0.1", &port])
        .stdin(std::fs::File::open(file).expect("open payload"))
        .status()
        .expect("run nc -N");
    assert!(status.success(), "nc -N failed");
    let status = listener.wait().expect("nc -l");
    assert!(status.success(), "nc -l failed");
    let status = Command::new("sync").arg(&out).status().expect("run sync");
    assert!(status.success(), "sync failed");
    let elapsed = started.elapsed();
    let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, std::fs::metadata(file).unwrap().len(), "nc lost bytes");
    elapsed
}
