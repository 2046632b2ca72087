//! Tests of the hub, the service a bare `sockit serve` runs: its banner, greeting and
//! commands, one reply message per request, and real clients (`sockit connect`, `nc`,
//! `telnet`) using it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The last line of the help text, which ends the greeting.
const HELP_END: &str = "anything else gets an ack receipt";

fn hub(extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--service", "hub"];
    args.extend_from_slice(extra);
    ServeProcess::start(&args)
}

/// A line-framed hub client on a plain socket.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Connects and reads the greeting, returning its lines.
    fn greeted(addr: SocketAddr) -> (Client, Vec<String>) {
        let mut c = Client::connect(addr);
        let greeting = c.read_until(HELP_END);
        (c, greeting)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "the server closed the connection");
        line.trim_end_matches('\n').to_owned()
    }

    fn read_until(&mut self, last: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            let done = line.contains(last);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// Whether the server sends nothing more for a short while.
    fn is_quiet(&mut self) -> bool {
        let s = self.reader.get_ref();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let quiet = matches!(
            self.reader.read(&mut byte),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut
        );
        self.reader
            .get_ref()
            .set_read_timeout(Some(PATIENCE))
            .unwrap();
        quiet
    }
}

#[test]
fn a_bare_serve_runs_the_hub_and_prints_how_to_connect() {
    let mut child = Command::new(sockit_bin())
        .args(["serve", "127.0.0.1", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    let addr: SocketAddr = first
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    assert!(first.contains("hub service"), "{first}");
    let port = addr.port();
    assert!(
        second.contains(&format!("sockit connect 127.0.0.1 {port}"))
            && second.contains(&format!("nc 127.0.0.1 {port}")),
        "{second}"
    );
    let (mut c, greeting) = Client::greeted(addr);
    assert!(greeting[0].contains("sockit hub"), "{greeting:?}");
    assert_eq!(c.ask("echo still the hub"), "still the hub");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn every_command_gets_exactly_one_reply_message() {
    let server = hub(&[]);
    let (mut c, greeting) = Client::greeted(server.addr);
    for command in [
        "help",
        "echo TEXT",
        "time",
        "lookup WORD",
        "chat [ROOM]",
        "bye, quit",
    ] {
        assert!(
            greeting.iter().any(|l| l.contains(command)),
            "{command} in {greeting:?}"
        );
    }
    assert!(
        !greeting.iter().any(|l| l.trim_start().starts_with("login")),
        "no login without a users file: {greeting:?}"
    );

    assert_eq!(c.ask("echo hello  world"), "hello  world");
    assert_eq!(c.ask("ECHO shouting works too"), "shouting works too");
    let time = c.ask("time");
    chrono::DateTime::parse_from_rfc3339(&time).unwrap_or_else(|e| panic!("{time:?}: {e}"));
    let tcp = c.ask("lookup TCP");
    assert!(!tcp.is_empty() && !tcp.starts_with("not found"), "{tcp}");
    assert_eq!(c.ask("lookup qqzzxxq"), "not found: qqzzxxq");
    assert_eq!(c.ask("lookup"), "usage: lookup WORD");
    assert_receipt(&c.ask("what is this"), "what is this".len());
    let login = c.ask("login");
    assert!(
        login.starts_with("error: login is not available"),
        "{login}"
    );

    // `help` again: the same lines, all of them, and nothing after them.
    c.send("help");
    let help = c.read_until(HELP_END);
    assert_eq!(help, greeting);
    assert!(c.is_quiet(), "nothing follows the help text");

    assert_eq!(c.ask("bye"), "bye");
    let mut rest = String::new();
    assert_eq!(
        c.reader.read_line(&mut rest).unwrap(),
        0,
        "closed after bye"
    );
    server.stop();
}

#[test]
fn the_help_text_is_one_write_that_arrives_whole() {
    // A tutorial-style client reads a reply with one recv(1024): the help text must be in it.
    let server = hub(&["--framing", "raw"]);
    let script = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
greeting = s.recv(1024).decode()
s.send(b"help")
time.sleep(0.3)
help = s.recv(1024).decode()
print(greeting == help, greeting.count("\n"), help.splitlines()[-1])
"#;
    let out = python(script, &[&server.addr.port().to_string()]);
    assert_eq!(
        out.trim(),
        format!("True 7 {}", format_args!("  {HELP_END}"))
    );
    server.stop();
}

#[test]
fn connect_prints_the_greeting_and_the_whole_help_as_one_reply() {
    let server = hub(&[]);
    let out = Command::new(sockit_bin())
        .args(["connect", "-m", "help", "-m", "echo done", "127.0.0.1"])
        .arg(server.addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let help_len = lines.iter().position(|l| l.contains(HELP_END)).unwrap() + 1;
    assert_eq!(lines.len(), 2 * help_len + 1, "{text}");
    assert_eq!(lines[..help_len], lines[help_len..2 * help_len]);
    assert_eq!(lines.last(), Some(&"done"));
    server.stop();
}

#[test]
fn nc_uses_the_hub() {
    let server = hub(&[]);
    let out = Command::new("nc")
        .args(["-N", "127.0.0.1", &server.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"echo from nc\nlookup udp\nbye\nnever read\n")?;
            child.wait_with_output()
        })
        .expect("nc (netcat-openbsd) must be installed (see .ci/run)");
    let text = String::from_utf8(out.stdout).unwrap();
    let after_greeting: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains(HELP_END))
        .skip(1)
        .collect();
    assert_eq!(after_greeting.len(), 3, "{text}");
    assert_eq!(after_greeting[0], "from nc");
    assert!(after_greeting[1].to_lowercase().contains("udp"), "{text}");
    assert_eq!(after_greeting[2], "bye");
    server.stop();
}

#[test]
fn telnet_uses_the_hub() {
    let server = hub(&[]);
    let port = server.addr.port().to_string();
    // telnet quits at the end of its input, so the input waits for the replies.
    let script = format!(
        "(sleep 0.5; printf 'echo over telnet\\n'; sleep 0.5; printf 'time\\n'; \
         sleep 0.5; printf 'bye\\n'; sleep 0.5) | telnet 127.0.0.1 {port}"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Connected to 127.0.0.1"),
        "telnet must be installed (see .ci/run): {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.iter().any(|l| l.contains(HELP_END)), "{text}");
    assert!(lines.contains(&"over telnet"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| chrono::DateTime::parse_from_rfc3339(l).is_ok()),
        "{text}"
    );
    assert!(lines.contains(&"bye"), "{text}");
    server.stop();
}

#[test]
fn over_udp_the_hub_answers_without_a_greeting() {
    let server = hub(&["--udp"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 2048];
    for (ask, check) in [
        ("echo datagram", Some("datagram")),
        ("lookup DNS", None),
        ("plain text", None),
    ] {
        sock.send_to(ask.as_bytes(), server.addr).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        match check {
            Some(want) => assert_eq!(reply, want),
            None => assert!(!reply.is_empty() && !reply.contains(HELP_END), "{reply}"),
        }
    }
    sock.send_to(b"help", server.addr).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with(HELP_END));
    server.stop();
}

#[test]
fn chat_enters_a_room_where_hub_users_talk() {
    let server = hub(&[]);
    let (mut a, _) = Client::greeted(server.addr);
    let (mut b, _) = Client::greeted(server.addr);
    a.send("chat sockets");
    a.read_until("* you are");
    b.send("chat sockets");
    b.read_until("* you are");
    let joined = a.read_until("joined");
    assert!(joined.last().unwrap().starts_with("* guest"), "{joined:?}");
    // In a room, "bye" is chat, not a quit word.
    b.send("bye for now");
    let said = a.read_until("bye for now");
    let said = said.last().unwrap();
    assert!(
        said.starts_with("<guest") && said.ends_with("> bye for now"),
        "{said}"
    );
    // `/quit` leaves the room and returns to the hub's commands.
    assert_eq!(b.ask("/quit"), "* you left the chat");
    assert_eq!(b.ask("echo back in the hub"), "back in the hub");
    a.read_until("left");
    server.stop();
}

#[test]
fn with_a_users_file_login_names_the_chat_member() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let status = Command::new(sockit_bin())
        .args(["user", "add", "alice", "--password-stdin", "--file"])
        .arg(&users)
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"s3cret pass\n")?;
            child.wait()
        })
        .unwrap();
    assert!(status.success());
    let server = hub(&["--users", users.to_str().unwrap()]);
    let (mut a, greeting) = Client::greeted(server.addr);
    assert!(
        greeting.iter().any(|l| l.trim_start().starts_with("login")),
        "{greeting:?}"
    );
    assert_eq!(a.ask("login"), "username:");
    assert_eq!(a.ask("alice"), "password:");
    assert_eq!(a.ask("wrong"), "login failed");
    assert_eq!(a.line(), "username:");
    assert_eq!(a.ask("alice"), "password:");
    assert_eq!(a.ask("s3cret pass"), "welcome alice");
    assert_eq!(a.ask("echo back at the prompt"), "back at the prompt");

    let (mut b, _) = Client::greeted(server.addr);
    b.send("chat");
    b.read_until("* you are");
    a.send("chat");
    let joined = b.read_until("joined");
    assert_eq!(joined.last().unwrap(), "* alice joined");
    a.send("hello from alice");
    let said = b.read_until("hello from alice");
    assert_eq!(said.last().unwrap(), "<alice> hello from alice");
    server.stop();
}

#[test]
fn login_up_front_comes_before_the_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let mut child = Command::new(sockit_bin())
        .args(["user", "add", "bob", "--password-stdin", "--file"])
        .arg(&users)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pw for bob\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let server = hub(&["--login", users.to_str().unwrap()]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.line(), "username:");
    assert_eq!(c.ask("bob"), "password:");
    assert_eq!(c.ask("pw for bob"), "welcome bob");
    let greeting = c.read_until(HELP_END);
    assert!(greeting[0].contains("sockit hub"), "{greeting:?}");
    assert_eq!(c.ask("echo in"), "in");
    server.stop();
}

#[test]
fn lang_zh_answers_a_miss_the_tutorials_way() {
    let server = hub(&["--lang", "zh"]);
    let (mut c, _) = Client::greeted(server.addr);
    assert_eq!(c.ask("lookup 不存在的词语"), "未搜索到");
    let hit = c.ask("lookup 三次握手");
    assert!(!hit.starts_with("未搜索到"), "{hit}");
    server.stop();
}

#[test]
fn a_hub_client_that_vanishes_mid_command_does_not_disturb_others() {
    let server = hub(&[]);
    let (mut steady, _) = Client::greeted(server.addr);
    let started = Instant::now();
    for i in 0..20 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        // Half a command, then gone.
        s.write_all(format!("echo unfinished {i}").as_bytes())
            .unwrap();
        drop(s);
        assert_eq!(c_echo(&mut steady, i), format!("steady {i}"));
    }
    assert!(started.elapsed() < PATIENCE);
    server.stop();
}

fn c_echo(c: &mut Client, i: usize) -> String {
    c.ask(&format!("echo steady {i}"))
}

#[test]
fn over_udp_chat_enters_a_room_and_quit_comes_back_to_the_commands() {
    let server = hub(&["--udp"]);
    let peer = || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    };
    let (a, b) = (peer(), peer());
    let recv = |s: &std::net::UdpSocket| {
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ask = |s: &std::net::UdpSocket, m: &str| {
        s.send_to(m.as_bytes(), server.addr).unwrap();
        recv(s)
    };
    assert!(ask(&a, "chat udp-room").starts_with("* you are guest"));
    assert!(ask(&b, "chat udp-room").contains("(2 members)"));
    assert!(recv(&a).ends_with(" joined"));
    b.send_to(b"hello over udp", server.addr).unwrap();
    let said = recv(&a);
    assert!(
        said.starts_with("<guest") && said.ends_with("> hello over udp"),
        "{said}"
    );
    assert_eq!(ask(&b, "/quit"), "* you left the chat");
    assert_eq!(ask(&b, "echo a command again"), "a command again");
    server.stop();
}

#[test]
fn invalid_utf8_and_oversized_lines_do_not_disturb_the_hub() {
    let server = hub(&["--max-line", "1K"]);
    let (mut c, _) = Client::greeted(server.addr);
    // Invalid UTF-8: a command still works on what can be read, anything else gets a receipt.
    c.writer.write_all(b"echo caf\xff\n").unwrap();
    assert_eq!(c.line(), "caf\u{fffd}");
    c.writer.write_all(b"\xfe\xff\n").unwrap();
    assert_receipt(&c.line(), 2);
    c.writer.write_all(b"lookup \xff\xff\n").unwrap();
    assert!(c.line().starts_with("not found"));
    // An endless line closes that one connection with an error; others carry on.
    let (mut other, _) = Client::greeted(server.addr);
    other.writer.write_all(&[b'x'; 4096]).unwrap();
    let notice = other.line();
    assert!(notice.starts_with("error:"), "{notice}");
    assert_eq!(c.ask("echo still here"), "still here");
    server.stop();
}
