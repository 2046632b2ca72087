//! TLS through the real binary and real peers: `openssl s_client` against `sockit serve --tls`,
//! `sockit connect --tls` against `openssl s_server`, `ncat --ssl` both ways, pins (certificate
//! and public key, right and wrong), expired and wrong-name certificates, mTLS, a plaintext
//! client against a TLS server, the kept certificate across restarts, the relay terminating
//! and originating TLS, and `bench --tls --reconnect`. Everything listens on 127.0.0.1 port 0
//! (ncat, which cannot report a port 0, gets a port that was just free); generated
//! certificates go to a temporary XDG_DATA_HOME.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{PATIENCE, peer_tool, sockit_bin, unused_port};

/// A `sockit serve … --tls` (or relay) child whose whole banner was read.
struct TlsServe {
    child: Child,
    addr: SocketAddr,
    /// Every banner line.
    banner: Vec<String>,
    /// The stderr log, collected by a thread.
    log: mpsc::Receiver<String>,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl TlsServe {
    /// Runs `sockit ARGS` with XDG_DATA_HOME=`data`, reading stdout up to the `connect with:`
    /// line (a serve or relay banner with TLS ends there).
    fn start(data: &Path, args: &[&str]) -> TlsServe {
        TlsServe::spawn(data, args, read_banner)
    }

    /// Runs `sockit ARGS` with XDG_DATA_HOME=`data`; `banner` reads what stdout says first,
    /// whose first line holds the address.
    fn spawn(
        data: &Path,
        args: &[&str],
        banner: impl FnOnce(&mut BufReader<std::process::ChildStdout>) -> Vec<String>,
    ) -> TlsServe {
        let mut child = Command::new(sockit_bin())
            .args(args)
            .env("XDG_DATA_HOME", data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockit");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let banner = banner(&mut stdout);
        let addr = banner[0]
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in {banner:?}"));
        let mut stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&mut stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = tx.send(std::mem::take(&mut line));
            }
        });
        TlsServe {
            child,
            addr,
            banner,
            log,
            _stdout: stdout,
        }
    }

    /// `sockit serve 127.0.0.1 0 --service echo --tls ARGS`.
    fn echo(data: &Path, args: &[&str]) -> TlsServe {
        let mut all = vec!["serve", "127.0.0.1", "0", "--service", "echo", "--tls"];
        all.extend_from_slice(args);
        TlsServe::start(data, &all)
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// The `sha256:` pin of the public key, from the banner's connect line.
    fn spki_pin(&self) -> String {
        let line = self.banner.last().unwrap();
        line.split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no pin in {line}"))
            .to_owned()
    }

    /// The certificate's fingerprint as the banner prints it (colon hex).
    fn cert_fingerprint(&self) -> String {
        let line = self
            .banner
            .iter()
            .find(|l| l.starts_with("tls: certificate sha256 "))
            .expect("certificate line");
        line.trim_start_matches("tls: certificate sha256 ")
            .to_owned()
    }

    /// Waits until a log line contains `needle`; returns it.
    fn log_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?}; saw {seen:?}");
    }
}

/// A TLS serve or relay banner, up to and including its `connect with:` line.
fn read_banner(stdout: &mut impl BufRead) -> Vec<String> {
    let mut banner = Vec::new();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "banner ended early: {banner:?}");
        let done = line.starts_with("connect with:");
        banner.push(line.trim_end().to_owned());
        if done {
            return banner;
        }
    }
}

impl Drop for TlsServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sockit ARGS` (with stdin closed) to the end, within [`PATIENCE`].
fn sockit(args: &[&str]) -> Output {
    let mut cmd = Command::new(sockit_bin());
    cmd.args(args).stdin(Stdio::null());
    output_within(cmd)
}

fn output_within(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill() with the pid of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {PATIENCE:?}");
        }
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a peer program with `input` on its stdin (kept open), until its stdout contains
/// `expect`; then kills it. Returns its stdout so far.
fn peer_until(mut cmd: Command, input: &str, expect: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(expect) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok(chunk) => got.extend(chunk),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let _ = child.wait();
    drop(stdin);
    let out = String::from_utf8_lossy(&got).into_owned();
    assert!(
        out.contains(expect),
        "{cmd:?} never printed {expect:?}; stdout {out:?}, stderr {err}"
    );
    out
}

/// A certificate and key written as PEM files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

fn write_pem(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Pem {
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pem.cert, cert.pem()).unwrap();
    std::fs::write(&pem.key, key.serialize_pem()).unwrap();
    pem
}

/// A self-signed certificate for `names`, valid `from`..`until` (years).
fn self_signed(dir: &Path, name: &str, names: &[&str], from: i32, until: i32) -> Pem {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    write_pem(dir, name, &cert, &key)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn openssl_s_client_talks_to_serve_tls() {
    let Some(_) = peer_tool("openssl") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &[]);
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &server.addr.to_string(),
        "-servername",
        "localhost",
        "-quiet",
    ]);
    peer_until(cmd, "hello over tls\n", "hello over tls\n");
}

#[test]
fn connect_tls_talks_to_openssl_s_server_and_checks_its_certificate() {
    let Some(_) = peer_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(
        dir.path(),
        "server",
        &["localhost", "127.0.0.1"],
        2020,
        2099,
    );
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", "0", "-rev", "-cert"])
        .arg(&pem.cert)
        .arg("-key")
        .arg(&pem.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "s_server ended");
        if let Some(rest) = line.trim().strip_prefix("ACCEPT ") {
            break rest.rsplit(':').next().unwrap().to_owned();
        }
    };
    // Verified against the certificate as CA, by the name typed: s_server -rev reverses lines.
    let reply = sockit(&[
        "connect",
        "localhost",
        &port,
        "--tls",
        "--tls-ca",
        s(&pem.cert),
        "-m",
        "stressed",
    ]);
    let (stdout, stderr) = text(&reply);
    assert!(reply.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "desserts", "{stderr}");
    // Not trusted without the CA (and the fingerprint seen is shown).
    let refused = sockit(&["connect", "localhost", &port, "--tls", "-m", "x"]);
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success());
    assert!(stderr.contains("not signed by a trusted CA"), "{stderr}");
    assert!(stderr.contains("sha256:"), "{stderr}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn ncat_ssl_client_talks_to_serve_tls() {
    let Some(_) = peer_tool("ncat") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &[]);
    let mut cmd = Command::new("ncat");
    cmd.args(["--ssl", "127.0.0.1", &server.port()]);
    peer_until(cmd, "from ncat\n", "from ncat\n");
}

#[test]
fn connect_tls_talks_to_ncat_ssl_server() {
    let Some(_) = peer_tool("ncat") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(dir.path(), "ncat", &["localhost"], 2020, 2099);
    let port = unused_port().to_string();
    let mut server = Command::new("ncat")
        .args(["--ssl", "-l", "-k", "127.0.0.1", &port, "--sh-exec", "cat"])
        .arg("--ssl-cert")
        .arg(&pem.cert)
        .arg("--ssl-key")
        .arg(&pem.key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ncat");
    let deadline = Instant::now() + PATIENCE;
    let ok = loop {
        let out = sockit(&[
            "connect",
            "localhost",
            &port,
            "--tls",
            "--tls-ca",
            s(&pem.cert),
            "-m",
            "to ncat",
        ]);
        if out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "{:?}", text(&out));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(text(&ok).0.trim(), "to ncat");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn pins_of_the_certificate_and_of_its_key_pass_and_a_wrong_pin_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &["--tls-ephemeral"]);
    let port = server.port();
    // The banner's own connect line pins the public key.
    let spki = server.spki_pin();
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &port,
        "--tls",
        "--tls-pin",
        &spki,
        "-m",
        "a",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "a");
    // The certificate's fingerprint as printed (colon hex, upper case) works as a pin too.
    let cert_pin = format!("sha256:{}", server.cert_fingerprint());
    let out = sockit(&[
        "connect",
        &format!("tls:localhost:{port}"),
        "--tls-pin",
        &cert_pin,
        "-m",
        "b",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    // A wrong pin: refused, and the fingerprints seen are shown.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &port,
        "--tls",
        "--tls-pin",
        &wrong,
        "-m",
        "c",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("pin mismatch"), "{stderr}");
    assert!(stderr.contains(&spki), "{stderr}");
    // A malformed pin is a usage error.
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &port,
        "--tls",
        "--tls-pin",
        "md5:00",
    ]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}

#[test]
fn expired_and_wrong_name_certificates_are_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let expired = self_signed(dir.path(), "expired", &["localhost"], 2019, 2020);
    let other = self_signed(dir.path(), "other", &["example.org"], 2020, 2099);
    for (pem, why) in [
        (&expired, "expired"),
        (&other, "not valid for the name \"localhost\""),
    ] {
        let server = TlsServe::echo(
            dir.path(),
            &["--tls-cert", s(&pem.cert), "--tls-key", s(&pem.key)],
        );
        let port = server.port();
        let out = sockit(&[
            "connect",
            "localhost",
            &port,
            "--tls",
            "--tls-ca",
            s(&pem.cert),
            "-m",
            "x",
        ]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{why}: accepted");
        assert!(stderr.contains(why), "{why}: {stderr}");
        let out = sockit(&[
            "connect",
            "localhost",
            &port,
            "--tls",
            "--tls-insecure",
            "-m",
            "y",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout.trim(), "y");
        assert!(stderr.contains("NOT checked"), "{stderr}");
    }
    // --tls-sni names what the certificate says: then the wrong-name certificate passes.
    let server = TlsServe::echo(
        dir.path(),
        &["--tls-cert", s(&other.cert), "--tls-key", s(&other.key)],
    );
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &server.port(),
        "--tls",
        "--tls-ca",
        s(&other.cert),
        "--tls-sni",
        "example.org",
        "-m",
        "z",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn mtls_accepts_a_client_certificate_and_refuses_a_client_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = write_pem(dir.path(), "ca", &ca_cert, &ca_key);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let client_params = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let client = write_pem(dir.path(), "client", &client_cert, &client_key);

    let server = TlsServe::echo(dir.path(), &["--tls-client-ca", s(&ca.cert)]);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("client certificates required")),
        "{:?}",
        server.banner
    );
    let port = server.port();
    let pin = server.spki_pin();
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &port,
        "--tls",
        "--tls-pin",
        &pin,
        "--tls-cert",
        s(&client.cert),
        "--tls-key",
        s(&client.key),
        "-m",
        "with cert",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "with cert");
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &port,
        "--tls",
        "--tls-pin",
        &pin,
        "-m",
        "without",
    ]);
    assert!(!out.status.success(), "{:?}", text(&out));
    assert!(!text(&out).0.contains("without"));
    server.log_line("sent no certificate");
}

#[test]
fn a_plaintext_client_is_logged_and_closed_and_the_server_serves_on() {
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &["--tls-ephemeral"]);
    let mut plain = std::net::TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("GET"),
        "plaintext was echoed: {rest:?}"
    );
    let line = server.log_line("does not speak TLS");
    assert!(line.contains("disconnect"), "{line}");
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &server.port(),
        "--tls",
        "--tls-pin",
        &server.spki_pin(),
        "-m",
        "still here",
    ]);
    assert_eq!(text(&out).0.trim(), "still here", "{:?}", text(&out));
}

#[test]
fn the_generated_certificate_is_kept_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let first = TlsServe::echo(data.path(), &[]);
    assert!(
        first.banner[1].contains("new certificate"),
        "{:?}",
        first.banner
    );
    let pin = first.spki_pin();
    let fingerprint = first.cert_fingerprint();
    drop(first);
    let key = data.path().join("sockit/tls/default.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    let second = TlsServe::echo(data.path(), &[]);
    assert!(
        second.banner[1].contains("kept from before"),
        "{:?}",
        second.banner
    );
    assert_eq!(second.spki_pin(), pin);
    assert_eq!(second.cert_fingerprint(), fingerprint);
    // The first server's pin still works against the second.
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &second.port(),
        "--tls",
        "--tls-pin",
        &pin,
        "-m",
        "same",
    ]);
    assert_eq!(text(&out).0.trim(), "same", "{:?}", text(&out));
    // A throwaway certificate differs and is not kept.
    let third = TlsServe::echo(data.path(), &["--tls-ephemeral"]);
    assert_ne!(third.spki_pin(), pin);
    let kept: Vec<_> = std::fs::read_dir(data.path().join("sockit/tls"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}

#[test]
fn every_framing_works_over_tls_and_connect_v_shows_the_session() {
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &["--tls-ephemeral", "--framing", "len32"]);
    let pin = server.spki_pin();
    assert!(
        server.banner.last().unwrap().contains("--framing len32"),
        "{:?}",
        server.banner
    );
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &server.port(),
        "--framing",
        "len32",
        "--tls",
        "--tls-pin",
        &pin,
        "-v",
        "-m",
        "framed",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout.trim(), "framed", "{stderr}");
    assert!(stderr.contains("tls: TLSv1.3, TLS13_"), "{stderr}");
    assert!(stderr.contains("ALPN none"), "{stderr}");
    assert!(
        stderr.contains("tls: certificate 0: CN=localhost"),
        "{stderr}"
    );
    assert!(stderr.contains("verified by pin"), "{stderr}");
}

#[test]
fn alpn_is_negotiated_and_a_mismatch_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &["--tls-ephemeral", "--tls-alpn", "sockit/1"]);
    let pin = server.spki_pin();
    let port = server.port();
    let base = ["connect", "127.0.0.1", &port, "--tls", "--tls-pin", &pin];
    let out = sockit(&[&base[..], &["--tls-alpn", "sockit/1", "-v", "-m", "p"]].concat());
    assert!(text(&out).1.contains("ALPN sockit/1"), "{:?}", text(&out));
    let out = sockit(&[&base[..], &["--tls-alpn", "h2", "-m", "q"]].concat());
    assert!(!out.status.success(), "{:?}", text(&out));
}

#[test]
fn relay_terminates_tls_in_front_of_tcp_and_originates_it_towards_tls() {
    let data = tempfile::tempdir().unwrap();
    // A plain echo server, then a relay terminating TLS in front of it (tls → tcp).
    let plain = common::ServeProcess::start(&[]);
    let front = TlsServe::start(
        data.path(),
        &[
            "relay",
            "tls:127.0.0.1:0",
            &plain.addr.to_string(),
            "--tls-ephemeral",
            "--hex",
        ],
    );
    let front_pin = front.spki_pin();
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &front.port(),
        "--tls",
        "--tls-pin",
        &front_pin,
        "-m",
        "through the front",
    ]);
    assert_eq!(text(&out).0.trim(), "through the front", "{:?}", text(&out));
    // The relay sees (and --hex shows) the plaintext.
    front.log_line("through ");
    front.log_line("conn 1 tls");
    // A relay originating TLS (tcp → tls) towards the first relay: plain nc in, TLS between.
    let mut back = Command::new(sockit_bin())
        .args([
            "relay",
            "127.0.0.1:0",
            &format!("tls:localhost:{}", front.port()),
            "--tls-pin",
            &front_pin,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(back.stdout.as_mut().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let addr: SocketAddr = banner
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{banner}"));
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    client.write_all(b"plain in, tls between\n").unwrap();
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    assert_eq!(line, "plain in, tls between\n");
    // A wrong pin towards the target: the client's connection closes, the relay says why.
    let _ = back.kill();
    let _ = back.wait();
    let mut wrong = TlsServe::start_relay_plain(
        data.path(),
        &[
            "relay",
            "127.0.0.1:0",
            &format!("tls:localhost:{}", front.port()),
            "--tls-pin",
            &format!("sha256:{}", "00".repeat(32)),
        ],
    );
    let mut client = std::net::TcpStream::connect(wrong.addr).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = client.write_all(b"x\n");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    wrong.log_line("pin mismatch");
    let _ = wrong.child.kill();
    plain.stop();
}

impl TlsServe {
    /// A relay whose banner is one line (no TLS on its listening side).
    fn start_relay_plain(data: &Path, args: &[&str]) -> TlsServe {
        // A relay without a tls: LISTEN prints one line, with no `connect with:` after it.
        TlsServe::spawn(data, args, |stdout| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            vec![line]
        })
    }
}

#[test]
fn bench_tls_reconnect_makes_a_handshake_per_message() {
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(data.path(), &["--tls-ephemeral"]);
    let out = sockit(&[
        "bench",
        "127.0.0.1",
        &server.port(),
        "--tls",
        "--tls-pin",
        &server.spki_pin(),
        "--reconnect",
        "--conns",
        "4",
        "--count",
        "5",
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["messages"], 20, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["reconnect"], true, "{report}");
    drop(server);
    // Without TLS settings, --tls-pin alone is an error that says what is missing.
    let out = sockit(&[
        "bench",
        "127.0.0.1",
        "9",
        "--tls-pin",
        &format!("sha256:{}", "0".repeat(64)),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("need --tls"), "{:?}", text(&out));
}

#[test]
fn tls_flags_that_fit_no_tls_side_are_errors() {
    let pin = format!("sha256:{}", "0".repeat(64));
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "relay",
                "tls:127.0.0.1:0",
                "tls:127.0.0.1:1",
                "--tls-pin",
                &pin,
            ],
            "say which side",
        ),
        (
            &["relay", "127.0.0.1:0", "127.0.0.1:1", "--tls-pin", &pin],
            "tls: TARGET",
        ),
        (
            &["relay", "tls:127.0.0.1:0", "127.0.0.1:1", "--tls-pin", &pin],
            "TARGET is not tls:",
        ),
        (
            &["connect", "127.0.0.1", "9", "--tls-insecure", "-m", "x"],
            "need --tls",
        ),
    ];
    for (args, why) in cases {
        let out = sockit(args);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // TLS over UDP is refused.
    let out = sockit(&["connect", "127.0.0.1", "9", "--udp", "--tls", "-m", "x"]);
    assert!(
        text(&out).1.contains("TLS runs over TCP"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_closed_after_the_timeout() {
    let data = tempfile::tempdir().unwrap();
    let server = TlsServe::echo(
        data.path(),
        &["--tls-ephemeral", "--tls-handshake-timeout", "300ms"],
    );
    let mut silent = std::net::TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(started.elapsed() < PATIENCE, "not closed");
    assert!(rest.is_empty(), "{rest:?}");
    let line = server.log_line("disconnect");
    assert!(
        line.contains("timed out") || line.contains("not finished"),
        "{line}"
    );
    // And the server goes on.
    let out = sockit(&[
        "connect",
        "127.0.0.1",
        &server.port(),
        "--tls",
        "--tls-pin",
        &server.spki_pin(),
        "-m",
        "after",
    ]);
    assert_eq!(text(&out).0.trim(), "after", "{:?}", text(&out));
}

#[test]
fn tls_runs_over_a_unix_socket_with_the_banners_pin() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("tls.sock");
    let place = format!("unix:{}", path.display());
    let mut child = Command::new(sockit_bin())
        .args([
            "serve",
            &place,
            "--service",
            "echo",
            "--tls",
            "--tls-ephemeral",
        ])
        .env("XDG_DATA_HOME", data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sockit");
    let banner = read_banner(&mut BufReader::new(child.stdout.take().unwrap()));
    assert!(
        banner[0].contains("listening on unix") && banner[0].contains("tls"),
        "{banner:?}"
    );
    let connect_line = banner.last().unwrap();
    assert!(connect_line.contains(&format!("sockit connect {place} --tls --tls-pin sha256:")));
    let pin = connect_line
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_owned();
    let out = sockit(&[
        "connect",
        &place,
        "--tls",
        "--tls-pin",
        &pin,
        "-m",
        "over unix",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "over unix");
    // Without the pin the self-signed certificate is not trusted: one line, exit 1.
    let out = sockit(&["connect", &place, "--tls", "-m", "x"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("not signed by a trusted CA"),
        "{:?}",
        text(&out)
    );
    let _ = child.kill();
    let _ = child.wait();
}
