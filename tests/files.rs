//! File transfer end to end: `sockit serve --service files` with `sockit send`, `get` and
//! `ls`, raw protocol clients for what the commands never send, a relay that corrupts or cuts
//! the stream, and the tutorials' own upload client.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::{ServeProcess, python, sockit_bin};

fn serve(dir: &Path, extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--service", "files", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServeProcess::start(&args)
}

fn sockit(args: &[&str]) -> Output {
    Command::new(sockit_bin())
        .args(args)
        .output()
        .expect("run sockit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn send(addr: SocketAddr, paths: &[&Path], extra: &[&str]) -> Output {
    let port = addr.port().to_string();
    let mut args = vec!["send", "127.0.0.1", port.as_str()];
    args.extend_from_slice(extra);
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    sockit(&args)
}

fn get(addr: SocketAddr, name: &str, out: &Path) -> Output {
    sockit(&["get", &addr.to_string(), name, "-o", out.to_str().unwrap()])
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every entry of `dir`, hidden ones too, recursively, as relative paths.
fn all_entries(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn partials(dir: &Path) -> Vec<String> {
    all_entries(dir)
        .into_iter()
        .filter(|p| p.rsplit('/').next().unwrap().starts_with(".sockit-part-"))
        .collect()
}

#[test]
fn files_of_every_size_round_trip_byte_for_byte() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let server = serve(srv.path(), &[]);
    for (name, data) in [
        ("empty", vec![]),
        ("one", vec![b'x']),
        ("ten-mb.bin", random_bytes(10_000_000, 1)),
    ] {
        let path = local.path().join(name);
        std::fs::write(&path, &data).unwrap();
        let out = send(server.addr, &[&path], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = text(&out.stderr);
        assert!(
            line.starts_with(&format!("sent {name}: {} bytes in ", data.len())),
            "{line}"
        );
        assert!(
            line.contains(&blake3::hash(&data).to_hex().to_string()),
            "{line}"
        );
        assert_eq!(std::fs::read(srv.path().join(name)).unwrap(), data);
        let back = local.path().join(format!("{name}.back"));
        let out = get(server.addr, name, &back);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).starts_with(&format!("received {name}: ")));
        assert_eq!(std::fs::read(&back).unwrap(), data);
    }
    assert!(partials(srv.path()).is_empty());
}

#[test]
fn a_one_gib_sparse_file_round_trips() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("sparse.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    // A few non-zero bytes, so that misplaced chunks would show.
    for at in [0u64, 123_456_789, (1 << 30) - 1] {
        std::os::unix::fs::FileExt::write_at(&f, b"Z", at).unwrap();
    }
    drop(f);
    let server = serve(srv.path(), &[]);
    let out = send(server.addr, &[&path], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = |p: &Path| {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
        h.finalize()
    };
    let want = hash(&path);
    assert_eq!(hash(&srv.path().join("sparse.img")), want);
    let back = local.path().join("back.img");
    let out = get(server.addr, "sparse.img", &back);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(hash(&back), want);
    // Memory stays bounded whatever the size: a gibibyte each way moved through a few
    // 1 MiB chunk buffers.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(hwm_kib < 64 * 1024, "the server peaked at {hwm_kib} KiB");
}

#[test]
fn directory_trees_go_up_with_r_and_list_with_relative_paths() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("proj");
    std::fs::create_dir_all(tree.join("src/deep")).unwrap();
    std::fs::write(tree.join("README"), b"readme").unwrap();
    std::fs::write(tree.join("src/main.rs"), b"fn main() {}").unwrap();
    std::fs::write(tree.join("src/deep/x.bin"), random_bytes(3000, 2)).unwrap();
    let server = serve(srv.path(), &[]);

    let out = send(server.addr, &[&tree], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is a directory (use -r"),
        "{}",
        text(&out.stderr)
    );

    let out = send(server.addr, &[&tree], &["-r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().count(),
        3,
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read(srv.path().join("proj/src/deep/x.bin")).unwrap(),
        random_bytes(3000, 2)
    );

    let out = sockit(&["ls", &server.addr.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut names: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.rsplit("  ").next().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["proj/README", "proj/src/deep/x.bin", "proj/src/main.rs"]
    );

    let out = sockit(&["ls", "127.0.0.1", &server.addr.port().to_string(), "--json"]);
    let entries: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let readme = entries.iter().find(|e| e["name"] == "proj/README").unwrap();
    assert_eq!(readme["size"], 6);
    assert!(readme["mtime"].as_f64().unwrap() > 1.6e9);

    let back = local.path().join("x");
    let out = get(server.addr, "proj/src/deep/x.bin", &back);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(back).unwrap(), random_bytes(3000, 2));
}

/// Speaks the protocol by hand: one request, the answer header back.
const RAW_CLIENT: &str = r#"
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def frame(h, body=b""):
    h = dict(h, len=len(body))
    raw = json.dumps(h).encode()
    s.sendall(struct.pack(">I", len(raw)) + raw + body)
def head():
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    return json.loads(s.recv(n, socket.MSG_WAITALL))
for req in json.loads(sys.argv[2]):
    frame(req)
    print(json.dumps(head()))
"#;

#[test]
fn every_unsafe_name_is_refused_and_nothing_lands_outside() {
    let base = tempfile::tempdir().unwrap();
    let srv = base.path().join("srv");
    std::fs::create_dir(&srv).unwrap();
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, srv.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), srv.join("s")).unwrap();
    let server = serve(&srv, &[]);
    let long = "x".repeat(256);
    let bad = [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "..",
        ".",
        "./a",
        "a//b",
        "a/",
        "",
        "a\\b",
        "a\u{0}b",
        long.as_str(),
        ".sockit-part-x",
        "link/new",
        "link/secret",
        "s",
    ];
    let mut reqs = vec![];
    for name in bad {
        reqs.push(serde_json::json!({"op": "put", "name": name, "size": 1}));
        reqs.push(serde_json::json!({"op": "get", "name": name}));
    }
    let out = python(
        RAW_CLIENT,
        &[
            &server.addr.port().to_string(),
            &serde_json::to_string(&reqs).unwrap(),
        ],
    );
    let answers: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), reqs.len(), "{out}");
    for (req, answer) in reqs.iter().zip(&answers) {
        assert_eq!(answer["op"], "error", "{req} was answered {answer}");
        assert!(!answer["message"].as_str().unwrap().is_empty());
    }
    let why = |i: usize| answers[i]["message"].as_str().unwrap().to_owned();
    assert!(why(0).contains("'..' component"), "{}", why(0));
    assert!(why(2).contains("absolute path"), "{}", why(2));
    assert!(why(26).contains("symbolic link"), "{}", why(26));
    // Nothing was written anywhere, and the links were not followed.
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(all_entries(&srv), ["link", "s"]);
    // ls hides what it cannot serve.
    let out = sockit(&["ls", &server.addr.to_string()]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
    // The server kept serving.
    let f = base.path().join("fine");
    std::fs::write(&f, b"ok").unwrap();
    assert!(send(server.addr, &[&f], &[]).status.success());
}

#[test]
fn an_existing_file_is_not_overwritten_unless_the_server_allows_it() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("a.txt");
    std::fs::write(srv.path().join("a.txt"), b"old").unwrap();
    std::fs::write(&path, b"new contents").unwrap();
    let server = serve(srv.path(), &[]);
    let out = send(server.addr, &[&path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(srv.path().join("a.txt")).unwrap(), b"old");
    drop(server);
    let server = serve(srv.path(), &["--overwrite"]);
    let out = send(server.addr, &[&path], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(srv.path().join("a.txt")).unwrap(),
        b"new contents"
    );
    assert!(partials(srv.path()).is_empty());
}

#[test]
fn read_only_and_size_limits_refuse_uploads_but_serve_downloads() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::write(srv.path().join("there"), b"data").unwrap();
    let path = local.path().join("up");
    std::fs::write(&path, random_bytes(2000, 3)).unwrap();
    let server = serve(srv.path(), &["--read-only"]);
    let out = send(server.addr, &[&path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("read-only"),
        "{}",
        text(&out.stderr)
    );
    let back = local.path().join("there");
    assert!(get(server.addr, "there", &back).status.success());
    drop(server);
    let server = serve(srv.path(), &["--max-file-size", "1K"]);
    let out = send(server.addr, &[&path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("over the server's limit of 1024 bytes"),
        "{}",
        text(&out.stderr)
    );
    assert!(!srv.path().join("up").exists());
    assert!(partials(srv.path()).is_empty());
}

/// A one-connection TCP relay to `target`: client-to-server bytes pass through `tamper`,
/// which may change them or return `false` to cut both directions at once.
fn relay(
    target: SocketAddr,
    tamper: impl FnMut(u64, &mut [u8]) -> bool + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut server = TcpStream::connect(target).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
        });
        let mut tamper = tamper;
        let mut at = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !tamper(at, &mut buf[..n]) {
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
                return;
            }
            at += n as u64;
            if server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server.shutdown(std::net::Shutdown::Write);
    });
    addr
}

#[test]
fn a_byte_flipped_on_the_wire_is_caught_and_nothing_is_kept() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let data = random_bytes(3_000_000, 4);
    let path = local.path().join("c.bin");
    std::fs::write(&path, &data).unwrap();
    let server = serve(srv.path(), &[]);
    let flip_at = 2_000_000u64;
    let via = relay(server.addr, move |at, buf| {
        if (at..at + buf.len() as u64).contains(&flip_at) {
            buf[(flip_at - at) as usize] ^= 0x01;
        }
        true
    });
    let out = send(via, &[&path], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("blake3 mismatch"), "{err}");
    assert!(
        all_entries(srv.path()).is_empty(),
        "{:?}",
        all_entries(srv.path())
    );
    // Sent again without the fault, it arrives whole.
    let out = send(server.addr, &[&path], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(srv.path().join("c.bin")).unwrap(), data);
}

#[test]
fn a_cut_transfer_resumes_where_it_stopped_and_ends_identical() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let data = random_bytes(12_000_000, 5);
    let path = local.path().join("r.bin");
    std::fs::write(&path, &data).unwrap();
    let server = serve(srv.path(), &[]);
    let via = relay(server.addr, |at, _| at < 5_000_000);
    let out = send(via, &[&path], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!srv.path().join("r.bin").exists());
    // The partial file appears once the server has written what it got.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while partials(srv.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no partial file kept");
        thread::sleep(Duration::from_millis(20));
    }
    let out = sockit(&["ls", &server.addr.to_string()]);
    assert_eq!(text(&out.stdout), "", "a partial upload must not be listed");
    thread::sleep(Duration::from_millis(300));
    let out = send(server.addr, &[&path], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stderr);
    let resumed: u64 = line
        .split("(resumed at byte ")
        .nth(1)
        .unwrap_or_else(|| panic!("not resumed: {line}"))
        .trim_end()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert!(resumed > 0 && resumed <= 5_000_000, "{line}");
    assert!(
        line.starts_with(&format!(
            "sent r.bin: {} bytes",
            data.len() as u64 - resumed
        )),
        "{line}"
    );
    assert_eq!(std::fs::read(srv.path().join("r.bin")).unwrap(), data);
    assert!(partials(srv.path()).is_empty());
}

#[test]
fn a_partial_whose_prefix_no_longer_matches_starts_over() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("m.bin");
    std::fs::write(&path, random_bytes(6_000_000, 6)).unwrap();
    let server = serve(srv.path(), &[]);
    let via = relay(server.addr, |at, _| at < 3_000_000);
    assert_eq!(send(via, &[&path], &[]).status.code(), Some(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while partials(srv.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline);
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    // Same name and size, different bytes.
    let changed = random_bytes(6_000_000, 7);
    std::fs::write(&path, &changed).unwrap();
    let out = send(server.addr, &[&path], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("resumed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(srv.path().join("m.bin")).unwrap(), changed);
}

#[test]
fn abandoned_partials_are_removed_after_the_partial_ttl() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("t.bin");
    std::fs::write(&path, random_bytes(4_000_000, 8)).unwrap();
    let server = serve(srv.path(), &["--partial-ttl", "1s"]);
    let via = relay(server.addr, |at, _| at < 2_000_000);
    assert_eq!(send(via, &[&path], &[]).status.code(), Some(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while partials(srv.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no partial kept");
        thread::sleep(Duration::from_millis(20));
    }
    while !partials(srv.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "partial never cleaned"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(all_entries(srv.path()).is_empty());
}

#[test]
fn twenty_uploads_and_twenty_downloads_at_once_do_not_mix() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    for i in 0..20u64 {
        std::fs::write(
            srv.path().join(format!("down{i}")),
            random_bytes(1_500_000, 100 + i),
        )
        .unwrap();
        std::fs::write(
            local.path().join(format!("up{i}")),
            random_bytes(1_500_000, 200 + i),
        )
        .unwrap();
    }
    let server = serve(srv.path(), &[]);
    let addr = server.addr;
    let mut jobs = vec![];
    for i in 0..20u64 {
        let up = local.path().join(format!("up{i}"));
        jobs.push(thread::spawn(move || send(addr, &[&up], &[])));
        let back = local.path().join(format!("back{i}"));
        jobs.push(thread::spawn(move || get(addr, &format!("down{i}"), &back)));
    }
    for job in jobs {
        let out = job.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for i in 0..20u64 {
        assert_eq!(
            std::fs::read(srv.path().join(format!("up{i}"))).unwrap(),
            random_bytes(1_500_000, 200 + i)
        );
        assert_eq!(
            std::fs::read(local.path().join(format!("back{i}"))).unwrap(),
            random_bytes(1_500_000, 100 + i)
        );
    }
}

#[test]
fn two_uploads_of_one_name_at_once_leave_one_whole_file() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let a = local.path().join("a");
    let b = local.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (da, db) = (random_bytes(20_000_000, 9), random_bytes(20_000_000, 10));
    std::fs::write(a.join("same.bin"), &da).unwrap();
    std::fs::write(b.join("same.bin"), &db).unwrap();
    let server = serve(srv.path(), &[]);
    let addr = server.addr;
    let (pa, pb) = (a.join("same.bin"), b.join("same.bin"));
    let ja = thread::spawn(move || send(addr, &[&pa], &[]));
    let jb = thread::spawn(move || send(addr, &[&pb], &[]));
    let (oa, ob) = (ja.join().unwrap(), jb.join().unwrap());
    assert!(
        oa.status.success() != ob.status.success(),
        "exactly one must win:\n{}\n{}",
        text(&oa.stderr),
        text(&ob.stderr)
    );
    let loser = if oa.status.success() { &ob } else { &oa };
    let why = text(&loser.stderr);
    assert!(
        why.contains("being uploaded by another connection") || why.contains("already exists"),
        "{why}"
    );
    let stored = std::fs::read(srv.path().join("same.bin")).unwrap();
    assert_eq!(stored, if oa.status.success() { da } else { db });
}

/// The tutorials' upload client, as they write it: a native-order `struct.pack('i')` header
/// length, a JSON dict, the raw bytes, then `recv(1024)` for the server's answer.
const TUTORIAL_UPLOAD: &str = r#"
import json, os, socket, struct, sys, hashlib
sk = socket.socket()
sk.connect(("127.0.0.1", int(sys.argv[1])))
for path in sys.argv[2:]:
    head = {"file_name": os.path.basename(path), "file_size": os.path.getsize(path)}
    with open(path, "rb") as f:
        data = f.read()
    if os.environ.get("WITH_MD5"):
        head["md5"] = os.environ.get("WITH_MD5") if os.environ["WITH_MD5"] != "1" else hashlib.md5(data).hexdigest()
    head_bytes = json.dumps(head).encode("utf-8")
    sk.send(struct.pack("i", len(head_bytes)))
    sk.send(head_bytes)
    for i in range(0, len(data), 1024):
        sk.send(data[i:i + 1024])
    print(sk.recv(1024).decode("utf-8").strip())
sk.close()
"#;

#[test]
fn the_tutorial_upload_client_works_unchanged() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let one = local.path().join("一.txt");
    let two = local.path().join("two.bin");
    std::fs::write(&one, "你好, sockit\n").unwrap();
    std::fs::write(&two, random_bytes(300_000, 11)).unwrap();
    let server = serve(srv.path(), &[]);
    let port = server.addr.port().to_string();
    let out = python(
        TUTORIAL_UPLOAD,
        &[&port, one.to_str().unwrap(), two.to_str().unwrap()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("ok: received 一.txt ("), "{out}");
    assert!(
        lines[1].starts_with("ok: received two.bin (300000 bytes, blake3 "),
        "{out}"
    );
    assert_eq!(
        std::fs::read(srv.path().join("一.txt")).unwrap(),
        std::fs::read(&one).unwrap()
    );
    assert_eq!(
        std::fs::read(srv.path().join("two.bin")).unwrap(),
        random_bytes(300_000, 11)
    );
}

#[test]
fn the_tutorial_scheme_checks_md5_and_refuses_bad_names() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let f = local.path().join("m.txt");
    std::fs::write(&f, b"checked").unwrap();
    let server = serve(srv.path(), &[]);
    let port = server.addr.port().to_string();
    let run = |md5: &str| {
        Command::new("python3")
            .args(["-c", TUTORIAL_UPLOAD, &port, f.to_str().unwrap()])
            .env("WITH_MD5", md5)
            .output()
            .unwrap()
    };
    let out = run(&"0".repeat(32));
    assert!(
        text(&out.stdout).starts_with("error: md5 mismatch for m.txt"),
        "{}",
        text(&out.stdout)
    );
    assert!(all_entries(srv.path()).is_empty());
    let out = run("1");
    assert!(
        text(&out.stdout).starts_with("ok: received m.txt (7 bytes"),
        "{}",
        text(&out.stdout)
    );
    // A name with a path in it, as a careless client might send.
    let bad = r#"
import json, socket, struct, sys
sk = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
h = json.dumps({"filename": "../../etc/passwd", "filesize": 4}).encode()
sk.send(struct.pack("i", len(h)) + h + b"root")
print(sk.recv(1024).decode().strip())
"#;
    let out = python(bad, &[&port]);
    assert!(
        out.starts_with("error: bad name: '../../etc/passwd' contains a '..' component"),
        "{out}"
    );
    assert_eq!(all_entries(srv.path()), ["m.txt"]);
}

#[test]
fn garbage_and_vanishing_clients_close_only_their_own_connection() {
    let srv = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let server = serve(srv.path(), &[]);
    // Not a header at all.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = vec![];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut answer);
    assert!(
        text(&answer).contains("not a file-transfer header"),
        "{}",
        text(&answer)
    );
    // A put that announces a body and vanishes halfway.
    let mut s = TcpStream::connect(server.addr).unwrap();
    let put = br#"{"op":"put","name":"v.bin","size":1000000,"len":0}"#;
    s.write_all(&(put.len() as u32).to_be_bytes()).unwrap();
    s.write_all(put).unwrap();
    let data = br#"{"op":"data","len":1000}"#;
    s.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
    s.write_all(data).unwrap();
    s.write_all(&[7u8; 500]).unwrap();
    drop(s);
    // A malformed header after a good request.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(&[0, 0, 0, 3]).unwrap();
    s.write_all(b"{{{").unwrap();
    let mut answer = vec![];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut answer);
    assert!(
        text(&answer).contains("malformed header"),
        "{}",
        text(&answer)
    );
    // Everyone else is still served.
    let f = local.path().join("after");
    std::fs::write(&f, b"still here").unwrap();
    let out = send(server.addr, &[&f], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = server.stop();
    assert!(log.contains("not a file-transfer header"), "{log}");
    assert!(!srv.path().join("v.bin").exists());
}

#[test]
fn get_writes_to_stdout_and_refuses_unsafe_names_before_connecting() {
    let srv = tempfile::tempdir().unwrap();
    std::fs::write(srv.path().join("o.txt"), b"to stdout").unwrap();
    let server = serve(srv.path(), &[]);
    let out = sockit(&["get", &server.addr.to_string(), "o.txt", "-o", "-"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"to stdout");
    let out = sockit(&["get", &server.addr.to_string(), "../x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("'..' component"));
    let out = sockit(&["get", &server.addr.to_string(), "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "sockit: error: missing: no such file"
    );
}

#[test]
fn the_command_line_refuses_what_the_files_service_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["serve", "--service", "files", "--udp", "--dir", d],
        vec![
            "serve",
            "--service",
            "files",
            "--framing",
            "line",
            "--dir",
            d,
        ],
        vec!["serve", "--service", "echo", "--dir", d],
        vec!["serve", "--service", "echo", "--read-only"],
        vec!["send", "127.0.0.1"],
        vec!["send", "udp:127.0.0.1:9", "x"],
        vec!["ls", "127.0.0.1"],
    ] {
        let out = sockit(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let missing = dir.path().join("nope");
    let out = sockit(&[
        "serve",
        "127.0.0.1",
        "0",
        "--service",
        "files",
        "--dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot serve"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listens here (a port bound and released): a clear failure, exit 1.
    let port = common::unused_port().to_string();
    let f = dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let out = sockit(&["send", "127.0.0.1", &port, f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn get_to_a_stdout_closed_early_stops_quietly() {
    let srv = tempfile::tempdir().unwrap();
    std::fs::write(srv.path().join("big"), random_bytes(8_000_000, 12)).unwrap();
    let server = serve(srv.path(), &[]);
    let mut child = Command::new(sockit_bin())
        .args(["get", &server.addr.to_string(), "big", "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn a_server_that_is_not_a_files_server_is_named_as_such() {
    let hub = ServeProcess::start(&["--service", "hub"]);
    let local = tempfile::tempdir().unwrap();
    let f = local.path().join("x");
    std::fs::write(&f, b"x").unwrap();
    for out in [
        send(hub.addr, &[&f], &[]),
        sockit(&["ls", &hub.addr.to_string()]),
    ] {
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains("is it `sockit serve --service files`?"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn send_get_and_ls_over_tls_and_over_a_unix_socket() {
    let local = tempfile::tempdir().unwrap();
    let data = random_bytes(16 << 20, 41);
    let f = local.path().join("blob.bin");
    std::fs::write(&f, &data).unwrap();
    let fs = f.to_str().unwrap();

    // TLS: serve --tls, and clients with --tls or a tls: address.
    let tls_dir = tempfile::tempdir().unwrap();
    let server = serve(tls_dir.path(), &["--tls", "--tls-ephemeral"]);
    let tls_addr = format!("tls:{}", server.addr);
    let out = sockit(&["send", &tls_addr, fs, "--tls-insecure"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(tls_dir.path().join("blob.bin")).unwrap(),
        data
    );
    let out = sockit(&["ls", &server.addr.to_string(), "--tls", "--tls-insecure"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("blob.bin"),
        "{}",
        text(&out.stdout)
    );
    let back = local.path().join("back.bin");
    let out = sockit(&[
        "get",
        &tls_addr,
        "blob.bin",
        "-o",
        back.to_str().unwrap(),
        "--tls-insecure",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // An unknown certificate is refused, and a plain client is told the server speaks TLS.
    let out = sockit(&["send", &tls_addr, fs]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not signed by a trusted CA"),
        "{}",
        text(&out.stderr)
    );
    let out = send(server.addr, &[&f], &["--timeout", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("answered with TLS"),
        "{}",
        text(&out.stderr)
    );
    server.stop();

    // A unix socket.
    let unix_dir = tempfile::tempdir().unwrap();
    let sock = local.path().join("files.sock");
    let mut child = Command::new(sockit_bin())
        .args(["serve", &format!("unix:{}", sock.display())])
        .args([
            "--service",
            "files",
            "--dir",
            unix_dir.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the unix server never came up"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let unix_addr = format!("unix:{}", sock.display());
    let out = sockit(&["send", &unix_addr, fs]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sockit(&["ls", &unix_addr, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"blob.bin\""),
        "{}",
        text(&out.stdout)
    );
    let back2 = local.path().join("back2.bin");
    let out = sockit(&["get", &unix_addr, "blob.bin", "-o", back2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&back2).unwrap(), data);
    let _ = child.kill();
    let _ = child.wait();

    // TLS over a unix socket, with the send line the banner prints (its --tls --tls-pin).
    let sock2 = local.path().join("tls-files.sock");
    let mut child = Command::new(sockit_bin())
        .args(["serve", &format!("unix:{}", sock2.display()), "--tls"])
        .args(["--tls-ephemeral", "--service", "files", "--dir"])
        .arg(unix_dir.path())
        .arg("--overwrite")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = std::io::BufReader::new(child.stdout.take().unwrap());
    let use_line = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut banner, &mut line).unwrap();
        assert!(n > 0, "the banner has no use: line");
        if let Some(rest) = line.strip_prefix("use: sockit ") {
            break rest.split("  |").next().unwrap().to_owned();
        }
    };
    let args: Vec<String> = use_line
        .split_whitespace()
        .map(|w| {
            if w == "FILE..." {
                fs.to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    assert!(args.contains(&"--tls-pin".to_owned()), "{use_line}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sockit(&args);
    assert!(out.status.success(), "{use_line}: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read(unix_dir.path().join("blob.bin")).unwrap(),
        data
    );
    let _ = child.kill();
    let _ = child.wait();
}
