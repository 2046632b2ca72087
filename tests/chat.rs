//! The chat service through the real binary: delivery to many members in order, a member that
//! stops reading, escape-sequence stripping, nicks, every command, history, framings other
//! than lines, UDP rooms, `nc` and `telnet` as clients, and `sockit bench --chat`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader as StdBufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::chat::Member;
use common::{PATIENCE, ServeProcess, len32, peer_tool, read_len32, sockit_bin};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

impl Member {
    /// Like [`Member::join`], with a small receive buffer that the kernel does not grow: a
    /// member that stops reading then stops taking data soon, as across a real network.
    async fn join_small(addr: SocketAddr) -> Member {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let stream = socket.connect(addr).await.expect("connect");
        Self::welcomed(stream).await
    }

    /// The next line, or `None` at end of stream; panics if none comes in time.
    async fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(PATIENCE, self.reader.read_until(b'\n', &mut buf))
            .await
            .unwrap_or_else(|_| panic!("{}: no line in time", self.nick))
            .expect("read");
        if n == 0 {
            return None;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Some(String::from_utf8(buf).expect("utf-8"))
    }

    /// Sends a command and returns its one-message reply (its lines).
    async fn command(&mut self, text: &str, lines: usize) -> Vec<String> {
        self.send(text).await;
        let mut reply = Vec::new();
        for _ in 0..lines {
            reply.push(self.line().await);
        }
        reply
    }

    /// Reads the rest until the server closes.
    async fn rest(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.try_line().await {
            lines.push(line);
        }
        lines
    }
}

fn chat_server(extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--service", "chat"];
    args.extend_from_slice(extra);
    ServeProcess::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_members_get_every_line_once_in_order() {
    const MEMBERS: usize = 100;
    const LINES: usize = 20;
    let server = chat_server(&[]);
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        members.push(Member::join(server.addr).await);
    }
    let nicks: Vec<String> = members.iter().map(|m| m.nick.clone()).collect();
    let tasks: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            let nicks = nicks.clone();
            tokio::spawn(async move {
                // Everyone who came later joins while this member waits.
                for later in &nicks[i + 1..] {
                    assert_eq!(m.line().await, format!("* {later} joined"));
                }
                let mut batch = String::new();
                for n in 0..LINES {
                    batch += &format!("c{i}:{n}\n");
                }
                m.writer.write_all(batch.as_bytes()).await.unwrap();
                let mut next: HashMap<String, usize> = HashMap::new();
                for _ in 0..(MEMBERS - 1) * LINES {
                    let line = m.line().await;
                    let (nick, text) = line
                        .strip_prefix('<')
                        .and_then(|l| l.split_once("> "))
                        .unwrap_or_else(|| panic!("member {i}: unexpected {line:?}"));
                    let (from, seq) = text
                        .strip_prefix('c')
                        .and_then(|t| t.split_once(':'))
                        .unwrap_or_else(|| panic!("member {i}: unexpected {line:?}"));
                    let from: usize = from.parse().unwrap();
                    assert_ne!(from, i, "a member got its own line back");
                    assert_eq!(nick, nicks[from], "{line:?} under the wrong nick");
                    let expected = next.entry(nick.to_owned()).or_default();
                    assert_eq!(
                        seq.parse::<usize>().unwrap(),
                        *expected,
                        "out of order: {line:?}"
                    );
                    *expected += 1;
                }
                assert_eq!(next.len(), MEMBERS - 1);
                assert!(next.values().all(|&n| n == LINES));
                m
            })
        })
        .collect();
    let mut members = Vec::new();
    for task in tasks {
        members.push(task.await.expect("member task"));
    }
    // Nothing more than that: a command's reply is the very next line.
    let reply = members[0].command("/who", 1).await;
    assert!(
        reply[0].starts_with("* 100 members in lobby: "),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_is_dropped_and_the_room_keeps_flowing() {
    // About 1 KB lines: 24 MB, or more where the kernel may buffer more for one socket.
    let lines = (2 * (kernel_send_buffer_max() + (1 << 20)) / 1000).max(24_000);
    let server = chat_server(&["--chat-retention", "256K"]);
    let mut slow = Member::join_small(server.addr).await;
    let mut fast = Member::join(server.addr).await;
    let mut writer = Member::join(server.addr).await;
    assert_eq!(fast.line().await, format!("* {} joined", writer.nick));
    let pad = "x".repeat(1000);
    let (wnick, fnick) = (writer.nick.clone(), fast.nick.clone());
    // Far over the retention and what the kernel buffers for the member that is not
    // reading, in steps of 100 lines that the fast member reads before the next is sent (so
    // it can never be the one that falls behind, however slowly this test runs).
    for step in 0..lines / 100 {
        let mut batch = String::new();
        for n in step * 100..(step + 1) * 100 {
            batch += &format!("w{n} {pad}\n");
        }
        writer.writer.write_all(batch.as_bytes()).await.unwrap();
        for n in step * 100..(step + 1) * 100 {
            let line = fast.line().await;
            let want = format!("<{wnick}> w{n} ");
            assert!(
                line.starts_with(&want),
                "line {n}: {:?}",
                &line[..40.min(line.len())]
            );
        }
    }
    // The slow member is still stuck (or already gone); the room still works.
    writer.send("still here").await;
    assert_eq!(fast.line().await, format!("<{wnick}> still here"));

    // Now the slow member reads: an unbroken prefix of the traffic, then the notice, then the
    // end of the connection.
    let mut rest = Vec::new();
    let started = Instant::now();
    while let Some(line) = slow.try_line().await {
        rest.push(line);
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let notice = rest.pop().expect("a notice");
    assert!(
        notice.starts_with("error: you fell too far behind (over 256 KiB of room traffic unread)"),
        "{notice:?}"
    );
    assert_eq!(rest[0], format!("* {fnick} joined"));
    assert_eq!(rest[1], format!("* {wnick} joined"));
    let got = rest.len() - 2;
    assert!(got < lines, "the slow member got everything ({got} lines)");
    for (n, line) in rest[2..].iter().enumerate() {
        assert!(line.starts_with(&format!("<{wnick}> w{n} ")), "line {n}");
    }
    // And the others saw it leave.
    assert_eq!(fast.line().await, format!("* {} left", slow.nick));
    let who = fast.command("/who", 1).await;
    assert!(!who[0].contains(&slow.nick), "{who:?}");
}

/// The most a socket's send buffer may grow to (`net.ipv4.tcp_wmem`), 4 MiB if unknown.
fn kernel_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[tokio::test]
async fn escape_sequences_and_control_characters_are_stripped() {
    let server = chat_server(&[]);
    let mut a = Member::join(server.addr).await;
    let mut b = Member::join(server.addr).await;
    assert_eq!(a.line().await, format!("* {} joined", b.nick));
    let evil = "\x1b[2J\x1b[H\x1b]0;pwned\x07hi \x1b[31mthere\x1b[0m\x07\x7f\u{9b}2J\x00 \u{202e}!\x1bP1$r\x1b\\";
    a.send(evil).await;
    assert_eq!(b.line().await, format!("<{}> hi there !", a.nick));
    a.send("\x1b]2;only a title\x07").await;
    a.send("/nick \x1b[1mbo\tb\x1b[0m").await;
    assert_eq!(a.line().await, "* you are now known as bob");
    assert_eq!(b.line().await, format!("* {} is now known as bob", a.nick));
    // Invalid UTF-8 is shown as replacement characters, not passed on.
    a.writer.write_all(b"caf\xe9\n").await.unwrap();
    assert_eq!(b.line().await, "<bob> caf\u{fffd}");
}

#[tokio::test]
async fn nicks_are_unique_valid_and_case_insensitive() {
    let server = chat_server(&[]);
    let mut a = Member::join(server.addr).await;
    let mut b = Member::join(server.addr).await;
    assert_eq!(a.line().await, format!("* {} joined", b.nick));
    assert_eq!(
        a.command("/nick alice", 1).await,
        ["* you are now known as alice"]
    );
    assert_eq!(
        b.line().await,
        format!("* {} is now known as alice", a.nick)
    );
    let rules = "(1-32 printable characters, no spaces)";
    let cases = [
        (
            "/nick ALICE",
            "error: nick 'ALICE' is already taken".to_owned(),
        ),
        ("/nick", "error: usage: /nick NAME".to_owned()),
        (
            "/nick a b",
            format!("error: invalid nick 'a b': it contains a space {rules}"),
        ),
        (
            &*format!("/nick {}", "x".repeat(33)),
            format!(
                "error: invalid nick '{}': it is over 32 characters {rules}",
                "x".repeat(33)
            ),
        ),
        ("/nick \x1b[31m", "error: usage: /nick NAME".to_owned()),
        (
            "/nick guest999",
            "error: nick 'guest999' is reserved for guests".to_owned(),
        ),
    ];
    for (command, want) in cases {
        assert_eq!(b.command(command, 1).await, [want], "{command:?}");
    }
    // Your own nick in another case is yours to take.
    assert_eq!(
        a.command("/nick Alice", 1).await,
        ["* you are now known as Alice"]
    );
    assert_eq!(b.line().await, "* alice is now known as Alice");
    assert_eq!(
        b.command(&format!("/nick {}", "名".repeat(32)), 1).await,
        [format!("* you are now known as {}", "名".repeat(32))]
    );
    assert_eq!(
        a.line().await,
        format!("* {} is now known as {}", b.nick, "名".repeat(32))
    );
    // Once its holder leaves, the nick is free.
    assert_eq!(a.command("/quit", 1).await, ["bye"]);
    assert_eq!(b.line().await, "* Alice left");
    assert_eq!(
        b.command("/nick alice", 1).await,
        ["* you are now known as alice"]
    );
}

#[tokio::test]
async fn every_command_does_what_help_says() {
    let server = chat_server(&[]);
    let mut a = Member::join(server.addr).await;
    let mut b = Member::join(server.addr).await;
    assert_eq!(a.line().await, format!("* {} joined", b.nick));
    a.command("/nick alice", 1).await;
    assert_eq!(
        b.line().await,
        format!("* {} is now known as alice", a.nick)
    );
    let bn = b.nick.clone();

    let help = a.command("/help", 9).await;
    assert_eq!(help[0], "commands:");
    for command in ["/nick", "/join", "/who", "/msg", "/rooms", "/quit", "/help"] {
        assert!(
            help.iter().any(|l| l.starts_with(command)),
            "{command}: {help:?}"
        );
    }
    let mut who = a.command("/who", 1).await;
    let mut names = [bn.as_str(), "alice"];
    names.sort_by_key(|n| n.to_lowercase());
    assert_eq!(
        who.remove(0),
        format!("* 2 members in lobby: {}", names.join(", "))
    );
    assert_eq!(a.command("/rooms", 1).await, ["* 1 room: lobby (2)"]);

    // Private messages.
    assert_eq!(
        a.command(&format!("/msg {} psst  secret", bn.to_uppercase()), 1)
            .await,
        [format!("[private to {bn}] psst  secret")]
    );
    assert_eq!(b.line().await, "[private] <alice> psst  secret");
    assert_eq!(
        a.command("/msg nobody hi", 1).await,
        ["error: no one is called 'nobody'"]
    );
    assert_eq!(
        a.command("/msg alice", 1).await,
        ["error: usage: /msg NICK TEXT"]
    );

    // `//` sends a line starting with `/`; `bye` and `quit` are just words.
    a.send("//slash").await;
    a.send("bye").await;
    a.send("quit").await;
    assert_eq!(b.line().await, "<alice> /slash");
    assert_eq!(b.line().await, "<alice> bye");
    assert_eq!(b.line().await, "<alice> quit");
    assert_eq!(
        a.command("/bogus x", 1).await,
        ["error: unknown command /bogus (try /help)"]
    );

    // Rooms: made on demand, listed, left, and gone once empty.
    assert_eq!(
        a.command("/join #Dev", 1).await,
        ["* you are alice in Dev (1 member); /help lists the commands"]
    );
    assert_eq!(b.line().await, "* alice left");
    assert_eq!(
        a.command("/join dev", 1).await,
        ["error: you are already in Dev"]
    );
    assert_eq!(
        b.command("/rooms", 1).await,
        ["* 2 rooms: Dev (1), lobby (1)"]
    );
    a.send("only dev hears this").await;
    assert_eq!(
        b.command(&format!("/join {}", "r".repeat(33)), 1).await,
        [format!(
            "error: invalid room name '{}': it is over 32 characters \
             (1-32 printable characters, no spaces)",
            "r".repeat(33)
        )]
    );
    // Back in the lobby: its history comes with the welcome.
    assert_eq!(
        a.command("/join", 4).await,
        [
            "* you are alice in lobby (2 members); /help lists the commands",
            "[history] <alice> /slash",
            "[history] <alice> bye",
            "[history] <alice> quit"
        ]
    );
    assert_eq!(b.line().await, "* alice joined");
    assert_eq!(b.command("/rooms", 1).await, ["* 1 room: lobby (2)"]);

    // Quit: `bye`, the end of the connection, and a notice to the room.
    assert_eq!(a.command("/quit", 1).await, ["bye"]);
    assert!(a.rest().await.is_empty());
    assert_eq!(b.line().await, "* alice left");
}

#[tokio::test]
async fn newcomers_get_the_last_twenty_chat_lines_marked_as_history() {
    let server = chat_server(&[]);
    let mut a = Member::join(server.addr).await;
    for n in 1..=25 {
        a.send(&format!("line {n}")).await;
    }
    // Announcements are not history; commands are answered after the lines before them.
    a.command("/nick alice", 1).await;
    let mut b = Member::join(server.addr).await;
    let mut history = Vec::new();
    for _ in 0..20 {
        history.push(b.line().await);
    }
    let want: Vec<String> = (6..=25)
        .map(|n| format!("[history] <{}> line {n}", a.nick))
        .collect();
    assert_eq!(history, want);
    // Then live traffic, unmarked.
    a.send("live").await;
    assert_eq!(b.line().await, "<alice> live");
    assert_eq!(a.line().await, format!("* {} joined", b.nick));
}

#[tokio::test]
async fn several_lines_in_one_frame_each_get_a_prefix() {
    let server = chat_server(&["--framing", "len32"]);
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let welcome = String::from_utf8(read_len32(&mut a).await).unwrap();
    let a_nick = welcome.split(' ').nth(3).unwrap().to_owned();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    read_len32(&mut b).await;
    read_len32(&mut a).await; // b joined
    a.write_all(&len32(b"one\ntwo\r\n\n\x1b[1mthree\x1b[0m\n"))
        .await
        .unwrap();
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let body = String::from_utf8(read_len32(&mut b).await).unwrap();
        lines.extend(body.split('\n').map(str::to_owned));
    }
    assert_eq!(
        lines,
        [
            format!("<{a_nick}> one"),
            format!("<{a_nick}> two"),
            format!("<{a_nick}> three")
        ]
    );
    // Lines and commands in one frame run in order, the replies in one frame.
    a.write_all(&len32(b"/nick ann\nhello\n/who"))
        .await
        .unwrap();
    let reply = String::from_utf8(read_len32(&mut a).await).unwrap();
    let mut reply = reply.split('\n');
    assert_eq!(reply.next(), Some("* you are now known as ann"));
    assert!(reply.next().unwrap().starts_with("* 2 members in lobby: "));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let body = String::from_utf8(read_len32(&mut b).await).unwrap();
        seen.extend(body.split('\n').map(str::to_owned));
    }
    assert_eq!(
        seen,
        [
            format!("* {a_nick} is now known as ann"),
            "<ann> hello".into()
        ]
    );
    // Too long for a chat message: refused, with the reason.
    a.write_all(&len32(&vec![b'y'; 100_000])).await.unwrap();
    assert_eq!(
        String::from_utf8(read_len32(&mut a).await).unwrap(),
        "error: message too long (100000 bytes, at most 65536); not sent"
    );
}

/// Reads one `len8` frame body.
async fn read_len8(stream: &mut TcpStream) -> String {
    let mut len = [0u8; 1];
    let mut body = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        stream.read_exact(&mut len).await.unwrap();
        body.resize(usize::from(len[0]), 0);
        stream.read_exact(&mut body).await.unwrap();
    })
    .await
    .expect("a frame in time");
    String::from_utf8(body).unwrap()
}

fn len8(body: &str) -> Vec<u8> {
    let mut frame = vec![u8::try_from(body.len()).unwrap()];
    frame.extend_from_slice(body.as_bytes());
    frame
}

#[tokio::test]
async fn messages_fit_a_framing_with_a_small_limit() {
    let server = chat_server(&["--framing", "len8"]);
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let welcome = read_len8(&mut a).await;
    let a_nick = welcome.split(' ').nth(3).unwrap().to_owned();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    read_len8(&mut b).await;
    read_len8(&mut a).await; // b joined
    // A line that, prefixed, no longer fits 255 bytes arrives cut to fit.
    let long = "z".repeat(250);
    a.write_all(&len8(&long)).await.unwrap();
    let got = read_len8(&mut b).await;
    assert_eq!(got.len(), 255);
    assert!(got.starts_with(&format!("<{a_nick}> zzz")), "{got:?}");
    // A reply longer than a frame keeps the lines that fit.
    b.write_all(&len8("/help")).await.unwrap();
    let help = read_len8(&mut b).await;
    assert!(help.starts_with("commands:\n/nick NAME"), "{help:?}");
    assert!(!help.ends_with('\n'));
    // Traffic comes in batches that each fit a frame, nothing lost or reordered.
    for n in 0..40 {
        a.write_all(&len8(&format!("line {n}"))).await.unwrap();
    }
    let mut lines = Vec::new();
    while lines.len() < 40 {
        let frame = read_len8(&mut b).await;
        lines.extend(frame.split('\n').map(str::to_owned));
    }
    let want: Vec<String> = (0..40).map(|n| format!("<{a_nick}> line {n}")).collect();
    assert_eq!(lines, want);
}

#[tokio::test]
async fn raw_framing_splits_a_read_into_prefixed_lines() {
    let server = chat_server(&["--framing", "raw"]);
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = a.read(&mut buf).await.unwrap();
    let welcome = String::from_utf8_lossy(&buf[..n]).into_owned();
    let a_nick = welcome.split(' ').nth(3).unwrap().to_owned();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    let _ = b.read(&mut buf).await.unwrap();
    a.write_all(b"hello\nworld\n").await.unwrap();
    let mut got = String::new();
    let deadline = Instant::now() + PATIENCE;
    while !got.contains("world") {
        assert!(Instant::now() < deadline, "{got:?}");
        let n = tokio::time::timeout(PATIENCE, b.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(
        got.ends_with(&format!("<{a_nick}> hello\n<{a_nick}> world")),
        "{got:?}"
    );
}

#[tokio::test]
async fn zh_texts_are_used_with_lang_zh() {
    let server = chat_server(&["--lang", "zh"]);
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (r, w) = stream.into_split();
    let mut a = Member {
        nick: "a".into(),
        reader: BufReader::new(r),
        writer: w,
    };
    let welcome = a.line().await;
    assert!(welcome.starts_with("* 你是 guest"), "{welcome:?}");
    let b = TcpStream::connect(server.addr).await.unwrap();
    let joined = a.line().await;
    assert!(joined.ends_with(" 进入了聊天室"), "{joined:?}");
    assert_eq!(
        a.command("/msg nobody x", 1).await,
        ["错误: 没有人叫 'nobody'"]
    );
    drop(b);
    assert!(a.line().await.ends_with(" 离开了聊天室"));
}

/// A UDP chat client.
struct Datagrams {
    socket: UdpSocket,
    server: SocketAddr,
}

impl Datagrams {
    async fn new(server: SocketAddr) -> Datagrams {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Datagrams { socket, server }
    }

    async fn send(&self, text: &str) {
        self.socket
            .send_to(text.as_bytes(), self.server)
            .await
            .unwrap();
    }

    async fn recv(&self) -> String {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout(PATIENCE, self.socket.recv_from(&mut buf))
            .await
            .expect("a datagram in time")
            .unwrap();
        assert_eq!(from, self.server);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    async fn command(&self, text: &str) -> String {
        self.send(text).await;
        self.recv().await
    }
}

#[tokio::test]
async fn udp_members_join_chat_and_leave_or_expire() {
    let server = chat_server(&["--udp", "--idle-timeout", "2"]);
    let a = Datagrams::new(server.addr).await;
    let b = Datagrams::new(server.addr).await;
    // Not a member before /join.
    assert_eq!(
        a.command("hello?").await,
        "error: send /join [ROOM] first to chat over UDP"
    );
    let welcome = a.command("/join").await;
    assert!(
        welcome.starts_with("* you are guest") && welcome.contains(" in lobby (1 member)"),
        "{welcome:?}"
    );
    let a_nick = welcome.split(' ').nth(3).unwrap().to_owned();
    let welcome = b.command("/join lobby").await;
    let b_nick = welcome.split(' ').nth(3).unwrap().to_owned();
    assert!(welcome.contains(" in lobby (2 members)"), "{welcome:?}");
    assert_eq!(a.recv().await, format!("* {b_nick} joined"));
    b.send("hi a").await;
    assert_eq!(a.recv().await, format!("<{b_nick}> hi a"));
    // Several lines in one datagram: one datagram back, a prefix on every line; a member
    // that ends its lines with a newline gets newlines.
    a.send("one\ntwo\n").await;
    assert_eq!(b.recv().await, format!("<{a_nick}> one\n<{a_nick}> two"));
    b.send("bye\n").await;
    assert_eq!(a.recv().await, format!("<{b_nick}> bye\n"));
    assert!(
        b.command("/who")
            .await
            .starts_with("* 2 members in lobby: "),
        "/who"
    );
    assert_eq!(
        b.command(&format!("/msg {a_nick} psst")).await,
        format!("[private to {a_nick}] psst")
    );
    // `a` ended its last lines with a newline, so it gets one.
    assert_eq!(a.recv().await, format!("[private] <{b_nick}> psst\n"));
    assert_eq!(a.command("/quit").await, "bye");
    assert_eq!(b.recv().await, format!("* {a_nick} left"));

    // A member that goes silent expires with the peer, and the room hears it leave; empty
    // datagrams keep the other member in.
    let c = Datagrams::new(server.addr).await;
    let welcome = c.command("/join").await;
    let c_nick = welcome.split(' ').nth(3).unwrap().to_owned();
    assert_eq!(b.recv().await, format!("* {c_nick} joined"));
    let deadline = Instant::now() + Duration::from_secs(8);
    let left = loop {
        b.send("").await;
        let mut buf = [0u8; 1024];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), b.socket.recv_from(&mut buf)).await
        {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(Instant::now() < deadline, "no departure seen");
    };
    assert_eq!(left, format!("* {c_nick} left"));
    assert_eq!(
        b.command("/who").await,
        format!("* 1 member in lobby: {b_nick}")
    );
}

/// Reads a child's stdout lines on a thread, so a test can wait for one with a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in StdBufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line from `lines` equal to `want`; returns the lines before it.
fn wait_for(lines: &mpsc::Receiver<String>, want: &str) -> Vec<String> {
    wait_until(lines, |line| line == want)
}

/// Waits for a line from `lines` that `pred` accepts; returns the lines before it.
fn wait_until(lines: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if pred(&line) => return before,
            Ok(line) => before.push(line),
            Err(_) => panic!("never saw the line expected; saw {before:?}"),
        }
    }
}

/// Waits up to `limit` for `child` to exit, killing it otherwise.
fn finish(mut child: Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the client did not exit after the server closed");
}

/// Runs an interactive line client (`nc`, `telnet`) as a member next to one of ours.
async fn real_client_chats(program: &str, args: &[&str]) {
    let server = chat_server(&[]);
    let mut us = Member::join(server.addr).await;
    let mut child = Command::new(program)
        .args(args)
        .args(["127.0.0.1", &server.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_reader(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let joined = us.line().await;
    let their_nick = joined
        .strip_prefix("* ")
        .and_then(|l| l.strip_suffix(" joined"))
        .unwrap_or_else(|| panic!("{joined:?}"))
        .to_owned();
    wait_until(&lines, |l| l.starts_with("* you are guest"));
    stdin
        .write_all(b"/nick peer\nhello from the peer\n")
        .unwrap();
    stdin.flush().unwrap();
    wait_for(&lines, "* you are now known as peer");
    assert_eq!(
        us.line().await,
        format!("* {their_nick} is now known as peer")
    );
    assert_eq!(us.line().await, "<peer> hello from the peer");
    us.send("hi \x1b[5mpeer").await;
    wait_for(&lines, &format!("<{}> hi peer", us.nick));
    stdin.write_all(b"/quit\n").unwrap();
    stdin.flush().unwrap();
    wait_for(&lines, "bye");
    assert_eq!(us.line().await, "* peer left");
    drop(stdin);
    finish(child, PATIENCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nc_is_a_chat_client() {
    let Some(nc) = peer_tool("nc") else { return };
    // -N: shut the connection down when stdin ends.
    real_client_chats(&nc, &["-N"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnet_is_a_chat_client() {
    let Some(telnet) = peer_tool("telnet") else {
        return;
    };
    real_client_chats(&telnet, &[]).await;
}

#[test]
fn bench_chat_checks_every_delivery() {
    let server = chat_server(&[]);
    let out = Command::new(sockit_bin())
        .args(["bench", "127.0.0.1", &server.addr.port().to_string()])
        .args(["--chat", "--conns", "40", "--count", "25", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "chat");
    assert_eq!(report["members"], 40);
    assert_eq!(report["expected"], 40 * 39 * 25);
    assert_eq!(report["deliveries"], 40 * 39 * 25);
    assert_eq!(report["sent"], 40 * 25);
    for zero in ["lost", "out_of_order", "unprefixed", "mismatches", "errors"] {
        assert_eq!(report[zero], 0, "{zero}");
    }
    assert_eq!(report["barrier"], true);
    // The text report says the same.
    let out = Command::new(sockit_bin())
        .args(["bench", "127.0.0.1", &server.addr.port().to_string()])
        .args(["--chat", "--conns", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("chat 5 members x 10 lines (line framing)"),
        "{text}"
    );
    assert!(text.contains("deliveries: 200 of 200 ("), "{text}");
    assert!(text.contains("lost: 0, out of order: 0"), "{text}");
}

#[test]
fn bench_chat_fails_against_a_server_that_is_not_a_chat() {
    let echo = ServeProcess::start(&["--service", "echo"]);
    let out = Command::new(sockit_bin())
        .args(["bench", "127.0.0.1", &echo.addr.port().to_string()])
        .args(["--chat", "--conns", "3", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("never all saw each other join"), "{err}");
    let out = Command::new(sockit_bin())
        .args(["bench", "udp:127.0.0.1:9", "--chat"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
