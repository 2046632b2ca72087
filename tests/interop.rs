//! Interoperability with the programs people already have: the tutorials' own Python clients
//! and servers (undelimited `send`/`recv(1024)`, `struct.pack('i', n)` prefixes, header dicts,
//! UDP `sendto`/`recvfrom`), and `nc`/`socat`.
//!
//! `nc` and `socat` tests are skipped with a message when the tool is missing, unless
//! `SOCKIT_REQUIRE_PEERS=1` (set by `.ci/run`, which installs them) makes that a failure.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::*;

/// The tutorial TCP client (seed 000), with the server address from argv and the lines to
/// type in argv too: `send(input.encode())`, then `print(recv(1024).decode())`.
const TUTORIAL_TCP_CLIENT: &str = r#"
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.connect(("127.0.0.1", int(sys.argv[1])))
for send in sys.argv[2:]:
    sock.send(send.encode("utf-8"))
    print(sock.recv(1024).decode("utf-8"))
    if send == "bye":
        break
sock.close()
"#;

#[test]
fn tutorial_tcp_client_talks_to_raw_echo() {
    let server = ServeProcess::start(&["--framing", "raw"]);
    let port = server.addr.port().to_string();
    let out = python(TUTORIAL_TCP_CLIENT, &[&port, "hello", "你好", "bye"]);
    assert_eq!(out, "hello\n你好\nbye\n");
}

#[test]
fn tutorial_tcp_client_gets_bare_ack_receipts() {
    let server = ServeProcess::start(&["--framing", "raw", "--service", "ack"]);
    let port = server.addr.port().to_string();
    let out = python(TUTORIAL_TCP_CLIENT, &[&port, "hello", "收到"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_receipt(lines[0], 5);
    // Two Chinese characters are six bytes of UTF-8.
    assert_receipt(lines[1], 6);
}

/// The tutorial UDP client (seeds 000/001): `sendto`, then `recvfrom(1024)`.
const TUTORIAL_UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for msg in sys.argv[2:]:
    s.sendto(msg.encode(), ("127.0.0.1", int(sys.argv[1])))
    data, addr = s.recvfrom(1024)
    print(data.decode("utf-8"))
s.close()
"#;

#[test]
fn tutorial_udp_client_gets_timestamped_receipts() {
    let server = ServeProcess::start(&["--udp", "--service", "ack"]);
    let port = server.addr.port().to_string();
    let out = python(TUTORIAL_UDP_CLIENT, &[&port, "hello", "world!"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_receipt(lines[0], 5);
    assert_receipt(lines[1], 6);
}

/// The sticky-packet fix (seed 002): `struct.pack('i', n)` then the data. Several messages
/// go out in one `sendall`, exactly the case that merges them without framing.
const STRUCT_PACK_CLIENT: &str = r#"
import socket, struct, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
msgs = [m.encode() for m in sys.argv[2:]]
sock.sendall(b"".join(struct.pack("i", len(m)) + m for m in msgs))
def recv_exactly(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("closed early")
        buf += chunk
    return buf
for _ in msgs:
    n = struct.unpack("i", recv_exactly(4))[0]
    print(recv_exactly(n).decode())
"#;

#[test]
fn struct_pack_i_clients_are_served_with_len32le() {
    let server = ServeProcess::start(&["--framing", "len32le"]);
    let port = server.addr.port().to_string();
    let out = python(STRUCT_PACK_CLIENT, &[&port, "first", "second", "", "third"]);
    assert_eq!(out, "first\nsecond\n\nthird\n");
}

/// The "dict length, dict, data" scheme (seed 002), with the dict length packed by
/// `struct.pack('i', ...)` as the tutorial does: little-endian on x86, so `headerle`.
const HEADER_DICT_CLIENT: &str = r#"
import json, socket, struct, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
data = "file contents\n".encode() * 100
header = json.dumps({"filename": "a.txt", "len": len(data)}).encode()
sock.sendall(struct.pack("i", len(header)) + header + data)
def recv_exactly(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("closed early")
        buf += chunk
    return buf
hlen = struct.unpack("i", recv_exactly(4))[0]
reply = json.loads(recv_exactly(hlen))
body = recv_exactly(reply["len"])
print(reply["filename"], reply["len"], body == data)
"#;

#[test]
fn header_dict_clients_are_served_with_headerle() {
    let server = ServeProcess::start(&["--framing", "headerle"]);
    let port = server.addr.port().to_string();
    let out = python(HEADER_DICT_CLIENT, &[&port]);
    assert_eq!(out, "a.txt 1400 True\n");
}

/// A Python server that prints its port, then serves like the tutorials do.
struct PythonServer(Child, String);

impl PythonServer {
    fn start(script: &str) -> PythonServer {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed (see .ci/run)");
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        PythonServer(child, port.trim().to_owned())
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tutorial TCP server (seed 001): `recv(1024)`, reply, until the client closes.
const TUTORIAL_TCP_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(5)
print(s.getsockname()[1], flush=True)
while True:
    conn, addr = s.accept()
    while True:
        data = conn.recv(1024)
        if not data:
            break
        conn.send("服务端已收到消息: ".encode() + data)
    conn.close()
"#;

#[test]
fn connect_talks_to_the_tutorial_tcp_server_in_raw_framing() {
    let server = PythonServer::start(TUTORIAL_TCP_SERVER);
    let out = Command::new(sockit_bin())
        .args(["connect", "--framing", "raw", "127.0.0.1", &server.1])
        .args(["-m", "hello", "-m", "world"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "服务端已收到消息: hello\n服务端已收到消息: world\n"
    );
}

#[test]
fn connect_pipes_lines_to_the_tutorial_server_one_message_each() {
    // Without waiting for replies the three sends would merge into one `recv(1024)`.
    let server = PythonServer::start(TUTORIAL_TCP_SERVER);
    let mut child = Command::new(sockit_bin())
        .args([
            "connect",
            "--framing",
            "raw",
            "--wait-reply",
            "127.0.0.1",
            &server.1,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.ends_with("服务端已收到消息: c\n"), "{text}");
}

/// A line-oriented Python echo server built on the standard library.
const PYTHON_LINE_ECHO: &str = r#"
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn connect_talks_to_a_python_line_echo_server() {
    let server = PythonServer::start(PYTHON_LINE_ECHO);
    let out = Command::new(sockit_bin())
        .args(["connect", "127.0.0.1", &server.1, "-m", "one", "-m", "two"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "one\ntwo\n");
}

/// The tutorial UDP server (seed 000): answers every datagram with "收到".
const TUTORIAL_UDP_SERVER: &str = r#"
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, address = sock.recvfrom(1024)
    sock.sendto("收到".encode("utf-8"), address)
"#;

#[test]
fn connect_udp_talks_to_the_tutorial_udp_server() {
    let server = PythonServer::start(TUTORIAL_UDP_SERVER);
    let out = Command::new(sockit_bin())
        .args(["connect", "--udp", "127.0.0.1", &server.1, "-m", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "收到\n");
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nc_sessions_work_with_the_default_line_framing() {
    let Some(nc) = peer_tool("nc") else { return };
    let server = ServeProcess::start(&[]);
    let mut cmd = Command::new(nc);
    // -N: close the connection at end of input, so nc sees the server finish.
    cmd.args(["-N", "127.0.0.1", &server.addr.port().to_string()]);
    let out = run_with_stdin(cmd, "hello\r\nsecond line\nbye\nignored\n".as_bytes());
    assert_eq!(out, "hello\r\nsecond line\nbye\n");
}

#[test]
fn nc_over_raw_framing_sees_lines_from_ack() {
    let Some(nc) = peer_tool("nc") else { return };
    let server = ServeProcess::start(&["--framing", "raw", "--service", "ack"]);
    let mut cmd = Command::new(nc);
    cmd.args(["-N", "127.0.0.1", &server.addr.port().to_string()]);
    let out = run_with_stdin(cmd, b"hello\n");
    assert!(
        out.starts_with("ack ") && out.ends_with(" 6 bytes\n"),
        "{out:?}"
    );
}

#[test]
fn nc_udp_gets_a_receipt() {
    let Some(nc) = peer_tool("nc") else { return };
    let server = ServeProcess::start(&["--udp", "--service", "ack"]);
    let mut cmd = Command::new(nc);
    // -u UDP, -w1: give up one second after stdin ends and nothing more arrives.
    cmd.args(["-u", "-w1", "127.0.0.1", &server.addr.port().to_string()]);
    let out = run_with_stdin(cmd, b"hello\n");
    assert!(
        out.starts_with("ack ") && out.ends_with(" 6 bytes\n"),
        "{out:?}"
    );
}

#[test]
fn socat_streams_lines_through_echo() {
    let Some(socat) = peer_tool("socat") else {
        return;
    };
    let server = ServeProcess::start(&[]);
    let mut cmd = Command::new(socat);
    cmd.args(["-t2", "-", &format!("TCP:{}", server.addr)]);
    let lines: String = (0..500).map(|i| format!("line {i}\n")).collect();
    let out = run_with_stdin(cmd, lines.as_bytes());
    assert_eq!(out, lines);
}

/// A server that speaks first: a greeting on connect, then an echo of every line.
const GREETING_SERVER: &str = r#"
import socketserver
class Greeter(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"welcome, stranger\n")
        for line in self.rfile:
            self.wfile.write(line)
server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Greeter)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn connect_prints_what_the_server_sends_unprompted() {
    let server = PythonServer::start(GREETING_SERVER);
    let mut cmd = Command::new(sockit_bin());
    cmd.args(["connect", "127.0.0.1", &server.1]);
    let out = run_with_stdin(cmd, b"ping\n");
    assert_eq!(out, "welcome, stranger\nping\n");
}

/// Drives `sockit connect` on a pseudo-terminal (stdin, stdout and stderr), as a person at a
/// keyboard; prints the exit code, whether the screen shows each prompt after the reply to the
/// previous line, and the screen.
const INTERACTIVE_SESSION: &str = r#"
import os, pty, select, subprocess, sys, time
sockit, port = sys.argv[1], sys.argv[2]
master, slave = pty.openpty()
p = subprocess.Popen([sockit, "connect", "127.0.0.1", port],
                     stdin=slave, stdout=slave, stderr=slave)
os.close(slave)
screen = b""
def read_until(text, limit=10):
    global screen
    deadline = time.time() + limit
    while text not in screen and time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            screen += chunk
read_until(b"> ")
os.write(master, b"hello there\n")   # echoed by the terminal, then by the server
read_until(b"hello there\r\nhello there\r\n> ")
os.write(master, b"\n")              # an empty line ends the session
rc = p.wait(timeout=10)
read_until(b"never", limit=0.3)
print(rc, screen.startswith(b"> hello there\r\nhello there\r\n> "), repr(screen))
"#;

#[test]
fn connect_on_a_terminal_prompts_and_stops_at_an_empty_line() {
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    let out = python(
        INTERACTIVE_SESSION,
        &[sockit_bin().to_str().unwrap(), &port],
    );
    // The second prompt comes after the reply to the first line, not before it.
    assert!(out.starts_with("0 True "), "{out}");
}
