//! Unix sockets and `--exec`/`--sh-exec`, through the real binary and real peers (socat, nc).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PATIENCE, peer_tool, run_with_input, sockit_bin};

/// `sockit serve ARGS` with its banner read and its log collected as it comes.
struct Serve {
    child: Child,
    banner: String,
    log: Arc<Mutex<String>>,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(sockit_bin())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockit serve");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).expect("read banner");
        if banner.is_empty() {
            let _ = child.wait();
            panic!("no banner; log: {}", log.lock().unwrap());
        }
        Serve {
            child,
            banner,
            log,
            _stdout: stdout,
        }
    }

    /// The TCP address from the banner.
    fn addr(&self) -> SocketAddr {
        self.banner
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no address in banner {:?}", self.banner))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the log.
    fn stop(mut self) -> String {
        // SAFETY: kill() with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The log thread has seen end of file once the process is gone.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sockit(args: &[&str], input: &str) -> std::process::Output {
    let mut cmd = Command::new(sockit_bin());
    cmd.args(args);
    run_with_input(cmd, input)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads everything until the peer closes (bounded by PATIENCE).
fn read_all<R: Read>(mut r: R) -> String {
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read until close");
    text(&out)
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

#[test]
fn socat_talks_to_a_unix_line_echo_server_whose_file_goes_on_exit() {
    let Some(socat) = peer_tool("socat") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let addr = format!("unix:{}", path.display());
    let server = Serve::start(&[&addr, "--service", "echo"]);
    assert!(
        server.banner.contains(&format!("unix {}", path.display())),
        "{}",
        server.banner
    );
    let mut cmd = Command::new(socat);
    cmd.args(["-t", "2", "-", &format!("UNIX-CONNECT:{}", path.display())]);
    let out = run_with_input(cmd, "hello over unix\nsecond line\n");
    assert_eq!(text(&out.stdout), "hello over unix\nsecond line\n");
    assert!(path.exists());
    let log = server.stop();
    assert!(log.contains("connect from unix:"), "{log}");
    assert!(
        !path.exists(),
        "the socket file is removed on a clean shutdown"
    );
}

#[test]
fn connect_unix_reaches_a_socat_unix_listener() {
    let Some(socat) = peer_tool("socat") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socat.sock");
    let mut listener = Command::new(socat)
        .args([
            &format!("UNIX-LISTEN:{}", path.display()),
            "SYSTEM:tr a-z A-Z",
        ])
        .spawn()
        .unwrap();
    wait_for_file(&path);
    let out = sockit(
        &["connect", &format!("unix:{}", path.display())],
        "shout this\n",
    );
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "SHOUT THIS\n");
}

#[test]
fn abstract_sockets_serve_and_connect_and_bench() {
    let name = format!("sockit-test-{}", std::process::id());
    let server = Serve::start(&[&format!("unix:@{name}"), "--service", "echo"]);
    assert!(
        server.banner.contains(&format!("unix @{name}")),
        "{}",
        server.banner
    );
    let out = sockit(
        &["connect", &format!("unix:@{name}"), "-m", "abstract hello"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), "abstract hello");
    if let Some(socat) = peer_tool("socat") {
        let mut cmd = Command::new(socat);
        cmd.args(["-t", "2", "-", &format!("ABSTRACT-CONNECT:{name}")]);
        let out = run_with_input(cmd, "via socat\n");
        assert_eq!(text(&out.stdout), "via socat\n");
    }
    let out = sockit(
        &[
            "bench",
            &format!("unix:@{name}"),
            "--conns",
            "4",
            "--count",
            "50",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 200, "{report}");
    assert_eq!(report["transport"], "unix", "{report}");
    assert_eq!(report["addr"], format!("unix:@{name}"), "{report}");
    server.stop();
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let addr = format!("unix:{}", path.display());
    // A socket file nobody listens on, as a killed server leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Serve::start(&[&addr, "--service", "echo"]);
    let log = server.wait_log("removed stale socket file");
    assert!(log.contains(&path.display().to_string()), "{log}");

    // A second server on the same, live, path is refused and leaves it alone.
    let out = sockit(&["serve", &addr, "--service", "echo"], "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"still mine\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert_eq!(line, "still mine\n");
    server.stop();

    // A file that is not a socket is never removed.
    std::fs::write(&path, b"precious").unwrap();
    let out = sockit(&["serve", &addr, "--service", "echo"], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn mode_sets_the_socket_files_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let server = Serve::start(&[
        &format!("unix:{}", path.display()),
        "--service",
        "echo",
        "--mode",
        "0600",
    ]);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    server.stop();

    let server = Serve::start(&[
        &format!("unix:{}", path.display()),
        "--service",
        "echo",
        "--mode",
        "666",
    ]);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o666);
    server.stop();

    let out = sockit(&["serve", "127.0.0.1", "0", "--mode", "0600"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unix:PATH"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sh_exec_serves_50_concurrent_nc_clients_each_its_own_text() {
    let Some(nc) = peer_tool("nc") else {
        return;
    };
    let server = Serve::start(&["127.0.0.1", "0", "--sh-exec", "tr a-z A-Z"]);
    assert!(
        server.banner.contains("exec `tr a-z A-Z`"),
        "{}",
        server.banner
    );
    let addr = server.addr();
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let nc = nc.clone();
            std::thread::spawn(move || {
                let mine = format!("client number {i} says hello\nand bye from {i}\n");
                let mut cmd = Command::new(nc);
                cmd.args(["-N", "127.0.0.1", &addr.port().to_string()]);
                let out = run_with_input(cmd, &mine);
                (mine.to_uppercase(), text(&out.stdout))
            })
        })
        .collect();
    for client in clients {
        let (want, got) = client.join().unwrap();
        assert_eq!(got, want);
    }
    let log = server.stop();
    assert_eq!(log.matches(": exit 0").count(), 50, "{log}");
}

#[test]
fn a_crashing_child_closes_only_its_connection() {
    let server = Serve::start(&[
        "127.0.0.1",
        "0",
        "--sh-exec",
        r#"read x; [ "$x" = crash ] && kill -9 $$; echo "ok $x"; exit 3"#,
    ]);
    let addr = server.addr();
    let mut calm = tcp(addr);
    let mut crash = tcp(addr);
    crash.write_all(b"crash\n").unwrap();
    assert_eq!(read_all(&mut crash), "", "a killed child says nothing");
    calm.write_all(b"fine\n").unwrap();
    assert_eq!(read_all(&mut calm), "ok fine\n");
    let mut later = tcp(addr);
    later.write_all(b"again\n").unwrap();
    assert_eq!(read_all(&mut later), "ok again\n");
    let log = server.stop();
    assert!(log.contains("killed by signal 9"), "{log}");
    assert_eq!(log.matches(": exit 3").count(), 2, "{log}");
}

#[test]
fn the_child_sees_both_ends_in_its_environment() {
    let server = Serve::start(&[
        "127.0.0.1",
        "0",
        "--exec",
        r#"sh -c "echo $SOCKIT_PROTO $SOCKIT_PEER_ADDR $SOCKIT_PEER_PORT $SOCKIT_LOCAL_PORT $PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT""#,
    ]);
    let addr = server.addr();
    let s = tcp(addr);
    let me = s.local_addr().unwrap();
    let got = read_all(&s);
    let (p, sp) = (me.port(), addr.port());
    assert_eq!(
        got,
        format!("tcp 127.0.0.1 {p} {sp} TCP 127.0.0.1 {p} 127.0.0.1 {sp}\n")
    );
    server.stop();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.sock");
    let server = Serve::start(&[
        &format!("unix:{}", path.display()),
        "--sh-exec",
        r#"echo "$SOCKIT_PROTO $SOCKIT_LOCAL_ADDR $PROTO ${TCPREMOTEIP:-none}""#,
    ]);
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(read_all(&s), format!("unix {} UNIX none\n", path.display()));
    server.stop();
}

#[test]
fn max_conns_2_with_exec_refuses_the_third() {
    let server = Serve::start(&["127.0.0.1", "0", "--sh-exec", "cat", "--max-conns", "2"]);
    let addr = server.addr();
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = tcp(addr);
        let line = format!("held {i}\n");
        s.write_all(line.as_bytes()).unwrap();
        let mut back = vec![0u8; line.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(text(&back), line);
        held.push(s);
    }
    let third = tcp(addr);
    let refusal = read_all(&third);
    assert!(refusal.contains("server busy"), "{refusal:?}");
    // A slot frees when a connection ends, and the next client is served.
    drop(held.pop());
    server.wait_log("exit 0");
    let mut fourth = tcp(addr);
    fourth.write_all(b"now\n").unwrap();
    fourth.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(&fourth), "now\n");
    server.stop();
}

#[test]
fn connect_exec_wires_a_local_program_to_the_server() {
    let server = Serve::start(&["127.0.0.1", "0", "--service", "echo"]);
    let port = server.addr().port().to_string();
    let out = sockit(
        &[
            "connect",
            "127.0.0.1",
            &port,
            "--sh-exec",
            r#"echo hello; read reply; echo "got $reply from $SOCKIT_PEER_PORT" >&2; exit 5"#,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("got hello from {port}")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "",
        "the program's output went to the server"
    );
    server.stop();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up.sock");
    let server = Serve::start(&[
        &format!("unix:{}", path.display()),
        "--sh-exec",
        "tr a-z A-Z",
    ]);
    let out = sockit(
        &[
            "connect",
            &format!("unix:{}", path.display()),
            "--exec",
            r#"sh -c "echo shout; exec 1>&-; read up; echo $up >&2""#,
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("SHOUT"), "{}", text(&out.stderr));
    server.stop();
}

#[test]
fn exec_refuses_what_does_not_apply() {
    for (args, why) in [
        (&["--exec", "cat", "--service", "echo"][..], "--service"),
        (&["--sh-exec", "cat", "--framing", "len32"][..], "--framing"),
        (&["--exec", "cat", "--udp"][..], "--udp"),
        (&["--exec", "cat", "--sh-exec", "cat"][..], "--sh-exec"),
        (&["--exec", "echo 'open"][..], "unterminated"),
        (&["--exec", "  "][..], "needs a program"),
    ] {
        let out = sockit(&[&["serve", "127.0.0.1", "0"][..], args].concat(), "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(why),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = sockit(&["serve", "udp:127.0.0.1:0", "--exec", "cat"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("stream"),
        "{}",
        text(&out.stderr)
    );
    let out = sockit(&["connect", "127.0.0.1:9", "--exec", "cat", "-m", "x"], "");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unixgram_echo_answers_bound_clients_and_ignores_unbound_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gram.sock");
    let addr = format!("unixgram:{}", path.display());
    let server = Serve::start(&[&addr, "--service", "echo", "-v"]);
    assert!(
        server
            .banner
            .contains(&format!("unixgram {}", path.display())),
        "{}",
        server.banner
    );
    if let Some(socat) = peer_tool("socat") {
        let mut cmd = Command::new(&socat);
        cmd.args([
            "-t",
            "2",
            "-",
            &format!(
                "UNIX-SENDTO:{},bind={}",
                path.display(),
                dir.path().join("c.sock").display()
            ),
        ]);
        let out = run_with_input(cmd, "datagram via socat\n");
        assert_eq!(text(&out.stdout), "datagram via socat\n");
    }
    // Unbound: nothing to answer; the server says so in its debug log and carries on.
    let unbound = std::os::unix::net::UnixDatagram::unbound().unwrap();
    unbound.send_to(b"hello?", &path).unwrap();
    server.wait_log("not bound to a path");

    let out = sockit(&["connect", &addr, "-m", "first", "-m", "second"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "first\nsecond\n");
    let out = sockit(&["connect", &addr], "line one\nline two\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line one\nline two\n");
    let log = server.stop();
    assert!(!path.exists(), "{log}");

    // Nobody listening: a clear error, not a hang.
    let out = sockit(&["connect", &addr, "-m", "anyone"], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot connect to unixgram:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_runs_under_tls_and_connect_exec_dials_tls() {
    let server = Serve::start(&[
        "127.0.0.1",
        "0",
        "--tls",
        "--tls-ephemeral",
        "--sh-exec",
        "echo $SOCKIT_PROTO; tr a-z A-Z",
    ]);
    let port = server.addr().port().to_string();
    let out = sockit(
        &["connect", "127.0.0.1", &port, "--tls", "--tls-insecure"],
        "secret\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "tls\nSECRET\n");
    let out = sockit(
        &[
            "connect",
            "127.0.0.1",
            &port,
            "--tls",
            "--tls-insecure",
            "--sh-exec",
            "echo $SOCKIT_PROTO $SOCKIT_LOCAL_ADDR ${SOCKIT_LOCAL_PORT:+port} $TCPLOCALIP; exec 1>&-; cat >&2",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The local address is the TCP socket's under TLS.
    assert!(
        text(&out.stderr).contains("tls\nTLS 127.0.0.1 PORT 127.0.0.1\n"),
        "{}",
        text(&out.stderr)
    );
    server.stop();
}

#[test]
fn a_program_that_cannot_start_closes_its_connection_and_is_logged() {
    let server = Serve::start(&["127.0.0.1", "0", "--exec", "/nonexistent/program arg"]);
    let addr = server.addr();
    for _ in 0..2 {
        let s = tcp(addr);
        assert_eq!(read_all(&s), "");
    }
    // Each connection's task logs on its own: #2 may well be logged before #1.
    for id in ["(#1)", "(#2)"] {
        server.wait_log(&format!("{id}: cannot run `/nonexistent/program arg`"));
    }
    server.stop();
}

#[test]
fn unixgram_chat_members_hear_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.sock");
    let server = Serve::start(&[&format!("unixgram:{}", path.display()), "--service", "chat"]);
    let script = r#"
import socket, sys
srv, d = sys.argv[1], sys.argv[2]
def member(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(d + "/" + name + ".sock")
    s.settimeout(5)
    return s
def line(s):
    return s.recv(65536).decode().rstrip("\n")
a, b = member("a"), member("b")
a.sendto(b"/join r\n", srv); print(line(a))
b.sendto(b"/join r\n", srv); print(line(b)); print(line(a))
a.sendto(b"hello bob\n", srv); print(line(b))
b.sendto(b"hi alice\n", srv); print(line(a))
"#;
    let out = common::python(
        script,
        &[
            &path.display().to_string(),
            &dir.path().display().to_string(),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("in r (1 member)"), "{out}");
    assert!(lines[1].contains("in r (2 members)"), "{out}");
    assert!(lines[2].contains("joined"), "{out}");
    assert_eq!(
        lines[3..],
        ["<guest1> hello bob", "<guest2> hi alice"],
        "{out}"
    );
    server.stop();
}
