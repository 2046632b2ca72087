//! `--login` and `sockit user` through the real binary: the users file (atomic rewrites, mode
//! 0600, malformed lines), the exchange over line and raw framing, failure limits per
//! connection and per address, the timing of failures, reload on SIGHUP, and the tutorial's
//! own login client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENCE, ServeProcess, python_with_input, sockit_bin};

/// Runs `sockit user ARGS` with `stdin` piped in.
fn user(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(sockit_bin())
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sockit user");
    // A child refusing its arguments exits without reading: a broken pipe here is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// `sockit user add NAME --file FILE --password-stdin`, which must succeed.
fn add(file: &Path, name: &str, password: &str) {
    let out = user(
        &[
            "add",
            name,
            "--file",
            file.to_str().unwrap(),
            "--password-stdin",
        ],
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn list(file: &Path) -> Vec<String> {
    let out = user(&["list", "--file", file.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A users file in a fresh directory with the given users.
fn users_file(users: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    for (name, password) in users {
        add(&file, name, password);
    }
    (dir, file)
}

/// A line-framed client with a safety timeout on every read.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, PATIENCE).expect("connect"))
    }

    /// Connects from another loopback address (127.0.0.0/8 is all local on Linux), which the
    /// server counts failures against separately.
    fn connect_from(local: [u8; 4], addr: SocketAddr) -> Client {
        let socket = socket2_free_bind(local);
        let stream = socket.connect(addr).expect("connect from another address");
        Client::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line in time");
        assert!(n > 0, "connection closed while a line was expected");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Sends `line` and returns the reply line and how long it took.
    fn ask(&mut self, line: &str) -> (String, Duration) {
        let started = Instant::now();
        self.send(line);
        let reply = self.line();
        (reply, started.elapsed())
    }

    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .expect("server closes in time");
        assert!(
            rest.is_empty(),
            "unexpected {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// One attempt from the `username:` prompt on: the reply to the password, and its time.
    fn attempt(&mut self, name: &str, password: &str) -> (String, Duration) {
        self.expect("username:");
        let (prompt, _) = self.ask(name);
        assert_eq!(prompt, "password:");
        self.ask(password)
    }
}

/// A TCP socket bound to `local`:0, ready to connect (std has no bind-before-connect).
fn socket2_free_bind(local: [u8; 4]) -> BoundSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    BoundSocket(socket)
}

struct BoundSocket(tokio::net::TcpSocket);

impl BoundSocket {
    fn connect(self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(self.0.connect(addr))?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

fn serve_login(file: &Path, extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--service", "echo", "--login", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServeProcess::start(&args)
}

#[test]
fn user_add_list_and_del_edit_a_0600_file() {
    let (_dir, file) = users_file(&[("alice", "a-pass"), ("bob", "b-pass")]);
    assert_eq!(list(&file), ["alice", "bob"]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "users file mode {mode:o}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$argon2id$v=19$"), "{text}");
    assert!(!text.contains("a-pass"), "{text}");

    let f = file.to_str().unwrap();
    let out = user(&["del", "alice", "--file", f], "");
    assert!(out.status.success());
    assert_eq!(list(&file), ["bob"]);

    let out = user(&["del", "alice", "--file", f], "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no user 'alice'"), "{err}");
    assert_eq!(list(&file), ["bob"]);
}

#[test]
fn user_add_refuses_empty_passwords_and_bad_names() {
    let (_dir, file) = users_file(&[]);
    let f = file.to_str().unwrap();
    let out = user(&["add", "alice", "--file", f, "--password-stdin"], "\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));
    assert!(!file.exists(), "nothing written for a refused password");
    for bad in ["a b", "a:b", "", &"x".repeat(33)] {
        let out = user(&["add", bad, "--file", f, "--password-stdin"], "pw\n");
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Usage: sockit user add"), "{err}");
    }
    // Without --password-stdin and without a terminal, it says what to do instead.
    let out = Command::new(sockit_bin())
        .args(["user", "add", "alice", "--file", f])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .without_controlling_terminal()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
}

/// Runs the child in a new session, so that it has no terminal to open even when the tests
/// run in one.
trait NoTerminal {
    fn without_controlling_terminal(&mut self) -> &mut Self;
}

impl NoTerminal for Command {
    fn without_controlling_terminal(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            self.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        }
    }
}

#[test]
fn rewriting_keeps_comments_and_other_users_and_leaves_no_temporary_file() {
    let (dir, file) = users_file(&[("alice", "a"), ("bob", "b"), ("carol", "c")]);
    let before = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = before.lines().collect();
    lines.insert(0, "# managed by sockit user");
    lines.insert(2, "");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let with_comment = std::fs::read_to_string(&file).unwrap();

    add(&file, "bob", "new password");
    add(&file, "dave", "d");
    let after = std::fs::read_to_string(&file).unwrap();
    let old: Vec<&str> = with_comment.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    assert_eq!(new.len(), old.len() + 1, "{after}");
    for (i, (o, n)) in old.iter().zip(&new).enumerate() {
        if o.starts_with("bob:") {
            assert!(
                n.starts_with("bob:$argon2id$") && n != o,
                "bob's hash changed"
            );
        } else {
            assert_eq!(o, n, "line {} kept", i + 1);
        }
    }
    assert!(new.last().unwrap().starts_with("dave:"));
    assert_eq!(list(&file), ["alice", "bob", "carol", "dave"]);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["users"], "only the users file is left");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_malformed_users_file_stops_serve_with_its_file_and_line() {
    let (_dir, file) = users_file(&[("alice", "a")]);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("# fine\nbob:not-a-hash\n");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(sockit_bin())
        .args(["serve", "127.0.0.1", "0", "--service", "echo", "--login"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:3: user 'bob': not a PHC password hash string",
        file.display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    // `user list` and `user add` refuse it the same way, without touching it.
    let out = user(&["list", "--file", file.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":3: "));
    let out = user(
        &[
            "add",
            "carol",
            "--file",
            file.to_str().unwrap(),
            "--password-stdin",
        ],
        "c\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

#[test]
fn login_with_udp_is_a_usage_error() {
    let (_dir, file) = users_file(&[("alice", "a")]);
    let out = Command::new(sockit_bin())
        .args(["serve", "--udp", "127.0.0.1", "0", "--login"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--login needs a connection"), "{err}");
}

#[test]
fn a_correct_password_opens_the_service_as_that_user() {
    let (_dir, file) = users_file(&[("alice", "s3cret"), ("bob", "other")]);
    let server = serve_login(&file, &[]);
    let mut c = Client::connect(server.addr);
    let (reply, _) = c.attempt("alice", "s3cret");
    assert_eq!(reply, "welcome alice");
    assert_eq!(c.ask("hello echo").0, "hello echo");
    assert_eq!(c.ask("password:").0, "password:");
    c.send("bye");
    c.expect("bye");
    c.expect_eof();
    let log = server.stop();
    assert!(log.contains("logged in as alice"), "{log}");
}

#[test]
fn quit_at_the_password_prompt_is_a_password_and_at_the_name_prompt_a_goodbye() {
    let (_dir, file) = users_file(&[("alice", "quit")]);
    let server = serve_login(&file, &[]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.attempt("alice", "quit").0, "welcome alice");
    let mut c = Client::connect(server.addr);
    c.expect("username:");
    c.send("quit");
    c.expect("bye");
    c.expect_eof();
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_notice_and_three_failures_close() {
    let (_dir, file) = users_file(&[("alice", "right")]);
    let server = serve_login(&file, &[]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.attempt("alice", "wrong").0, "login failed");
    assert_eq!(c.attempt("mallory", "right").0, "login failed");
    assert_eq!(c.attempt("", "").0, "login failed");
    c.expect_eof();
    // A failure on one connection does not spoil the next one.
    let mut c = Client::connect(server.addr);
    assert_eq!(c.attempt("alice", "wrong").0, "login failed");
    assert_eq!(c.attempt("alice", "right").0, "welcome alice");
    let log = server.stop();
    assert!(log.contains("login failed (wrong password)"), "{log}");
    assert!(log.contains("login failed (unknown user)"), "{log}");
    assert!(!log.contains("right"), "no password in the log: {log}");
}

#[test]
fn more_than_ten_failures_from_one_address_in_a_minute_are_refused_without_hashing() {
    let (_dir, file) = users_file(&[("alice", "right")]);
    let server = serve_login(&file, &[]);
    let mut failure_times = Vec::new();
    let mut c = Client::connect(server.addr);
    for i in 0..11 {
        if i > 0 && i % 3 == 0 {
            c.expect_eof();
            c = Client::connect(server.addr);
        }
        let (reply, took) = c.attempt("alice", &format!("guess {i}"));
        assert_eq!(reply, "login failed", "attempt {}", i + 1);
        failure_times.push(took);
    }
    // The 12th attempt, even with the right password, is refused on the spot.
    let (reply, locked_took) = c.attempt("alice", "right");
    let secs: u64 = reply
        .strip_prefix("too many attempts, retry in ")
        .and_then(|r| r.strip_suffix(" s"))
        .unwrap_or_else(|| panic!("{reply:?}"))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{reply}");
    c.expect_eof();
    let mut c = Client::connect(server.addr);
    let mut locked_times = vec![locked_took];
    for _ in 0..2 {
        let (reply, took) = c.attempt("mallory", "x");
        assert!(reply.starts_with("too many attempts, retry in "), "{reply}");
        locked_times.push(took);
    }
    // No hashing: the quickest refusal beats the quickest hashed failure (generously: only the
    // minimums are compared, which load on the machine can only raise).
    let fastest_failure = failure_times.iter().min().unwrap();
    let fastest_refusal = locked_times.iter().min().unwrap();
    assert!(
        fastest_refusal < fastest_failure,
        "refused in {fastest_refusal:?}, failed in {fastest_failure:?}"
    );
    // Another address is not locked out.
    let mut other = Client::connect_from([127, 0, 0, 2], server.addr);
    assert_eq!(other.attempt("alice", "right").0, "welcome alice");
    let log = server.stop();
    assert!(
        log.contains("more than 10 failed logins from 127.0.0.1"),
        "{log}"
    );
}

#[test]
fn unknown_user_and_wrong_password_take_about_the_same_time() {
    let (_dir, file) = users_file(&[("alice", "right")]);
    let server = serve_login(&file, &["--quiet"]);
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    // Spread over source addresses so the per-address limit (10 a minute) never applies, and
    // interleaved so that load on the machine hits both kinds alike.
    for round in 0..10u8 {
        let mut c = Client::connect_from([127, 0, 1, round + 1], server.addr);
        for (name, times) in [("nobody", &mut unknown), ("alice", &mut wrong)] {
            let (reply, took) = c.attempt(name, "wrong");
            assert_eq!(reply, "login failed");
            times.push(took);
        }
        c.expect("username:");
        drop(c);
        let mut c = Client::connect_from([127, 0, 2, round + 1], server.addr);
        for (name, times) in [("alice", &mut wrong), ("nobody", &mut unknown)] {
            let (reply, took) = c.attempt(name, "wrong");
            assert_eq!(reply, "login failed");
            times.push(took);
        }
    }
    assert_eq!((unknown.len(), wrong.len()), (20, 20));
    let mean = |t: &[Duration]| t.iter().sum::<Duration>() / t.len() as u32;
    let (u, w) = (mean(&unknown), mean(&wrong));
    let ratio = u.as_secs_f64() / w.as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&ratio),
        "unknown user {u:?} vs wrong password {w:?} (ratio {ratio:.2})"
    );
}

/// Waits until the server's log has a line containing `what`; returns the lines read.
fn wait_for_log(lines: &mut impl Iterator<Item = std::io::Result<String>>, what: &str) {
    for line in lines {
        let line = line.expect("server log");
        if line.contains(what) {
            return;
        }
    }
    panic!("the server log ended without {what:?}");
}

#[test]
fn sighup_reloads_the_users_file_and_a_broken_one_keeps_the_old_users() {
    let (_dir, file) = users_file(&[("alice", "a")]);
    let mut server = serve_login(&file, &[]);
    let mut log = BufReader::new(server.stderr.take().unwrap()).lines();
    wait_for_log(&mut log, "listening on");

    let mut c = Client::connect(server.addr);
    assert_eq!(c.attempt("bob", "b").0, "login failed");
    add(&file, "bob", "b");
    server.signal(libc::SIGHUP);
    wait_for_log(&mut log, "reloaded");
    assert_eq!(c.attempt("bob", "b").0, "welcome bob");

    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}garbage\n")).unwrap();
    server.signal(libc::SIGHUP);
    wait_for_log(&mut log, "keeping the previous users");
    let mut c = Client::connect(server.addr);
    assert_eq!(c.attempt("bob", "b").0, "welcome bob");
}

/// The tutorial's login client (seed 002, "socket client端实例代码"), exactly as printed: it
/// prints what it receives and reads its answers with `input()`.
const TUTORIAL_LOGIN_CLIENT: &str = r#"import socket

receive = socket.socket()
receive.connect(('127.0.0.1', 9999))    #连接IP地址为127.0.0.1,端口为9999的主机

while True:
    print(receive.recv(1024).decode('utf-8'))
    user = input('>>>')
    receive.send(user.encode('utf-8'))
    print(receive.recv(1024).decode('utf-8'))
    psw = input('>>>')
    receive.send(psw.encode('utf-8'))
    ret = receive.recv(1024).decode('utf-8')
    if ret == '登录成功':
        print(ret)
        break
    else:
        print(ret)

receive.close()
"#;

/// The tutorial client with only its port changed.
fn tutorial_client(port: u16) -> String {
    TUTORIAL_LOGIN_CLIENT.replace("('127.0.0.1', 9999)", &format!("('127.0.0.1', {port})"))
}

#[test]
fn the_tutorial_login_client_logs_in_over_raw_framing_after_a_failed_attempt() {
    let (_dir, file) = users_file(&[("zhao", "123")]);
    let server = serve_login(&file, &["--framing", "raw", "--lang", "zh"]);
    let script = tutorial_client(server.addr.port());
    assert!(script.contains(&format!("('127.0.0.1', {})", server.addr.port())));
    // First a wrong password, then the right one.
    let out = python_with_input(&script, "zhao\nwrong\nzhao\n123\n");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "请输入用户名:\n>>>请输入密码:\n>>>用户名或密码输入错误\n\
         请输入用户名:\n>>>请输入密码:\n>>>登录成功\n"
    );
}

#[test]
fn chinese_texts_over_line_framing() {
    let (_dir, file) = users_file(&[("张三", "密码")]);
    let server = serve_login(&file, &["--lang", "zh"]);
    let mut c = Client::connect(server.addr);
    c.expect("请输入用户名:");
    assert_eq!(c.ask("张三").0, "请输入密码:");
    assert_eq!(c.ask("错").0, "用户名或密码输入错误");
    c.expect("请输入用户名:");
    assert_eq!(c.ask("张三").0, "请输入密码:");
    assert_eq!(c.ask("密码").0, "登录成功");
    assert_eq!(c.ask("你好").0, "你好");
}
