//! `sockit serve --service lookup` through the real binary: the built-in and file knowledge
//! bases, matching, `--lang zh`, UDP and other framings, bad files, huge and malformed
//! queries, SIGHUP reloads, and the tutorial's own lookup client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A connected line-framing client with a read timeout.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(server: &ServeProcess) -> Client {
        let stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Sends `query` as one line and returns the reply line.
    fn ask(&mut self, query: &str) -> String {
        self.ask_bytes(query.as_bytes())
    }

    fn ask_bytes(&mut self, query: &[u8]) -> String {
        let mut line = query.to_vec();
        line.push(b'\n');
        self.stream.write_all(&line).unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("a reply line");
        assert!(reply.ends_with('\n'), "reply cut short: {reply:?}");
        reply.truncate(reply.len() - 1);
        reply
    }
}

/// A knowledge-base file in a temporary directory.
struct KbFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl KbFile {
    fn new(contents: &[u8]) -> KbFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.tsv");
        std::fs::write(&path, contents).unwrap();
        KbFile { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// The server's log, collected by a thread as it is written.
#[derive(Clone)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn capture(server: &mut ServeProcess) -> Log {
        let log = Log(Arc::new(Mutex::new(String::new())));
        let mut stderr = BufReader::new(server.stderr.take().expect("stderr"));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(stderr.read_line(&mut line), Ok(n) if n > 0) {
                sink.0.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        log
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` `times` times; returns the log.
    fn wait_for(&self, needle: &str, times: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text();
            if text.matches(needle).count() >= times {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?} {times}x:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn lookup(args: &[&str]) -> ServeProcess {
    let mut all = vec!["--service", "lookup"];
    all.extend_from_slice(args);
    ServeProcess::start(&all)
}

const TCP_ANSWER: &str = "Transmission Control Protocol: connection-oriented";

#[test]
fn the_builtin_knowledge_base_answers_in_english_and_chinese() {
    let server = lookup(&[]);
    let mut c = Client::connect(&server);
    let tcp = c.ask("tcp");
    assert!(tcp.starts_with(TCP_ANSWER), "{tcp}");
    assert!(tcp.contains(" (see also: "), "{tcp}");
    assert!(tcp.ends_with(')'), "{tcp}");
    // Case-insensitive.
    assert_eq!(c.ask("TCP"), tcp);
    assert_eq!(c.ask("  Tcp  "), tcp);
    // Chinese: an exact keyword, and a substring of one.
    let handshake = c.ask("三次握手");
    assert!(handshake.starts_with("TCP 建立连接"), "{handshake}");
    assert_eq!(c.ask("握手"), handshake);
    // A keyword inside a longer query.
    assert!(c.ask("什么是四次挥手?").starts_with("TCP 断开连接"));
    assert_eq!(c.ask("qwertyuiop"), "not found: qwertyuiop");
    assert_eq!(c.ask(""), "empty query: send a keyword to look up");
}

#[test]
fn a_file_knowledge_base_ranks_and_lists_other_matches() {
    let kb = KbFile::new(
        "# test knowledge base\n\
         port\tA port number.\n\
         well-known ports\tPorts below 1024.\n\
         ephemeral port\tA temporary client port.\n\
         passport\tNot networking.\n\
         portable\tAlso not.\n\
         sport\tNo.\n\
         ΣΊΣΥΦΟΣ\tA Greek name.\n"
            .as_bytes(),
    );
    let mut server = lookup(&["--kb", kb.arg()]);
    let log = Log::capture(&mut server);
    log.wait_for("loaded 7 entries from", 1);
    let mut c = Client::connect(&server);
    assert_eq!(
        c.ask("PORT"),
        "A port number. (see also: sport, passport, portable)"
    );
    assert_eq!(
        c.ask("ephemeral ports"),
        "A temporary client port. (see also: port)"
    );
    assert_eq!(c.ask("σίσυφος"), "A Greek name.");
    assert_eq!(c.ask("p"), "not found: p");
    assert_eq!(c.ask("bye"), "bye");
}

#[test]
fn lang_zh_answers_the_tutorials_not_found_text() {
    let server = lookup(&["--lang", "zh"]);
    let mut c = Client::connect(&server);
    assert_eq!(c.ask("qwertyuiop"), "未搜索到");
    assert_eq!(c.ask(""), "请输入要查询的关键词");
    assert!(c.ask("端口").starts_with("16 位的端口号"));
}

#[test]
fn lookup_works_over_udp() {
    let server = lookup(&["--udp"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 65_536];
    for (query, want) in [
        ("udp", "User Datagram Protocol"),
        ("套接字", "socket:"),
        ("nothing-like-this", "not found: nothing-like-this"),
    ] {
        socket.send_to(query.as_bytes(), server.addr).unwrap();
        let (n, _) = socket.recv_from(&mut buf).expect("a reply datagram");
        let reply = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(reply.starts_with(want), "{query}: {reply}");
    }
}

#[test]
fn lookup_works_with_length_prefixed_framing() {
    let server = lookup(&["--framing", "len32"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    for query in ["mtu", "DNS"] {
        s.write_all(&len32(query.as_bytes())).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        let reply = String::from_utf8(body).unwrap();
        assert!(!reply.starts_with("not found"), "{query}: {reply}");
        assert!(!reply.ends_with('\n'), "{reply:?}");
    }
}

#[test]
fn an_empty_file_is_served_with_a_warning() {
    let kb = KbFile::new(b"");
    let mut server = lookup(&["--kb", kb.arg()]);
    let log = Log::capture(&mut server);
    let text = log.wait_for("loaded 0 entries", 1);
    assert!(
        text.contains(&format!("{}: no entries", kb.arg())),
        "{text}"
    );
    let mut c = Client::connect(&server);
    assert_eq!(c.ask("tcp"), "not found: tcp");
}

#[test]
fn malformed_lines_are_reported_with_file_and_line_and_skipped() {
    let kb = KbFile::new(
        b"tcp\treliable\nno tab on this line\nudp\tunreliable\n\tno keyword\nTCP\tduplicate\n",
    );
    let mut server = lookup(&["--kb", kb.arg()]);
    let log = Log::capture(&mut server);
    let text = log.wait_for("loaded 2 entries", 1);
    let file = kb.arg();
    for want in [
        format!("{file}:2: no tab between keyword and answer; line skipped"),
        format!("{file}:4: empty keyword; line skipped"),
        format!("{file}:5: duplicate keyword 'TCP' (first on line 1); line skipped"),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let mut c = Client::connect(&server);
    assert_eq!(c.ask("tcp"), "reliable");
    assert_eq!(c.ask("udp"), "unreliable");
    assert_eq!(c.ask("no tab"), "not found: no tab");
}

#[test]
fn an_unreadable_or_non_utf8_file_stops_the_server_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.tsv");
    let bad = KbFile::new(b"ok\tfine\n# fine\nbad\t\xc3\x28\n");
    for (path, why) in [
        (
            missing.to_str().unwrap(),
            format!(
                "{}: cannot read the knowledge base: No such file or directory",
                missing.display()
            ),
        ),
        (bad.arg(), format!("{}:3: not valid UTF-8", bad.arg())),
    ] {
        let out = Command::new(sockit_bin())
            .args([
                "serve",
                "127.0.0.1",
                "0",
                "--service",
                "lookup",
                "--kb",
                path,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].starts_with("sockit: error: "), "{stderr}");
        assert!(errors[0].contains(&why), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "no banner for a server that never started"
        );
    }
}

#[test]
fn non_ascii_and_invalid_utf8_queries_get_answers() {
    let kb = KbFile::new("tcp\treliable\n端口\tport\nnaïve\tfrench\n".as_bytes());
    let server = lookup(&["--kb", kb.arg()]);
    let mut c = Client::connect(&server);
    // Invalid bytes become U+FFFD; the keyword inside still matches.
    assert_eq!(c.ask_bytes(b"\xff\xfetcp\xc3"), "reliable");
    assert_eq!(c.ask_bytes(b"\xff\xfe"), "not found: \u{FFFD}\u{FFFD}");
    assert_eq!(c.ask("NAÏVE"), "french");
    assert_eq!(c.ask("什么是端口"), "port");
    assert_eq!(c.ask("🦀🦀"), "not found: 🦀🦀");
    // Control characters are escaped in the repeated query.
    assert_eq!(c.ask("a\u{1b}[2Jb"), "not found: a\\u{1b}[2Jb");
    // A long query is repeated only in part.
    let long = "z".repeat(5000);
    assert_eq!(c.ask(&long), format!("not found: {}…", "z".repeat(100)));
}

/// Writes `payload` on a thread (ignoring a reset: the server may close first) and reads
/// everything until the server closes; returns what was read.
fn send_and_read_to_end(server: &ServeProcess, payload: Vec<u8>, half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE * 3)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        if writer.write_all(&payload).is_ok() && half_close {
            let _ = writer.shutdown(std::net::Shutdown::Write);
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e} after {} bytes", got.len()),
        }
    }
    sender.join().unwrap();
    got
}

const TEN_MB: usize = 10 * 1024 * 1024;

#[test]
fn a_10mb_line_hits_the_line_limit_and_others_are_still_served() {
    let server = lookup(&[]);
    let mut other = Client::connect(&server);
    let payload = "tcp ".repeat(TEN_MB / 4).into_bytes();
    let got = send_and_read_to_end(&server, payload, false);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("error: line exceeds the limit of 65536 bytes"),
        "{text}"
    );
    assert!(other.ask("tcp").starts_with(TCP_ANSWER));
    assert!(
        Client::connect(&server)
            .ask("udp")
            .starts_with("User Datagram")
    );
}

/// The server's peak resident memory, in KiB.
fn peak_rss_kib(server: &ServeProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_10mb_line_in_raw_framing_is_answered_chunk_by_chunk_in_bounded_memory() {
    let kb = KbFile::new(b"tcp\tTCP-ANSWER\n");
    let server = lookup(&["--kb", kb.arg(), "--framing", "raw"]);
    // Warm up, so the baseline includes the runtime's threads and buffers.
    assert_eq!(Client::connect(&server).ask("tcp"), "TCP-ANSWER");
    let before = peak_rss_kib(&server);
    let mut payload = "tcp ".repeat(TEN_MB / 4).into_bytes();
    payload.push(b'\n');
    let got = send_and_read_to_end(&server, payload, true);
    let text = String::from_utf8(got).unwrap();
    // Every chunk (8 KiB at most) holds "tcp" and gets its own answer, and nothing else.
    let answers = text.matches("TCP-ANSWER").count();
    assert!(answers >= TEN_MB / 8192, "{answers} answers");
    assert!(
        text.replace("TCP-ANSWER", "").trim().is_empty(),
        "unexpected replies"
    );
    let grown = peak_rss_kib(&server).saturating_sub(before);
    assert!(grown < 32 * 1024, "peak RSS grew by {grown} KiB");
    assert_eq!(Client::connect(&server).ask("tcp"), "TCP-ANSWER");
}

#[test]
fn sighup_reloads_a_fixed_file_and_keeps_the_old_one_when_broken() {
    let kb = KbFile::new(b"tcp\tversion one\n");
    let mut server = lookup(&["--kb", kb.arg()]);
    let log = Log::capture(&mut server);
    let mut c = Client::connect(&server);
    assert_eq!(c.ask("tcp"), "version one");

    // Broken: not UTF-8. The old answers stay, on the same connection.
    std::fs::write(&kb.path, b"tcp\tversion \xff two\n").unwrap();
    server.signal(libc::SIGHUP);
    let text = log.wait_for("reload failed", 1);
    assert!(
        text.contains(&format!(
            "reload failed, still serving the previous 1 entries: {}:1: not valid UTF-8",
            kb.arg()
        )),
        "{text}"
    );
    assert_eq!(c.ask("tcp"), "version one");

    // Gone altogether: the same.
    std::fs::remove_file(&kb.path).unwrap();
    server.signal(libc::SIGHUP);
    let text = log.wait_for("reload failed", 2);
    assert!(text.contains("cannot read the knowledge base"), "{text}");
    assert_eq!(c.ask("tcp"), "version one");

    // Fixed: new answers, same connection.
    std::fs::write(&kb.path, b"tcp\tversion three\nudp\tnew entry\n").unwrap();
    server.signal(libc::SIGHUP);
    log.wait_for("reloaded 2 entries from", 1);
    assert_eq!(c.ask("tcp"), "version three");
    assert_eq!(c.ask("udp"), "new entry");
}

/// The tutorial's lookup client (seed 000), word for word; only the server address differs.
const TUTORIAL_CLIENT: &str = r#"import socket
sock=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
sock.connect(("10.36.151.132",1121))

while True:
    send=input("请输入:")
    sock.send(send.encode("utf-8"))
    if send=="bye":
        break
    print(sock.recv(1024).decode("utf-8"))
"#;

fn tutorial_client(port: u16) -> String {
    TUTORIAL_CLIENT.replace(
        "(\"10.36.151.132\",1121)",
        &format!("(\"127.0.0.1\",{port})"),
    )
}

#[test]
fn the_tutorials_lookup_client_works_unchanged_in_raw_framing() {
    let server = lookup(&["--framing", "raw", "--lang", "zh"]);
    let script = tutorial_client(server.addr.port());
    let out = python_with_input(&script, "TCP\n三次握手\n端口\n不存在的词\nbye\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let replies: Vec<&str> = stdout.split("请输入:").filter(|s| !s.is_empty()).collect();
    assert_eq!(replies.len(), 4, "{stdout}");
    assert!(replies[0].starts_with(TCP_ANSWER), "{stdout}");
    assert!(replies[1].starts_with("TCP 建立连接"), "{stdout}");
    assert!(replies[2].starts_with("16 位的端口号"), "{stdout}");
    assert_eq!(replies[3], "未搜索到\n");
}
