//! `connect --proxy` through real proxies (microsocks for SOCKS5, `ncat -l --proxy-type http`
//! for HTTP CONNECT), the `--hex` dump on `connect` and `serve` against `relay --hex`'s, the
//! `connect --write-timeout` on a server that never reads, and `sockit completions` / `man`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{PATIENCE, ServeProcess, peer_tool, sockit_bin};

/// A proxy server running as a child process; killed when dropped.
struct ProxyProcess {
    child: Child,
    port: u16,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now (bound to port 0, then closed).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `program` with `args(port)` on a free port, retrying with another port if the
/// program exits (the port was taken in between) or never starts listening.
fn start_proxy(program: &str, args: impl Fn(u16) -> Vec<String>) -> Option<ProxyProcess> {
    let path = peer_tool(program)?;
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(&path)
            .args(args(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(ProxyProcess { child, port });
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{program} did not start listening on any of 5 ports");
}

/// microsocks on a free port, with a user and password if given.
fn microsocks(auth: Option<(&str, &str)>) -> Option<ProxyProcess> {
    start_proxy("microsocks", |port| {
        let mut args = vec![
            "-i".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ];
        if let Some((user, pass)) = auth {
            args.extend(["-u".into(), user.into(), "-P".into(), pass.into()]);
        }
        args
    })
}

/// ncat as an HTTP CONNECT proxy on a free port.
fn ncat_http_proxy() -> Option<ProxyProcess> {
    start_proxy("ncat", |port| {
        vec![
            "-l".into(),
            "127.0.0.1".into(),
            port.to_string(),
            "--proxy-type".into(),
            "http".into(),
            "-k".into(),
        ]
    })
}

/// Runs `sockit <args>` with `input` on stdin (then closed); kills it after `limit`.
fn sockit(args: &[&str], input: &[u8], limit: Duration) -> Output {
    sockit_holding(args, input, None, limit)
}

/// Drains a child's pipe on a thread. Past 4 MiB only the last 1 MiB is kept (a long
/// `--hex` dump), so memory stays bounded and the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let mut b = sink.lock().unwrap();
            b.extend_from_slice(&chunk[..n]);
            if b.len() > 4 << 20 {
                let cut = b.len() - (1 << 20);
                b.drain(..cut);
            }
        }
    });
    (buf, handle)
}

/// Like [`sockit`], but with `hold_until`, stdin stays open until stdout has that many bytes
/// (as ssh keeps a ProxyCommand's stdin open while it reads the answers).
fn sockit_holding(
    args: &[&str],
    input: &[u8],
    hold_until: Option<usize>,
    limit: Duration,
) -> Output {
    let mut child = Command::new(sockit_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sockit");
    let mut stdin = child.stdin.take().unwrap();
    let (stdout, out_thread) = drain(child.stdout.take().unwrap());
    let (stderr, err_thread) = drain(child.stderr.take().unwrap());
    let input = input.to_vec();
    let seen = stdout.clone();
    // A child that stops reading (it exited) makes these writes fail: that is fine.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
        if let Some(n) = hold_until {
            let deadline = Instant::now() + limit;
            while seen.lock().unwrap().len() < n && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        drop(stdin);
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let _ = err_thread.join();
            panic!(
                "sockit {args:?} still running after {limit:?}; stderr ends: {}",
                String::from_utf8_lossy(&stderr.lock().unwrap()[..])
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    let _ = writer.join();
    let stdout = std::mem::take(&mut *stdout.lock().unwrap());
    let stderr = std::mem::take(&mut *stderr.lock().unwrap());
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit status 1 and one error line on stderr containing every one of `parts`.
fn assert_fails_with(out: &Output, parts: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    for part in parts {
        assert!(lines[0].contains(part), "{part:?} missing from {err}");
    }
}

// ---- SOCKS5 ----

#[test]
fn socks5_without_auth_reaches_the_server_by_name() {
    let Some(proxy) = microsocks(None) else {
        return;
    };
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    // `connect --proxy URL localhost PORT ARGS…`
    let via = |url: &str, args: &[&str]| {
        let mut all = vec!["connect", "--proxy", url, "localhost", &port];
        all.extend_from_slice(args);
        sockit(&all, b"", PATIENCE)
    };
    let out = via(
        &format!("socks5://127.0.0.1:{}", proxy.port),
        &["-m", "hello"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    // socks5h:// is the same thing.
    let url = format!("socks5h://127.0.0.1:{}", proxy.port);
    let out = via(&url, &["-m", "again"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "again\n");
    // connect --exec through the proxy: the program's local address is that of the
    // connection to the proxy. It reads the echo before exiting (microsocks drops what is
    // still coming once the client half-closes).
    let out = via(
        &url,
        &[
            "--sh-exec",
            "echo local $SOCKIT_LOCAL_ADDR ${SOCKIT_LOCAL_PORT:+port}; head -n 1 >&2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("local 127.0.0.1 port\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_proxy_resolves_the_name_unless_proxy_dns_is_local() {
    let Some(proxy) = microsocks(None) else {
        return;
    };
    let url = format!("socks5://127.0.0.1:{}", proxy.port);
    // The name goes to the proxy, whose own lookup fails: the proxy's answer is reported.
    let out = sockit(
        &[
            "connect",
            "--proxy",
            &url,
            "no-such-host.invalid",
            "80",
            "-m",
            "x",
        ],
        b"",
        PATIENCE,
    );
    assert_fails_with(
        &out,
        &[
            "socks5 proxy could not connect to no-such-host.invalid:80",
            "(reply ",
        ],
    );
    // Resolved here: our own resolver's error, and the proxy is never asked.
    let out = sockit(
        &[
            "connect",
            "--proxy",
            &url,
            "--proxy-dns",
            "local",
            "no-such-host.invalid",
            "80",
            "-m",
            "x",
        ],
        b"",
        PATIENCE,
    );
    assert_fails_with(&out, &["cannot resolve no-such-host.invalid"]);
    // And a name that resolves here works in local mode too.
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    let out = sockit(
        &[
            "connect",
            "--proxy",
            &url,
            "--proxy-dns",
            "local",
            "localhost",
            &port,
            "-m",
            "local",
        ],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "local\n");
}

#[test]
fn socks5_username_and_password() {
    let Some(proxy) = microsocks(Some(("alice", "s3cret"))) else {
        return;
    };
    let server = ServeProcess::start(&[]);
    let port = server.addr.port().to_string();
    let good = format!("socks5://alice:s3cret@127.0.0.1:{}", proxy.port);
    let out = sockit(
        &["connect", "--proxy", &good, "127.0.0.1", &port, "-m", "in"],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in\n");

    let bad = format!("socks5://alice:wrong@127.0.0.1:{}", proxy.port);
    let out = sockit(
        &["connect", "--proxy", &bad, "127.0.0.1", &port, "-m", "in"],
        b"",
        PATIENCE,
    );
    assert_fails_with(&out, &["socks5 proxy refused the user name or password"]);
    assert!(
        !text(&out.stderr).contains("wrong"),
        "the password is never shown"
    );

    let none = format!("socks5://127.0.0.1:{}", proxy.port);
    let out = sockit(
        &["connect", "--proxy", &none, "127.0.0.1", &port, "-m", "in"],
        b"",
        PATIENCE,
    );
    assert_fails_with(
        &out,
        &[
            "accepts none of the offered authentication methods",
            "USER:PASS@",
        ],
    );
}

#[test]
fn a_refused_target_through_socks5_exits_1() {
    let Some(proxy) = microsocks(None) else {
        return;
    };
    let url = format!("socks5://127.0.0.1:{}", proxy.port);
    let port = free_port().to_string();
    let out = sockit(
        &["connect", "--proxy", &url, "127.0.0.1", &port, "-m", "x"],
        b"",
        PATIENCE,
    );
    assert_fails_with(
        &out,
        &[
            &format!("socks5 proxy could not connect to 127.0.0.1:{port}"),
            "connection refused (reply 5)",
        ],
    );
}

#[test]
fn a_proxy_that_is_not_listening_or_never_answers_is_a_clear_error() {
    let port = free_port().to_string();
    let url = format!("socks5://127.0.0.1:{port}");
    let out = sockit(
        &["connect", "--proxy", &url, "localhost", "9", "-m", "x"],
        b"",
        PATIENCE,
    );
    assert_fails_with(
        &out,
        &[&format!(
            "cannot connect to the socks5 proxy 127.0.0.1:{port}"
        )],
    );
    // A listener that accepts and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = sockit(
        &[
            "connect",
            "--proxy",
            &url,
            "--timeout",
            "1",
            "localhost",
            "9",
            "-m",
            "x",
        ],
        b"",
        PATIENCE,
    );
    assert_fails_with(&out, &["did not complete the handshake within 1.0 s"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by --timeout"
    );
}

#[test]
fn proxy_command_style_raw_pipe_through_socks5() {
    let Some(proxy) = microsocks(None) else {
        return;
    };
    let server = ServeProcess::start(&["--framing", "raw"]);
    let url = format!("socks5://127.0.0.1:{}", proxy.port);
    let port = server.addr.port().to_string();
    // Every byte value, 256 KiB: what ssh would push through a ProxyCommand.
    let input: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // stdin stays open until everything came back, as with ssh: most proxies (microsocks,
    // ncat) close both directions when the client half-closes.
    let out = sockit_holding(
        &[
            "connect",
            "--proxy",
            &url,
            "--framing",
            "raw",
            "localhost",
            &port,
        ],
        &input,
        Some(input.len()),
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "the bytes came back changed");
}

// ---- HTTP CONNECT ----

#[test]
fn http_connect_through_ncat() {
    let Some(proxy) = ncat_http_proxy() else {
        return;
    };
    let server = ServeProcess::start(&[]);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let port = server.addr.port().to_string();
    // The name is resolved by the proxy.
    let out = sockit(
        &[
            "connect",
            "--proxy",
            &url,
            "localhost",
            &port,
            "-m",
            "via http",
        ],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via http\n");
    // The raw pipe over the proxied stream.
    let out = sockit_holding(
        &["connect", "--proxy", &url, "localhost", &port],
        b"one\ntwo\n",
        Some(8),
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\ntwo\n");
    // A target nobody listens on: the proxy's status line is the error.
    let closed = free_port().to_string();
    let out = sockit(
        &["connect", "--proxy", &url, "localhost", &closed, "-m", "x"],
        b"",
        PATIENCE,
    );
    assert_fails_with(
        &out,
        &[&format!(
            "http proxy could not connect to localhost:{closed}: "
        )],
    );
}

// ---- --hex ----

/// Collects a child's stderr lines on a thread.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The dump lines of a log (chunk headers and hex rows), chunk headers without their time.
fn dump_lines(log: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in log {
        let mut words = line.splitn(2, ' ');
        let (first, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let is_time = first.len() == 15
            && first.as_bytes()[2] == b':'
            && first.as_bytes()[5] == b':'
            && first.as_bytes()[8] == b'.';
        if is_time && (rest.starts_with("> conn ") || rest.starts_with("< conn ")) {
            out.push(rest.to_owned());
        } else if line.len() > 12
            && line.starts_with("  ")
            && line[2..10].bytes().all(|b| b.is_ascii_hexdigit())
        {
            out.push(line.clone());
        }
    }
    out
}

/// Waits until `log` holds at least `n` dump lines; returns them.
fn wait_dump(log: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = dump_lines(&log.lock().unwrap());
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hex_on_connect_and_serve_matches_relay_hex() {
    // serve --hex ← relay --hex ← connect --hex: the same bytes seen three times.
    let mut serve = Command::new(sockit_bin());
    serve
        .args(["serve", "127.0.0.1", "0", "--service", "echo", "--hex"])
        .stdin(Stdio::null());
    let mut server = ServeProcess::spawn(serve);
    let serve_log = {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = server.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        lines
    };
    let mut relay = Command::new(sockit_bin())
        .args(["relay", "127.0.0.1:0", &server.addr.to_string(), "--hex"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let relay_log = collect_stderr(&mut relay);
    let mut banner = String::new();
    BufReader::new(relay.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let relay_addr = banner
        .split(|c: char| c.is_whitespace() || c == '"' || c == '/')
        .find_map(|w| w.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));

    let long = "x".repeat(20);
    let out = sockit(
        &[
            "connect",
            "--hex",
            &relay_addr.to_string(),
            "-m",
            "hello",
            "-m",
            &long,
        ],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let connect_log: Vec<String> = text(&out.stderr).lines().map(str::to_owned).collect();
    let connect_dump = dump_lines(&connect_log);
    let expected = vec![
        "> conn 1 up 6 bytes at offset 0".to_owned(),
        "  00000000  68 65 6c 6c 6f 0a                                 |hello.|".to_owned(),
        "< conn 1 down 6 bytes at offset 0".to_owned(),
        "  00000000  68 65 6c 6c 6f 0a                                 |hello.|".to_owned(),
        "> conn 1 up 21 bytes at offset 6".to_owned(),
        "  00000006  78 78 78 78 78 78 78 78  78 78 78 78 78 78 78 78  |xxxxxxxxxxxxxxxx|"
            .to_owned(),
        "  00000016  78 78 78 78 0a                                    |xxxx.|".to_owned(),
        "< conn 1 down 21 bytes at offset 6".to_owned(),
        "  00000006  78 78 78 78 78 78 78 78  78 78 78 78 78 78 78 78  |xxxxxxxxxxxxxxxx|"
            .to_owned(),
        "  00000016  78 78 78 78 0a                                    |xxxx.|".to_owned(),
    ];
    assert_eq!(
        connect_dump,
        expected,
        "connect --hex:\n{}",
        connect_log.join("\n")
    );
    let relay_dump = wait_dump(&relay_log, expected.len());
    assert_eq!(relay_dump, expected, "relay --hex");
    let serve_dump = wait_dump(&serve_log, expected.len());
    assert_eq!(serve_dump, expected, "serve --hex");

    // A second connection is conn 2 on the server (its connection number).
    let out = sockit(
        &["connect", &server.addr.to_string(), "-m", "two"],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let serve_dump = wait_dump(&serve_log, expected.len() + 4);
    assert_eq!(
        &serve_dump[expected.len()..],
        &[
            "> conn 2 up 4 bytes at offset 0".to_owned(),
            "  00000000  74 77 6f 0a                                       |two.|".to_owned(),
            "< conn 2 down 4 bytes at offset 0".to_owned(),
            "  00000000  74 77 6f 0a                                       |two.|".to_owned(),
        ]
    );
    let _ = relay.kill();
    let _ = relay.wait();
}

#[test]
fn hex_on_connect_through_a_proxy_shows_only_the_target_bytes() {
    let Some(proxy) = microsocks(None) else {
        return;
    };
    let server = ServeProcess::start(&[]);
    let url = format!("socks5://127.0.0.1:{}", proxy.port);
    let port = server.addr.port().to_string();
    let out = sockit(
        &[
            "connect",
            "--hex",
            "--proxy",
            &url,
            "localhost",
            &port,
            "-m",
            "hi",
        ],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log: Vec<String> = text(&out.stderr).lines().map(str::to_owned).collect();
    let dump = dump_lines(&log);
    assert_eq!(
        dump,
        [
            "> conn 1 up 3 bytes at offset 0",
            "  00000000  68 69 0a                                          |hi.|",
            "< conn 1 down 3 bytes at offset 0",
            "  00000000  68 69 0a                                          |hi.|",
        ],
        "{}",
        log.join("\n")
    );
}

#[test]
fn tls_through_a_proxy_with_hex_dumps_plaintext_on_both_ends() {
    let Some(proxy) = microsocks(None) else {
        return;
    };
    let mut serve = Command::new(sockit_bin());
    serve.args([
        "serve",
        "127.0.0.1",
        "0",
        "--service",
        "echo",
        "--tls",
        "--tls-ephemeral",
        "--hex",
    ]);
    let mut server = ServeProcess::spawn(serve);
    let serve_log = {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = server.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        lines
    };
    let url = format!("socks5://127.0.0.1:{}", proxy.port);
    let port = server.addr.port().to_string();
    let out = sockit(
        &[
            "connect",
            "--tls",
            "--tls-insecure",
            "--hex",
            "--proxy",
            &url,
            "localhost",
            &port,
            "-m",
            "secret",
        ],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "secret\n");
    let expected = [
        "> conn 1 up 7 bytes at offset 0",
        "  00000000  73 65 63 72 65 74 0a                              |secret.|",
        "< conn 1 down 7 bytes at offset 0",
        "  00000000  73 65 63 72 65 74 0a                              |secret.|",
    ];
    let log: Vec<String> = text(&out.stderr).lines().map(str::to_owned).collect();
    assert_eq!(dump_lines(&log), expected, "connect: {}", log.join("\n"));
    assert_eq!(wait_dump(&serve_log, 4), expected, "serve");
}

// ---- --write-timeout ----

/// A server that accepts connections and never reads from them.
fn deaf_server() -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut held = Vec::new();
        // Three connections at most (one per case), kept open until the test process ends.
        for conn in listener.incoming().take(3) {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
        thread::sleep(Duration::from_secs(120));
        drop(held);
    });
    (addr, handle)
}

#[test]
fn connect_fails_when_the_server_never_reads() {
    let (addr, _server) = deaf_server();
    let addr = addr.to_string();
    // Far more than the socket buffers hold, in lines (for the framed case).
    let input =
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(1 << 20);
    let cases: Vec<Vec<&str>> = vec![
        // The raw byte pipe (plain TCP, blocking threads).
        vec!["connect", "--write-timeout", "1", &addr],
        // Framed and streamed.
        vec![
            "connect",
            "--write-timeout",
            "1",
            "--framing",
            "len32",
            &addr,
        ],
        // The byte pipe over a layered stream (async copies).
        vec!["connect", "--write-timeout", "1", "--hex", &addr],
    ];
    for args in cases {
        let started = Instant::now();
        let out = sockit(&args, &input, Duration::from_secs(60));
        let err = text(&out.stderr);
        let last = err.lines().last().unwrap_or("");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {last}");
        assert_eq!(
            last,
            "sockit: error: server stopped reading: nothing could be written for 1 s (--write-timeout)",
            "{args:?}"
        );
        // Generous: the kernel counts any progress (even a window probe) as progress.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

// ---- completions and man ----

#[test]
fn bash_completions_parse_and_every_shell_has_a_script() {
    let out = sockit(&["completions", "bash"], b"", PATIENCE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.contains("sockit"), "{script}");
    assert!(
        script.contains("--proxy"),
        "subcommand options are completed"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockit.bash");
    std::fs::write(&path, &out.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", text(&check.stderr));
    for shell in ["zsh", "fish", "powershell"] {
        let out = sockit(&["completions", shell], b"", PATIENCE);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("sockit"), "{shell}");
    }
    let out = sockit(&["completions", "tcsh"], b"", PATIENCE);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_prints_a_page_and_writes_one_per_subcommand() {
    let out = sockit(&["man"], b"", PATIENCE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.starts_with(".TH"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains("sockit"));
    let dir = tempfile::tempdir().unwrap();
    let out = sockit(
        &["man", "--out", dir.path().to_str().unwrap()],
        b"",
        PATIENCE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in [
        "sockit.1",
        "sockit-serve.1",
        "sockit-connect.1",
        "sockit-man.1",
    ] {
        let mut page = String::new();
        std::fs::File::open(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .read_to_string(&mut page)
            .unwrap();
        assert!(page.starts_with(".TH"), "{name}");
    }
    let connect = std::fs::read_to_string(dir.path().join("sockit-connect.1")).unwrap();
    assert!(
        connect.contains("proxy"),
        "connect's page documents --proxy"
    );
}

// ---- argument checks ----

#[test]
fn bad_proxy_arguments_are_usage_errors() {
    for (args, want) in [
        (
            vec!["connect", "--proxy", "socks4://h:1", "localhost", "9"],
            "socks4",
        ),
        (
            vec!["connect", "--proxy", "http://h", "localhost", "9"],
            "needs a port",
        ),
        (
            vec![
                "connect",
                "--proxy",
                "socks5://h:1",
                "--udp",
                "localhost",
                "9",
            ],
            "--proxy works over TCP only",
        ),
        (
            vec!["connect", "--proxy-dns", "local", "localhost", "9"],
            "--proxy",
        ),
        (vec!["connect", "--hex", "--udp", "localhost", "9"], "--hex"),
        (
            vec![
                "connect",
                "--proxy",
                "socks5://h:1",
                "unix:/tmp/sockit.sock",
            ],
            "unix",
        ),
        (vec!["serve", "--hex", "--udp", "127.0.0.1", "0"], "--hex"),
    ] {
        let out = sockit(&args, b"", PATIENCE);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
