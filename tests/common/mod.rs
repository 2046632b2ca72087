//! Helpers shared by the integration tests: in-process servers on `127.0.0.1:0`, the real
//! binary started as a child process, and small I/O helpers with safety timeouts (the timeouts
//! only stop a broken test from hanging; no test measures speed).

#![allow(dead_code)]

pub mod chat;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use sockit::{Server, ServerConfig, ServerReport, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in a test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<ServerReport>,
}

impl TestServer {
    /// Starts `service` with `config` on a free loopback port.
    pub async fn start<S: Service>(config: ServerConfig, service: S) -> TestServer {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, service)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
            shutdown,
            task,
        }
    }

    /// Stops the server and returns its report.
    pub async fn stop(self) -> ServerReport {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("server stops in time")
            .expect("server task does not panic")
    }

    /// A new TCP connection to the server.
    pub async fn connect(&self) -> TcpStream {
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(self.addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
    }
}

/// Reads exactly `n` bytes.
pub async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("read");
    buf
}

/// Reads one `\n`-terminated line (without the ending).
pub async fn read_line(stream: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    loop {
        let b = read_exact(stream, 1).await[0];
        if b == b'\n' {
            return line;
        }
        line.push(b);
    }
}

/// Reads until the peer closes; returns everything read. Panics if the peer keeps it open.
pub async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .expect("peer closes in time")
        .expect("read to eof");
    all
}

/// Sends `line` plus `\n` and returns the reply line.
pub async fn round_trip(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    String::from_utf8(read_line(stream).await).unwrap()
}

/// A `len32` (big-endian) frame.
pub fn len32(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Reads one `len32` frame body.
pub async fn read_len32(stream: &mut TcpStream) -> Vec<u8> {
    let len = u32::from_be_bytes(read_exact(stream, 4).await.try_into().unwrap());
    read_exact(stream, len as usize).await
}

/// A loopback TCP port nobody listens on (bound, then released).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that `line` is an `ack` receipt for `bytes` bytes.
pub fn assert_receipt(line: &str, bytes: usize) {
    let words: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(words.len(), 4, "{line:?}");
    assert_eq!(words[0], "ack", "{line:?}");
    chrono::DateTime::parse_from_rfc3339(words[1]).expect("an RFC 3339 timestamp");
    assert_eq!(
        (words[2], words[3]),
        (bytes.to_string().as_str(), "bytes"),
        "{line:?}"
    );
}

/// Path of the built `sockit` binary.
pub fn sockit_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin!("sockit").to_path_buf()
}

/// `sockit serve` running as a child process; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Option<ChildStderr>,
    /// Kept open: closing it would make the server's later writes to stdout fail.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl ServeProcess {
    /// Starts `sockit serve 127.0.0.1 0 <args>` and waits for its banner. Without a
    /// `--service` in `args` it runs the echo service (the bare default is the hub).
    pub fn start(args: &[&str]) -> ServeProcess {
        let mut cmd = Command::new(sockit_bin());
        cmd.args(["serve", "127.0.0.1", "0"]).args(args);
        if !args.contains(&"--service") {
            cmd.args(["--service", "echo"]);
        }
        Self::spawn(cmd)
    }

    /// Starts a prepared command whose stdout prints the serve banner.
    pub fn spawn(mut cmd: Command) -> ServeProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sockit serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).expect("read banner");
        let addr = banner
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in banner {banner:?}"));
        let stderr = child.stderr.take();
        ServeProcess {
            child,
            addr,
            stderr,
            _stdout: stdout,
        }
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill() with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (at most `limit`); returns its status and its log.
    pub fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut log = String::new();
                if let Some(mut err) = self.stderr.take() {
                    std::io::Read::read_to_string(&mut err, &mut log).unwrap();
                }
                return (status, log);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sockit serve did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and returns its log (stderr).
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let (status, log) = self.wait(PATIENCE);
        assert!(status.success(), "serve exited with {status}: {log}");
        log
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python 3 script with arguments; returns stdout, panicking with stderr on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Path of an external peer tool, or `None` (with a note) when it may be skipped.
pub fn peer_tool(name: &str) -> Option<String> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if found.is_none() {
        assert!(
            std::env::var_os("SOCKIT_REQUIRE_PEERS").is_none(),
            "{name} is required (SOCKIT_REQUIRE_PEERS is set) but not installed"
        );
        eprintln!("skipping: {name} is not installed");
    }
    found
}

/// Runs a Python 3 script with `input` on its stdin (then closed), as a tutorial client typing
/// its lines; waits at most [`PATIENCE`] for it to finish (killing it after that) and returns
/// its output.
pub fn python_with_input(script: &str, input: &str) -> std::process::Output {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    run_with_input(cmd, input)
}

/// Runs `cmd` with `input` on its stdin (then closed), reading its output as it comes; waits at
/// most [`PATIENCE`] for it to finish (killing it after that) and returns its output.
pub fn run_with_input(mut cmd: Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (see .ci/run): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.as_bytes().to_vec();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill() with the pid of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {PATIENCE:?}");
        }
    }
}
