//! Chat across servers (`serve --cluster`) through the real binary: a `nats-server` with
//! JetStream per test (on a free port, in a temporary directory) and two or three sockit chat
//! servers on it. Cross-server lines, presence, `/who`, `/rooms`, `/msg`, history, nick
//! uniqueness, a server killed mid-chat, NATS stopped and restarted mid-chat, and 100 members
//! over three servers with `sockit bench --chat`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chat::Member;
use common::{PATIENCE, ServeProcess, peer_tool, sockit_bin};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How replies to `/nick` and `/msg` start.
const REPLY: &[&str] = &["* you are now", "error", "[private to"];

/// A `nats-server -js` of this test's own.
struct Nats {
    bin: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    /// Starts one on a free port, or `None` (the test skips) if nats-server is not installed.
    fn start() -> Option<Nats> {
        let bin = peer_tool("nats-server")?;
        // A free port, found by binding and letting go of it; another process may take it in
        // between, so a server that does not come up is tried again on another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut nats = Nats {
                bin: bin.clone(),
                port,
                dir: tempfile::tempdir().unwrap(),
                child: None,
            };
            if nats.run() {
                return Some(nats);
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Starts the server on its port and store; whether it accepts connections.
    fn run(&mut self) -> bool {
        let child = Command::new(&self.bin)
            .arg("-js")
            .arg("-sd")
            .arg(self.store())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child {
                if child.try_wait().unwrap().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if StdTcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        assert!(
            self.run(),
            "nats-server did not come back on port {}",
            self.port
        );
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The most the kernel lets a socket's send buffer grow to.
fn kernel_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// A chat server of the cluster on `nats`, called `node`.
fn node(nats: &Nats, node: &str) -> ServeProcess {
    let url = nats.url();
    ServeProcess::start(&["--service", "chat", "--cluster", &url, "--node", node])
}

impl Member {
    /// Reads lines until one equal to `wanted`; returns the lines before it.
    async fn until(&mut self, wanted: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line_within(PATIENCE).await.unwrap_or_else(|| {
                panic!(
                    "{}: no {wanted:?} within {PATIENCE:?}; read {before:?}",
                    self.nick
                )
            });
            if line == wanted {
                return before;
            }
            before.push(line);
        }
    }

    /// Reads lines until one starting with `prefix`, and returns it.
    async fn until_prefix(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line().await;
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Sends a command and returns its reply's `lines` lines, the first starting with one of
    /// `first`, skipping the room traffic that arrives before it.
    async fn command(&mut self, text: &str, first: &[&str], lines: usize) -> Vec<String> {
        self.send(text).await;
        loop {
            let line = self.line().await;
            if first.iter().any(|f| line.starts_with(f)) {
                let mut reply = vec![line];
                for _ in 1..lines {
                    reply.push(self.line().await);
                }
                return reply;
            }
        }
    }

    /// Sends a line and waits until `other` has it, so that what follows comes after it.
    async fn said(&mut self, text: &str, other: &mut Member) {
        self.send(text).await;
        other.until(&format!("<{}> {text}", self.nick)).await;
    }
}

/// Waits until `member` on one server is seen joining by `other` on another: presence has
/// crossed the bus.
async fn meet(member: &Member, other: &mut Member) {
    other.until(&format!("* {} joined", member.nick)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_presence_and_lists_cross_servers_once() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let mut amy = Member::join(a.addr).await;
    ann.until(&format!("* {} joined", amy.nick)).await;
    let mut bob = Member::join(b.addr).await;
    meet(&bob, &mut ann).await;
    meet(&bob, &mut amy).await;
    // Lines both ways, each reaching a member once.
    bob.said("hello from b", &mut ann).await;
    amy.until(&format!("<{}> hello from b", bob.nick)).await;
    ann.said("hello from a", &mut bob).await;
    amy.until(&format!("<{}> hello from a", ann.nick)).await;
    bob.said("marker", &mut amy).await;
    ann.until(&format!("<{}> marker", bob.nick)).await;
    // Nothing was delivered twice: the next thing ann and amy read is bob's next line.
    bob.send("after").await;
    assert_eq!(ann.line().await, format!("<{}> after", bob.nick));
    assert_eq!(amy.line().await, format!("<{}> after", bob.nick));
    // /who and /rooms list the members of every server.
    let who = bob.command("/who", &["* 3 members in lobby:"], 1).await;
    let mut nicks = [ann.nick.clone(), amy.nick.clone(), bob.nick.clone()];
    nicks.sort();
    assert_eq!(
        who[0],
        format!("* 3 members in lobby: {}", nicks.join(", "))
    );
    let rooms = ann.command("/join den", &["* you are"], 1).await;
    assert!(rooms[0].starts_with(&format!("* you are {} in den (1 member)", ann.nick)));
    bob.until(&format!("* {} left", ann.nick)).await;
    let rooms = bob.command("/rooms", &["* 2 rooms:"], 1).await;
    assert_eq!(rooms[0], "* 2 rooms: lobby (2), den (1)");
    // A departure crosses too.
    amy.send("/quit").await;
    bob.until(&format!("* {} left", amy.nick)).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nicks_are_unique_across_servers_and_freed_on_leave() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let mut bob = Member::join(b.addr).await;
    meet(&bob, &mut ann).await;
    assert_eq!(
        ann.command("/nick zed", &["* you are"], 1).await,
        ["* you are now known as zed"]
    );
    bob.until(&format!("* {} is now known as zed", ann.nick))
        .await;
    assert_eq!(
        bob.command("/nick ZED", &["error"], 1).await,
        ["error: nick 'ZED' is already taken"]
    );
    // A newcomer whose default nick is taken on the other server gets another one.
    let guest = Member::join(b.addr).await;
    assert_ne!(guest.nick.to_lowercase(), "zed");
    ann.send("/quit").await;
    bob.until("* zed left").await;
    // The claim is released: the nick is free on the other server (the release is
    // asynchronous, so allow it a moment).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = bob.command("/nick zed", REPLY, 1).await;
        if reply[0] == "* you are now known as zed" {
            break;
        }
        assert_eq!(reply[0], "error: nick 'zed' is already taken");
        assert!(Instant::now() < deadline, "zed was never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a, b, guest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_cross_servers() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let mut bob = Member::join(b.addr).await;
    ann.send("/join den").await;
    ann.until(&format!(
        "* you are {} in den (1 member); /help lists the commands",
        ann.nick
    ))
    .await;
    // Known across the cluster (in another room, on another server).
    let deadline = Instant::now() + PATIENCE;
    let to = ann.nick.clone();
    loop {
        let reply = bob
            .command(&format!("/msg {to} psst, over here"), REPLY, 1)
            .await;
        if reply[0] == format!("[private to {to}] psst, over here") {
            break;
        }
        assert_eq!(reply[0], format!("error: no one is called '{to}'"));
        assert!(Instant::now() < deadline, "{to} never became known on b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ann.line().await,
        format!("[private] <{}> psst, over here", bob.nick)
    );
    assert_eq!(
        ann.command("/msg nobody hi", &["error"], 1).await,
        ["error: no one is called 'nobody'"]
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_on_another_server_gets_the_history() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let mut watcher = Member::join(a.addr).await;
    ann.until(&format!("* {} joined", watcher.nick)).await;
    // b has no member in the lobby while these are said: it keeps them from the bus.
    for n in 0..25 {
        ann.send(&format!("line {n}")).await;
    }
    watcher.until(&format!("<{}> line 24", ann.nick)).await;
    // The lines crossed the bus before the newcomer arrives: a member of b sees them.
    let mut probe = Member::join(b.addr).await;
    let history: Vec<String> = {
        let mut lines = Vec::new();
        while lines.len() < 20 {
            lines.push(probe.line().await);
        }
        lines
    };
    let expected: Vec<String> = (5..25)
        .map(|n| format!("[history] <{}> line {n}", ann.nick))
        .collect();
    if history != expected {
        // The lines may still have been on their way when the probe joined: a second
        // newcomer, later, must have all of them.
        drop(probe);
        tokio::time::sleep(Duration::from_millis(500)).await;
        probe = Member::join(b.addr).await;
        let mut lines = Vec::new();
        while lines.len() < 20 {
            lines.push(probe.line().await);
        }
        assert_eq!(lines, expected);
    }
    drop((a, b, probe));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_later_asks_for_the_history() {
    let Some(nats) = Nats::start() else { return };
    let a = node(&nats, "a");
    let mut ann = Member::join(a.addr).await;
    ann.send("/join den").await;
    ann.until_prefix("* you are ").await;
    for n in 0..25 {
        ann.send(&format!("line {n}")).await;
    }
    // Said before the second server existed: it can only learn them by asking.
    let marker = Member::join(a.addr).await;
    drop(marker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = node(&nats, "b");
    let mut probe = Member::join(b.addr).await;
    // The lobby is new to b and has no history anywhere.
    assert!(
        probe
            .line_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        // ann's presence reaches b with the snapshots exchanged when b connected.
        let reply = probe.command("/join den", &["* you are", "error"], 1).await;
        assert!(reply[0].starts_with("* you are "), "{reply:?}");
        let mut history = Vec::new();
        while let Some(line) = probe.line_within(Duration::from_millis(300)).await {
            if line.starts_with("[history] ") {
                history.push(line);
            }
        }
        if !history.is_empty() {
            let expected: Vec<String> = (5..25)
                .map(|n| format!("[history] <{}> line {n}", ann.nick))
                .collect();
            assert_eq!(history, expected);
            break;
        }
        assert!(Instant::now() < deadline, "b never learnt den's history");
        probe.send("/join lobby").await;
        probe.until_prefix("* you are ").await;
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_s_members_are_gone_within_five_seconds() {
    let Some(nats) = Nats::start() else { return };
    let a = node(&nats, "a");
    let mut b = node(&nats, "b");
    let mut ann = Member::join(a.addr).await;
    let mut bob = Member::join(b.addr).await;
    meet(&bob, &mut ann).await;
    bob.send("/nick bobby").await;
    ann.until(&format!("* {} is now known as bobby", bob.nick))
        .await;
    bob.nick = "bobby".into();
    ann.said("still here?", &mut bob).await;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    ann.until("* bobby left").await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "bobby shown as left after {took:?}"
    );
    // Its nick is free again.
    assert_eq!(
        ann.command("/nick bobby", REPLY, 1).await,
        ["* you are now known as bobby"]
    );
    let who = ann.command("/who", &["* 1 member in lobby:"], 1).await;
    assert_eq!(who, ["* 1 member in lobby: bobby"]);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_says_its_members_left_before_the_lease_ends() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let bob = Member::join(b.addr).await;
    meet(&bob, &mut ann).await;
    let stopping = Instant::now();
    let log = b.stop();
    ann.until(&format!("* {} left", bob.nick)).await;
    // Sooner than the 3 s the heartbeats would take: the departure was published on the way out.
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "left after {took:?}: {log}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_mid_chat() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let mut amy = Member::join(a.addr).await;
    ann.until(&format!("* {} joined", amy.nick)).await;
    let mut bob = Member::join(b.addr).await;
    meet(&bob, &mut ann).await;
    meet(&bob, &mut amy).await;
    ann.said("before", &mut bob).await;
    amy.until(&format!("<{}> before", ann.nick)).await;

    nats.kill();
    for m in [&mut ann, &mut amy, &mut bob] {
        m.until("* cluster link lost (chat on this server goes on)")
            .await;
    }
    // Local rooms keep working.
    ann.said("during", &mut amy).await;
    // Both servers give out the same nick while they cannot check: provisional.
    for m in [&mut amy, &mut bob] {
        assert_eq!(
            m.command("/nick twin", REPLY, 1).await,
            ["* you are now known as twin"]
        );
        m.nick = "twin".into();
    }

    nats.restart();
    for m in [&mut ann, &mut amy, &mut bob] {
        m.until("* cluster link restored").await;
    }
    // The collision is resolved (once the leases of servers not heard from have run out):
    // exactly one of the two is renamed, and told so.
    let notice = "* your nick twin was taken on another server while the cluster link was \
                  down: you are now known as twin-2";
    let deadline = Instant::now() + PATIENCE;
    let mut renamed = None;
    'wait: while Instant::now() < deadline {
        for (i, m) in [&mut amy, &mut bob].into_iter().enumerate() {
            while let Some(line) = m.line_within(Duration::from_millis(100)).await {
                if line == notice {
                    renamed = Some(i);
                    break 'wait;
                }
            }
        }
    }
    let (twin2, other) = match renamed.expect("one of the twins renamed") {
        0 => (&mut amy, &mut bob),
        _ => (&mut bob, &mut amy),
    };
    twin2.nick = "twin-2".into();
    while let Some(line) = other.line_within(Duration::from_secs(1)).await {
        assert_ne!(line, notice, "both twins renamed");
    }
    // The cluster works again: lines cross both ways (the other server may reconnect a
    // moment later, so the first lines are retried).
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    'crossed: loop {
        n += 1;
        let text = format!("after {n}");
        ann.send(&text).await;
        let wanted = format!("<{}> {text}", ann.nick);
        while let Some(line) = bob.line_within(Duration::from_millis(500)).await {
            if line == wanted {
                break 'crossed;
            }
        }
        assert!(Instant::now() < deadline, "lines never crossed again");
    }
    bob.said("back", &mut ann).await;
    amy.until(&format!("<{}> back", bob.nick)).await;
    drop((a, b));
}

#[test]
fn a_hundred_members_over_three_servers_get_every_line_in_order() {
    let Some(nats) = Nats::start() else { return };
    let servers = [node(&nats, "a"), node(&nats, "b"), node(&nats, "c")];
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let out = Command::new(sockit_bin())
        .args([
            "bench", "--chat", "--json", "--conns", "100", "--count", "20",
        ])
        .args(&addrs)
        .output()
        .expect("run sockit bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["members"], 100);
    assert_eq!(report["expected"], 100 * 99 * 20);
    assert_eq!(report["deliveries"], 100 * 99 * 20);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["addr"], addrs.join(","));
}

#[test]
fn cluster_flags_are_checked_and_the_banner_names_the_node() {
    let out = Command::new(sockit_bin())
        .args([
            "serve",
            "--service",
            "echo",
            "--cluster",
            "nats://127.0.0.1:4222",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster applies to the chat"));
    let out = Command::new(sockit_bin())
        .args([
            "serve",
            "--service",
            "chat",
            "--cluster",
            "nats://h:1",
            "--node",
            "a.b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a node name"));
    let Some(nats) = Nats::start() else { return };
    let url = nats.url();
    // The hub's chat joins the cluster too.
    let mut hub = Command::new(sockit_bin())
        .args([
            "serve",
            "127.0.0.1",
            "0",
            "--service",
            "hub",
            "--cluster",
            &url,
        ])
        .args(["--node", "hub-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner: Vec<String> = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(hub.stdout.take().unwrap()).lines();
        (0..3).map(|_| lines.next().unwrap().unwrap()).collect()
    };
    assert_eq!(
        banner[2],
        format!("cluster: node hub-1 on {url}: connected")
    );
    let hub_addr: SocketAddr = banner[0]
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("address in the banner");
    let chat = node(&nats, "c");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cat = Member::join(chat.addr).await;
        let stream = TcpStream::connect(hub_addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut visitor = Member {
            nick: "visitor".into(),
            reader: BufReader::new(r),
            writer: w,
        };
        visitor.send("chat").await;
        let welcome = visitor.until_prefix("* you are ").await;
        let nick = welcome["* you are ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .to_owned();
        cat.until(&format!("* {nick} joined")).await;
        visitor.send("hi from the hub").await;
        cat.until(&format!("<{nick}> hi from the hub")).await;
    });
    let _ = hub.kill();
    let _ = hub.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bus_messages_are_dropped_and_logged() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let mut ann = Member::join(a.addr).await;
    let mut bob = Member::join(b.addr).await;
    meet(&bob, &mut ann).await;
    // A stranger on the bus: an oversized message, then garbage, then a well-formed line
    // whose text carries a terminal escape sequence.
    let script = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
def pub(subject, payload):
    s.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
room = "sockit.chat.room." + b"lobby".hex()
pub(room, b"{" + b" " * 300000 + b"}")
pub(room, b"not json at all")
pub(room, b'{"t":"lines","node":"x","inst":1,"room":"lobby","lines":[]}')
pub(room, b'{"t":"lines","node":"evil","inst":1,"room":"lobby","lines":["<mallory> \\u001b[2Jhi"]}')
s.sendall(b"PING\r\n")
s.settimeout(5)
while b"PONG" not in s.recv(4096):
    pass
"#;
    let port = nats.url().rsplit(':').next().unwrap().to_owned();
    common::python(script, &[&port]);
    // The escape sequence is gone; nothing else of the stranger's arrived.
    for m in [&mut ann, &mut bob] {
        let before = m.until("<mallory> hi").await;
        assert!(before.iter().all(|l| l.ends_with(" joined")), "{before:?}");
    }
    // Both servers go on.
    ann.said("still fine", &mut bob).await;
    let log = a.stop();
    assert!(
        log.contains("cluster: dropped 1 bus message(s); the last on sockit.chat.room."),
        "{log}"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_falls_behind_bus_traffic_alone() {
    let Some(nats) = Nats::start() else { return };
    let a = node(&nats, "a");
    let url = nats.url();
    let b = ServeProcess::start(&[
        "--service",
        "chat",
        "--cluster",
        &url,
        "--node",
        "b",
        "--chat-retention",
        "256K",
    ]);
    let mut ann = Member::join(a.addr).await;
    let mut reader = Member::join(b.addr).await;
    meet(&reader, &mut ann).await;
    // A member with a small receive buffer that stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(b.addr).await.unwrap();
    let (r, w) = stream.into_split();
    let mut idle = Member {
        nick: "idle".into(),
        reader: BufReader::new(r),
        writer: w,
    };
    let welcome = idle.line().await;
    idle.nick = welcome["* you are ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    ann.until(&format!("* {} joined", idle.nick)).await;
    reader.until(&format!("* {} joined", idle.nick)).await;
    // Far over the 256 KiB retention and what the kernel may buffer for the idle member, in
    // steps of 100 lines of about 1 KB that the reader reads before the next is sent.
    let lines = (2 * (kernel_send_buffer_max() + (1 << 20)) / 1000).max(24_000);
    let filler = "x".repeat(1000);
    for step in 0..lines / 100 {
        let mut batch = String::new();
        for n in step * 100..(step + 1) * 100 {
            batch += &format!("{n} {filler}\n");
        }
        ann.writer.write_all(batch.as_bytes()).await.unwrap();
        // A member that keeps reading gets everything, in order.
        for n in step * 100..(step + 1) * 100 {
            let line = reader.line().await;
            let want = format!("<{}> {n} ", ann.nick);
            assert!(
                line.starts_with(&want),
                "line {n}: {:?}",
                &line[..40.min(line.len())]
            );
        }
    }
    // The idle member is cut off when it reads again, having missed what was not kept.
    let mut got = 0;
    let last = loop {
        match idle.line_within(PATIENCE).await {
            Some(line) if line.starts_with('<') => got += 1,
            Some(line) if line.starts_with("* ") => {}
            Some(line) => break line,
            None => panic!("connection ended without a notice after {got} lines"),
        }
    };
    assert_eq!(
        last,
        "error: you fell too far behind (over 256 KiB of room traffic unread); disconnecting"
    );
    assert!(got < lines, "got all {got} lines");
    assert!(
        idle.line_within(PATIENCE).await.is_none(),
        "then disconnected"
    );
    drop((a, b));
}
