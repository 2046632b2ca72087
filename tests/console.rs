//! `sockit serve --service console` through the real binary: the operator's stdin and stdout
//! are pipes this test holds, clients are plain sockets and the tutorials' own Python chat
//! clients (seed 004 for TCP, seed 002 for UDP), run unchanged but for the server address.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PATIENCE, sockit_bin};

/// `sockit serve 127.0.0.1 0 --service console` with its stdin, stdout and stderr piped here.
struct ConsoleServer {
    child: Child,
    addr: SocketAddr,
    stdin: Option<ChildStdin>,
    /// Stdout lines after the banner; `None` when stdout was closed on purpose.
    stdout: Option<Receiver<String>>,
    /// Stdout lines taken so far, for failure messages.
    seen: Vec<String>,
    /// Everything written to stderr so far.
    log: Arc<Mutex<String>>,
}

impl ConsoleServer {
    fn start(args: &[&str]) -> ConsoleServer {
        Self::spawn(args, true)
    }

    /// Starts the server and closes its stdout after the banner's first line, as
    /// `sockit serve ... | head -1` would.
    fn start_with_stdout_closed(args: &[&str]) -> ConsoleServer {
        Self::spawn(args, false)
    }

    fn spawn(args: &[&str], keep_stdout: bool) -> ConsoleServer {
        let mut child = Command::new(sockit_bin())
            .args(["serve", "127.0.0.1", "0", "--service", "console"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockit serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).expect("read the banner");
        let addr = banner
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in banner {banner:?}"));
        let lines = if keep_stdout {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match stdout.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let text = String::from_utf8(line.clone())
                                .expect("the console prints valid UTF-8");
                            let text = text.trim_end_matches('\n').to_owned();
                            if tx.send(text).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Some(rx)
        } else {
            drop(stdout);
            None
        };
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        ConsoleServer {
            child,
            addr,
            stdin,
            stdout: lines,
            seen: Vec::new(),
            log,
        }
    }

    /// Types one line on the operator's terminal.
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the console's stdin");
    }

    /// Ends the operator's input.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The next stdout line.
    fn next_line(&mut self) -> String {
        let rx = self.stdout.as_ref().expect("stdout kept");
        match rx.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!(
                "no stdout line ({e:?}); seen {:#?}\nlog:\n{}",
                self.seen,
                self.log()
            ),
        }
    }

    /// Skips stdout lines until one equals `want`.
    fn expect(&mut self, want: &str) {
        self.expect_where(|line| line == want, want);
    }

    /// Skips stdout lines until one satisfies `pred`; returns it.
    fn expect_where(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let rx = self.stdout.as_ref().expect("stdout kept");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "stdout never showed {what:?}; seen {:#?}\nlog:\n{}",
                    self.seen,
                    self.log()
                ),
            }
        }
    }

    /// Waits for the next client to connect; returns its address as printed.
    fn expect_connected(&mut self) -> String {
        let line = self.expect_where(
            |l| l.starts_with('[') && l.ends_with("] connected"),
            "a connection",
        );
        line[1..line.len() - "] connected".len()].to_owned()
    }

    /// Waits until stderr contains `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops the server with SIGTERM and checks that it exits cleanly.
    fn stop(mut self) -> String {
        // SAFETY: kill() with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the stderr thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        assert!(status.success(), "serve exited with {status}: {log}");
        log
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line-framing TCP client.
struct Client {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Client {
    fn connect(server: SocketAddr) -> Client {
        let stream = TcpStream::connect(server).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let addr = stream.local_addr().unwrap().to_string();
        Client {
            reader: BufReader::new(stream),
            addr,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    fn say(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read a line");
        assert!(n > 0, "{}: connection closed instead of a line", self.addr);
        line.trim_end_matches('\n').to_owned()
    }

    fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to the end");
        assert!(
            rest.is_empty(),
            "unexpected {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// A UDP client with its own address.
struct Peer {
    socket: UdpSocket,
    addr: String,
}

impl Peer {
    fn new(server: SocketAddr) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(server).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        Peer { socket, addr }
    }

    fn say(&self, text: &str) {
        self.socket.send(text.as_bytes()).unwrap();
    }

    fn recv(&self) -> String {
        let mut buf = [0u8; 2048];
        let n = self.socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
}

/// The tutorial's TCP chat client (seed 004), reformatted, with the server address substituted.
fn tutorial_tcp_client(server: SocketAddr) -> String {
    r#"import socket
client = socket.socket()
client.connect(("192.168.1.165",8900))
while True:
    send_data = input("client>>")
    client.send(send_data.encode("utf-8"))
    if send_data == "quit":
        break
    re_data = client.recv(1024).decode("utf-8")
    if re_data == "quit":
        break
    print("server>>",re_data)
client.close()
"#
    .replace(
        r#"("192.168.1.165",8900)"#,
        &format!(r#"("127.0.0.1",{})"#, server.port()),
    )
}

/// The tutorial's UDP chat client (seed 002), unchanged. It asks for the address on stdin; when
/// a conversation ends it asks again, so the end of its input ends it (caught here, so that
/// finishing reads as success).
const TUTORIAL_UDP_CLIENT: &str = r#"import socket

receive = socket.socket(type=socket.SOCK_DGRAM)
while True:
    addr = input('输入要连接的ip地址:')
    addr_port = int(input('输入端口号:'))
    receive.connect((addr, addr_port))
    while True:
        n = input('>>>').encode('utf-8')
        receive.sendto(bytes(n), (addr, addr_port))
        msg = receive.recv(1024)
        ret = msg.decode('utf-8')
        if ret.upper() == 'Q':
            receive.sendto(bytes('您已断开连接!'.encode('utf-8')), (addr, addr_port))
            print('对方已与您断开连接!')
            break
        elif ret == '您已断开连接!':
            print(ret)
            break
        else:
            print(ret)
receive.close()
"#;

fn udp_client_script() -> String {
    let indented: String = TUTORIAL_UDP_CLIENT
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!("try:\n{indented}except EOFError:\n    pass\n")
}

/// Starts a Python script with `input` on its stdin, then closes it: a client that asks for
/// more input than the test planned fails with `EOFError`.
fn spawn_python(script: &str, input: &str) -> Child {
    let mut child = Command::new("python3")
        .arg("-u")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (see .ci/run)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    child
}

/// Waits for a child to exit by itself; returns (success, stdout, stderr).
fn finish(mut child: Child) -> (bool, String, String) {
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "client did not finish; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Closes a TCP connection with a reset, like a client whose machine vanished.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(stream);
}

#[test]
fn tcp_client_lines_are_printed_with_the_address_and_operator_lines_reach_the_client() {
    let mut server = ConsoleServer::start(&[]);
    server.say("anyone?");
    server.expect("* no client connected; line not sent");
    let mut client = Client::connect(server.addr);
    assert_eq!(server.expect_connected(), client.addr);
    client.say("hello from the client");
    server.expect(&format!("[{}] hello from the client", client.addr));
    server.say("hello from the operator");
    assert_eq!(client.line(), "hello from the operator");
    server.say("//to is not a command here");
    assert_eq!(client.line(), "/to is not a command here");
    server.stop();
}

#[test]
fn operator_lines_go_to_all_clients_or_to_the_one_named_with_to() {
    let mut server = ConsoleServer::start(&[]);
    let mut a = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", a.addr));
    let mut b = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", b.addr));

    server.say("to both");
    assert_eq!(a.line(), "to both");
    assert_eq!(b.line(), "to both");

    server.say(&format!("/to {} only a", a.addr));
    let b_port = b.addr.rsplit(':').next().unwrap().to_owned();
    server.say(&format!("/to {b_port} only b, by port"));
    server.say(&format!("/to {}", b.addr));
    server.expect(&format!("* lines go to {}", b.addr));
    server.say("b is the target");
    server.say("/who");
    server.expect(&format!("* 2 clients connected; lines go to {}", b.addr));
    server.expect(&format!("*   {}", a.addr));
    server.expect(&format!("*   {}", b.addr));
    server.say("/to all");
    server.expect("* lines go to every client");
    server.say("both again");

    assert_eq!(a.line(), "only a");
    assert_eq!(a.line(), "both again");
    assert_eq!(b.line(), "only b, by port");
    assert_eq!(b.line(), "b is the target");
    assert_eq!(b.line(), "both again");

    server.say("/to 127.0.0.1:1 nobody");
    server.expect("* no client at 127.0.0.1:1 (/who lists them)");
    server.say("/help");
    server.expect_where(|l| l.starts_with("* /who "), "the help text");
    server.say("/nick x");
    server.expect_where(
        |l| l.starts_with("* unknown command /nick"),
        "unknown command",
    );
    server.stop();
}

#[test]
fn a_client_quit_word_ends_its_conversation_with_a_notice() {
    let mut server = ConsoleServer::start(&[]);
    let mut a = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", a.addr));
    let mut b = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", b.addr));
    a.say("quit");
    assert_eq!(a.line(), "disconnected");
    a.assert_closed();
    server.expect(&format!("[{}] disconnected", a.addr));
    b.say("BYE");
    assert_eq!(b.line(), "disconnected");
    b.assert_closed();
    server.expect(&format!("[{}] disconnected", b.addr));
    server.say("/who");
    server.expect("* no client connected");
    server.stop();
}

#[test]
fn the_operator_quit_word_stops_the_tutorial_tcp_client_and_closes_every_client() {
    let mut server = ConsoleServer::start(&["--framing", "raw"]);
    let python = spawn_python(&tutorial_tcp_client(server.addr), "hello\n");
    let tutorial = server.expect_connected();
    server.expect(&format!("[{tutorial}] hello"));
    let mut other = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", other.addr));

    server.say("quit");
    let (ok, out, err) = finish(python);
    assert!(ok, "the tutorial client failed: {err}");
    assert!(!out.contains("server>>"), "it printed {out:?}");
    server.expect(&format!("[{tutorial}] disconnected"));
    // The other client (raw framing, no line endings of its own) reads the word, then the
    // notice, then the end of the connection.
    let mut rest = Vec::new();
    other.reader.read_to_end(&mut rest).unwrap();
    assert_eq!(String::from_utf8(rest).unwrap(), "quitdisconnected");

    // The server carries on.
    let mut next = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", next.addr));
    next.say("still there?");
    server.expect(&format!("[{}] still there?", next.addr));
    server.stop();
}

#[test]
fn the_tutorial_tcp_client_in_raw_framing_exchanges_lines_until_it_quits() {
    let mut server = ConsoleServer::start(&["--framing", "raw"]);
    let python = spawn_python(
        &tutorial_tcp_client(server.addr),
        "hello\nhow are you\n你好\nquit\n",
    );
    let addr = server.expect_connected();
    server.expect(&format!("[{addr}] hello"));
    server.say("hi");
    server.expect(&format!("[{addr}] how are you"));
    server.say("fine, and you?");
    server.expect(&format!("[{addr}] 你好"));
    server.say("再见");
    server.expect(&format!("[{addr}] disconnected"));
    let (ok, out, err) = finish(python);
    assert!(ok, "the tutorial client failed: {err}");
    let replies: Vec<&str> = out
        .split("client>>")
        .filter(|s| !s.is_empty())
        .map(str::trim_end)
        .collect();
    assert_eq!(
        replies,
        ["server>> hi", "server>> fine, and you?", "server>> 再见"]
    );
    server.stop();
}

#[test]
fn the_tutorial_udp_client_chats_and_ends_with_q() {
    let mut server = ConsoleServer::start(&["--udp", "--lang", "zh"]);
    let input = format!("127.0.0.1\n{}\nhello\n你好\nQ\n", server.addr.port());
    let python = spawn_python(&udp_client_script(), &input);
    let addr = server.expect_connected();
    server.expect(&format!("[{addr}] hello"));
    server.say("hi there");
    server.expect(&format!("[{addr}] 你好"));
    server.say("你好!");
    server.expect(&format!("[{addr}] disconnected"));
    let (ok, out, err) = finish(python);
    assert!(ok, "the tutorial client failed: {err}");
    let printed: Vec<&str> = out
        .split(['\n', ':'])
        .map(|s| s.trim_start_matches(">>>"))
        .filter(|s| !s.is_empty() && !s.starts_with("输入"))
        .collect();
    assert_eq!(printed, ["hi there", "你好!", "您已断开连接!"], "{out:?}");
    server.stop();
}

#[test]
fn the_operator_q_ends_a_udp_conversation_and_the_clients_farewell_gets_no_reply() {
    let mut server = ConsoleServer::start(&["--udp", "--lang", "zh"]);
    let input = format!("127.0.0.1\n{}\nhello\n", server.addr.port());
    let python = spawn_python(&udp_client_script(), &input);
    let addr = server.expect_connected();
    server.expect(&format!("[{addr}] hello"));
    server.say("Q");
    server.expect(&format!("[{addr}] disconnected"));
    let (ok, out, err) = finish(python);
    assert!(ok, "the tutorial client failed: {err}");
    assert!(out.contains("对方已与您断开连接!"), "{out:?}");
    // Its farewell made no new conversation: the next stdout lines are a newcomer's.
    let newcomer = Peer::new(server.addr);
    newcomer.say("next");
    assert_eq!(server.next_line(), format!("[{}] connected", newcomer.addr));
    assert_eq!(server.next_line(), format!("[{}] next", newcomer.addr));

    // A farewell from an unknown peer is not answered either.
    let stranger = Peer::new(server.addr);
    stranger
        .socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stranger.say("您已断开连接!");
    let mut buf = [0u8; 64];
    assert!(
        stranger.socket.recv(&mut buf).is_err(),
        "the farewell was answered"
    );
    server.stop();
}

#[test]
fn udp_operator_lines_go_to_the_last_address_heard_from_or_to_the_chosen_one() {
    let mut server = ConsoleServer::start(&["--udp"]);
    let a = Peer::new(server.addr);
    let b = Peer::new(server.addr);
    server.say("nobody yet");
    server.expect("* no client connected; line not sent");

    a.say("a1");
    server.expect(&format!("[{}] a1", a.addr));
    server.say("r1");
    assert_eq!(a.recv(), "r1");
    b.say("b1");
    server.expect(&format!("[{}] b1", b.addr));
    server.say("r2");
    assert_eq!(b.recv(), "r2");
    a.say("a2");
    server.expect(&format!("[{}] a2", a.addr));
    server.say("r3");
    assert_eq!(a.recv(), "r3", "r2 went to b only");

    server.say(&format!("/to {}", b.addr));
    server.expect(&format!("* lines go to {}", b.addr));
    a.say("a3");
    server.expect(&format!("[{}] a3", a.addr));
    server.say("r4");
    assert_eq!(b.recv(), "r4");
    server.say("/to all");
    server.expect(&format!(
        "* lines go to the last address heard from ({})",
        a.addr
    ));
    server.say("r5");
    assert_eq!(a.recv(), "r5", "r4 went to b only");

    // A UDP client's quit word: the notice, and the peer is forgotten.
    b.say("quit");
    assert_eq!(b.recv(), "disconnected");
    server.expect(&format!("[{}] disconnected", b.addr));
    server.stop();
}

#[test]
fn a_vanished_client_is_reported_and_the_others_carry_on() {
    let mut server = ConsoleServer::start(&[]);
    let mut a = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", a.addr));
    let mut b = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", b.addr));
    a.say("I am about to vanish");
    server.expect(&format!("[{}] I am about to vanish", a.addr));
    a.send(b"half a li");
    let a_addr = a.addr.clone();
    reset(a.reader.into_inner());
    server.expect(&format!("[{a_addr}] disconnected"));

    server.say("still here");
    assert_eq!(b.line(), "still here");
    server.say(&format!("/to {a_addr} hello?"));
    server.expect(&format!("* no client at {a_addr} (/who lists them)"));
    b.say("me too");
    server.expect(&format!("[{}] me too", b.addr));
    server.stop();
}

#[test]
fn invalid_utf8_and_escape_sequences_are_printed_harmlessly() {
    let mut server = ConsoleServer::start(&[]);
    let mut a = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", a.addr));
    a.send(b"caf\xc3 \xff ok\n");
    server.expect(&format!("[{}] caf\u{FFFD} \u{FFFD} ok", a.addr));
    a.send(b"\x1b[2J\x1b]0;title\x07cleared?\n");
    server.expect(&format!("[{}] [2J]0;titlecleared?", a.addr));
    server.say("still talking");
    assert_eq!(a.line(), "still talking");
    server.stop();
}

#[test]
fn several_lines_in_one_raw_read_are_printed_one_per_line() {
    let mut server = ConsoleServer::start(&["--framing", "raw"]);
    let mut a = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", a.addr));
    a.send(b"one\r\ntwo\nquit\nnever printed\n");
    assert_eq!(server.next_line(), format!("[{}] one", a.addr));
    assert_eq!(server.next_line(), format!("[{}] two", a.addr));
    assert_eq!(server.next_line(), format!("[{}] disconnected", a.addr));
    // The client ends its lines with `\n`, so the notice gets one too.
    assert_eq!(a.line(), "disconnected");
    a.assert_closed();
    server.stop();
}

#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let mut server = ConsoleServer::start_with_stdout_closed(&["-v"]);
    let mut a = Client::connect(server.addr);
    a.say("hello");
    // Stdout is gone; the debug log says when the line was read (after the client joined).
    server.wait_log(&format!("message from {}", a.addr));
    server.wait_log("cannot write to stdout");
    server.say("the operator still reaches you");
    assert_eq!(a.line(), "the operator still reaches you");
    a.say("quit");
    assert_eq!(a.line(), "disconnected");
    a.assert_closed();
    assert!(server.is_running());

    let mut b = Client::connect(server.addr);
    b.say("another");
    server.wait_log(&format!("message from {}", b.addr));
    server.say("welcome");
    assert_eq!(b.line(), "welcome");
    let log = server.stop();
    assert_eq!(log.matches("cannot write to stdout").count(), 1, "{log}");
}

#[test]
fn the_end_of_operator_input_keeps_the_server_serving() {
    let mut server = ConsoleServer::start(&[]);
    server.close_stdin();
    server.wait_log("operator input (stdin) ended");
    let mut a = Client::connect(server.addr);
    server.expect(&format!("[{}] connected", a.addr));
    a.say("is anyone there?");
    server.expect(&format!("[{}] is anyone there?", a.addr));
    a.say("bye");
    assert_eq!(a.line(), "disconnected");
    server.expect(&format!("[{}] disconnected", a.addr));
    let log = server.stop();
    assert_eq!(log.matches("operator input (stdin) ended").count(), 1);
}
