//! Tests of `sockit connect` as an `nc` replacement: the byte pipe leaves data untouched,
//! messages get exit codes that say whether every one was answered, UDP resends do not
//! shift replies onto the wrong message, and `-v` logs connection events.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin_cmd;
use common::*;

fn sockit() -> assert_cmd::Command {
    let mut cmd = cargo_bin_cmd!("sockit");
    cmd.timeout(PATIENCE);
    cmd
}

/// Deterministic bytes of every value, with blank lines and runs of NULs mixed in.
fn binary_data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 64 {
            0 => data.extend_from_slice(b"\n\n\n"),
            1 => data.extend_from_slice(&[0; 16]),
            2 => data.extend_from_slice(b"\r\n\r\n"),
            _ => data.extend_from_slice(&x.to_le_bytes()),
        }
    }
    data.truncate(len);
    data
}

/// Runs `sockit connect <args>` with `input` in a file on stdin and stdout into a file;
/// returns the exit status, what was printed, and stderr.
fn connect_with_files(args: &[&str], input: &[u8]) -> (std::process::ExitStatus, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&inp, input).unwrap();
    let out = Command::new(sockit_bin())
        .arg("connect")
        .args(args)
        .stdin(File::open(&inp).unwrap())
        .stdout(File::create(&outp).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let printed = std::fs::read(&outp).unwrap();
    (
        out.status,
        printed,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Starts `sockit serve` with `framing` (and `extra` arguments), pipes `input` through
/// `sockit connect` with the same framing, asserts it succeeded, and returns what it printed.
fn piped_through(framing: &str, extra: &[&str], input: &[u8]) -> Vec<u8> {
    let mut serve_args = vec!["--framing", framing, "-q"];
    serve_args.extend_from_slice(extra);
    let server = ServeProcess::start(&serve_args);
    let addr = server.addr.to_string();
    let out = sockit()
        .args(["connect", "--framing", framing, &addr])
        .write_stdin(input.to_vec())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn fifty_megabytes_of_binary_data_come_back_byte_identical() {
    let server = ServeProcess::start(&["--framing", "raw", "-q"]);
    let port = server.addr.port().to_string();
    let data = binary_data(50 << 20);
    let (status, printed, err) =
        connect_with_files(&["--framing", "raw", "127.0.0.1", &port], &data);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(printed.len(), data.len());
    assert!(printed == data, "the echo differs from the input");
}

#[test]
fn binary_data_through_pipes_comes_back_byte_identical() {
    // Pipes on both ends: the splice path.
    let data = binary_data(5 << 20);
    let printed = piped_through("raw", &[], &data);
    assert!(printed == data, "the echo differs from the input");
}

#[test]
fn a_hundred_thousand_lines_come_back_identical_with_line_framing() {
    let lines: String = (0..100_000).map(|i| format!("line number {i}\n")).collect();
    let printed = piped_through("line", &[], lines.as_bytes());
    assert!(
        printed == lines.as_bytes(),
        "the echo differs from the input"
    );
}

#[test]
fn a_ten_thousand_byte_line_is_neither_split_nor_altered() {
    let mut line = vec![b'x'; 10_000];
    line.push(b'\n');
    assert_eq!(piped_through("raw", &[], &line), line);
}

#[test]
fn blank_lines_and_missing_final_newline_pass_through_raw_framing() {
    let input = b"one\n\n\r\n\0two";
    assert_eq!(piped_through("raw", &[], input), input);
}

#[test]
fn ack_counts_four_bytes_for_abc_newline_in_raw_framing() {
    let printed = piped_through("raw", &["--service", "ack"], b"abc\n");
    assert_receipt(&String::from_utf8(printed).unwrap(), 4);
}

#[test]
fn piped_lines_with_len32_framing_become_one_frame_each_and_stream_back() {
    let lines: String = (0..100_000).map(|i| format!("frame {i}\n")).collect();
    let printed = piped_through("len32", &[], lines.as_bytes());
    assert!(printed == lines.as_bytes(), "replies differ from the lines");
}

#[test]
fn megabyte_lines_with_len32_framing_come_back_whole() {
    let mut lines = Vec::new();
    for fill in [b'a', b'b', b'c', b'd', b'e', b'f'] {
        lines.extend(std::iter::repeat_n(fill, 3 * 1024 * 1024));
        lines.push(b'\n');
    }
    let printed = piped_through("len32", &[], &lines);
    assert!(printed == lines, "replies differ from the lines");
}

#[test]
fn a_piped_line_too_long_for_len8_fails_naming_the_line() {
    let server = ServeProcess::start(&["--framing", "len8", "-q"]);
    let port = server.addr.port().to_string();
    let input = format!("short\n{}\n", "y".repeat(300));
    let out = sockit()
        .args(["connect", "--framing", "len8", "127.0.0.1", &port])
        .write_stdin(input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("input line 2 is too long for len8"), "{err}");
}

/// A TCP server on a thread: runs `serve` on the first connection.
fn tcp_peer(serve: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream);
        }
    });
    port
}

/// Reads one `\n`-terminated line from a blocking stream.
fn read_line_blocking(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return Some(line),
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
}

#[test]
fn no_reply_within_the_timeout_exits_1() {
    let port = tcp_peer(|mut s| {
        let _ = read_line_blocking(&mut s);
        std::thread::sleep(Duration::from_secs(3));
    });
    let out = sockit()
        .args([
            "connect",
            "127.0.0.1",
            &port,
            "-m",
            "hello",
            "--timeout",
            "0.3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no reply from 127.0.0.1:"), "{err}");
}

#[test]
fn a_server_closing_before_every_reply_exits_1_naming_the_message() {
    let port = tcp_peer(|mut s| {
        if let Some(line) = read_line_blocking(&mut s) {
            let _ = s.write_all(&[line.as_slice(), b"\n"].concat());
        }
        // Wait for the second message, then close without answering it.
        let _ = read_line_blocking(&mut s);
    });
    let out = sockit()
        .args(["connect", "127.0.0.1", &port])
        .args(["-m", "one", "-m", "two", "-m", "three"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, b"one\n");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("server closed the connection before replying to message 2 of 3"),
        "{err}"
    );
}

#[test]
fn a_server_closing_right_after_a_reply_fails_the_next_message() {
    let port = tcp_peer(|mut s| {
        if let Some(line) = read_line_blocking(&mut s) {
            let _ = s.write_all(&[line.as_slice(), b"\n"].concat());
        }
    });
    let out = sockit()
        .args(["connect", "127.0.0.1", &port, "-m", "one", "-m", "two"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("before replying to message 2 of 2"), "{err}");
}

#[test]
fn an_error_notice_followed_by_a_close_exits_1_with_the_notice() {
    let server = ServeProcess::start(&["--framing", "len32", "--max-frame", "1K", "-q"]);
    let port = server.addr.port().to_string();
    let big = "z".repeat(2000);
    let out = sockit()
        .args(["connect", "--framing", "len32", "127.0.0.1", &port])
        .args(["-m", "fine", "-m", &big])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("server closed the connection after: error: frame of 2000 bytes"),
        "{err}"
    );
}

#[test]
fn an_echoed_error_line_is_a_reply_not_a_failure() {
    let server = ServeProcess::start(&["-q"]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args([
            "connect",
            "127.0.0.1",
            &port,
            "-m",
            "error: x",
            "-m",
            "after",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"error: x\nafter\n");
}

#[test]
fn messages_too_large_for_the_framing_are_usage_errors_before_connecting() {
    // Nothing listens on the port: a connection attempt would fail with exit 1 instead.
    let port = unused_port().to_string();
    let cases: [(&[&str], String, &str); 4] = [
        (
            &["--framing", "len8"],
            "a".repeat(300),
            "len8 framing holds at most 255",
        ),
        (&["--udp"], "u".repeat(65_508), "at most 65507 bytes"),
        (&[], "two\nlines".into(), "contains a newline"),
        (&["--framing", "raw"], String::new(), "is empty"),
    ];
    for (flags, msg, why) in cases {
        let out = sockit()
            .arg("connect")
            .args(flags)
            .args(["127.0.0.1", &port, "-m", "ok", "-m", &msg])
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains("message 2") && err.contains(why),
            "{flags:?}: {err}"
        );
        assert!(err.contains("Usage: sockit connect"), "{err}");
    }
}

#[test]
fn retries_without_udp_is_a_usage_error() {
    let out = sockit()
        .args(["connect", "127.0.0.1", "9", "-m", "x", "--retries", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--retries applies to UDP only"), "{err}");
}

#[test]
fn quit_after_leaves_a_server_that_never_closes() {
    let port = tcp_peer(|mut s| {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let _ = s.write_all(&all);
        // Never close: only --quit-after ends the client.
        std::thread::sleep(PATIENCE * 2);
    });
    let out = sockit()
        .args(["connect", "127.0.0.1", &port, "--quit-after", "0.3"])
        .write_stdin("hello\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello\n");
}

#[test]
fn a_reset_while_reading_exits_1_saying_so() {
    let port = tcp_peer(|mut s| {
        let _ = s.write_all(b"partial\n");
        let _ = read_line_blocking(&mut s);
        // SO_LINGER 0: close with a reset.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket we own with a correctly sized linger struct.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
    });
    let mut child = Command::new(sockit_bin())
        .args(["connect", "127.0.0.1", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stdin stays open: the reset, not the end of input, ends the run.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, b"partial\n");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("connection reset by server"), "{err}");
}

#[test]
fn a_closed_stdout_ends_the_byte_pipe_with_status_zero() {
    let server = ServeProcess::start(&["--framing", "raw", "-q"]);
    let port = server.addr.port().to_string();
    for framing in ["raw", "len32"] {
        let mut child = Command::new(sockit_bin())
            .args(["connect", "--framing", framing, "127.0.0.1", &port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Like `| head -1`: read one line, then close.
        let mut stdout = child.stdout.take().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..200_000 {
                if writeln!(stdin, "line {i}").is_err() {
                    break;
                }
            }
        });
        let mut first = [0u8; 5];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{framing}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!err.contains("panicked"), "{framing}: {err}");
    }
}

#[test]
fn a_closed_stdout_in_message_mode_is_not_an_error() {
    let server = ServeProcess::start(&["-q"]);
    let port = server.addr.port().to_string();
    let out = Command::new(sockit_bin())
        .args(["connect", "127.0.0.1", &port, "-m", "one", "-m", "two"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut child = Command::new(sockit_bin())
        .args(["connect", "127.0.0.1", &port, "-m", "one", "-m", "two"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// A UDP server that answers every datagram after a delay, each on its own timer, so a
/// resend gets its own late reply.
const SLOW_UDP_SERVER: &str = r#"
import socket, threading
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, peer = sock.recvfrom(65536)
    threading.Timer(0.6, sock.sendto, (b"reply to " + data, peer)).start()
"#;

#[test]
fn late_udp_replies_to_resends_are_reported_as_duplicates_not_as_the_next_reply() {
    let mut server = Command::new("python3")
        .arg("-c")
        .arg(SLOW_UDP_SERVER)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let out = sockit()
        .args(["connect", "--udp", "127.0.0.1", port.trim()])
        .args(["--timeout", "0.4", "--retries", "2"])
        .args(["-m", "first", "-m", "second", "-m", "third"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "reply to first\nreply to second\nreply to third\n"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    for n in 1..=3 {
        assert!(
            err.contains(&format!(
                "sockit: duplicate reply to message {n} (from a resend): reply to "
            )),
            "{err}"
        );
    }
}

#[test]
fn udp_replies_without_resends_print_once_each() {
    let server = ServeProcess::start(&["--udp", "-q"]);
    let port = server.addr.port().to_string();
    let out = sockit()
        .args(["connect", "--udp", "127.0.0.1", &port, "-m", "a", "-m", "b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"a\nb\n");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn verbose_logs_connection_events_and_default_logs_nothing() {
    let server = ServeProcess::start(&["-q"]);
    let port = server.addr.port().to_string();
    let quiet = sockit()
        .args(["connect", "127.0.0.1", &port])
        .write_stdin("hi\n")
        .output()
        .unwrap();
    assert!(quiet.status.success(), "{quiet:?}");
    assert!(quiet.stderr.is_empty(), "{quiet:?}");
    let verbose = sockit()
        .args(["connect", "-v", "127.0.0.1", &port])
        .write_stdin("hi\n")
        .output()
        .unwrap();
    assert!(verbose.status.success(), "{verbose:?}");
    assert_eq!(verbose.stdout, b"hi\n");
    let log = String::from_utf8(verbose.stderr).unwrap();
    assert!(log.contains("connected to 127.0.0.1:"), "{log}");
    assert!(log.contains("half-closed"), "{log}");
    assert!(log.contains("server closed the connection"), "{log}");
}

#[test]
fn udp_silence_still_fails_after_retries_with_the_total_wait() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let out = sockit()
        .args(["connect", "--udp", "127.0.0.1", &port, "-m", "x"])
        .args(["--timeout", "0.1", "--retries", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("within 0.2s"), "{err}");
}

/// A one-client TCP server on a thread: sends `greeting` after `delay`, then answers the
/// lines it reads with `replies` in order (each one write; `None` = stay silent).
fn greeting_server(
    greeting: &'static [u8],
    delay: Duration,
    replies: Vec<Option<&'static [u8]>>,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::thread::sleep(delay);
        s.write_all(greeting).unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        for reply in replies {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(reply) = reply {
                let _ = s.write_all(reply);
            }
        }
        // Hold the connection open until the client leaves.
        let _ = reader.read_to_end(&mut Vec::new());
    });
    (port, handle)
}

#[test]
fn a_greeting_is_printed_and_not_taken_for_the_first_reply() {
    // The server greets a moment after the connection is up, then never answers: the greeting
    // must not count as the reply to the first message.
    let (port, server) = greeting_server(b"welcome\n", Duration::from_millis(20), vec![None]);
    let out = sockit()
        .args(["connect", "--timeout", "1", "-m", "hello", "127.0.0.1"])
        .arg(port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "welcome\n");
    assert!(stderr.contains("no reply"), "{stderr}");
    server.join().unwrap();

    // And with an answer, both are printed and the command succeeds.
    let (port, server) = greeting_server(
        b"welcome\n",
        Duration::from_millis(20),
        vec![Some(b"hi there\n")],
    );
    let out = sockit()
        .args(["connect", "-m", "hello", "127.0.0.1"])
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "welcome\nhi there\n");
    server.join().unwrap();
}

#[test]
fn the_lines_of_one_multi_line_reply_count_as_one_reply() {
    // A three-line answer written at once is one reply: its last two lines must not be taken
    // for the reply to the second message, which never comes.
    let (port, server) =
        greeting_server(b"", Duration::ZERO, vec![Some(b"one\ntwo\nthree\n"), None]);
    let out = sockit()
        .args([
            "connect",
            "--timeout",
            "1",
            "-m",
            "help",
            "-m",
            "time",
            "127.0.0.1",
        ])
        .arg(port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nthree\n");
    assert!(stderr.contains("no reply"), "{stderr}");
    server.join().unwrap();
}
