//! Benchmark: bulk throughput over loopback without loss. 256 MiB sent as 1 MiB messages over
//! one sockit rudp connection, side by side with quinn (QUIC, one unidirectional stream, the
//! same MTU, MTU discovery off) and plain TCP, in the same run; at the default MTU (1200) and
//! at a large one (65000, which loopback allows).
//!
//! `RUDP_BULK_MB` sets the size (default 256), `RUDP_BULK_ROUNDS` the rounds (default 3;
//! medians are compared), `RUDP_BULK_MTU` runs one MTU only.
//!
//! Run: `nice cargo bench --bench rudp_bulk`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sockit::rudp::{Config, EndpointConfig};
use sockit::transport::rudp::{RudpServer, connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const CHUNK: usize = 1 << 20;
/// Longest a quinn transfer may take before it is reported as unfinished.
const QUINN_LIMIT: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    let mib = env_usize("RUDP_BULK_MB", 256);
    let rounds = env_usize("RUDP_BULK_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("rudp bulk benchmark: {mib} MiB per transfer, {rounds} rounds, loopback");
    let bytes = (mib as u64) << 20;
    let mtus = match std::env::var("RUDP_BULK_MTU")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(m) => vec![m],
        None => vec![1200usize, 65000],
    };
    for mtu in mtus {
        let (mut r, mut q, mut t) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            r.push(rt.block_on(rudp(mib, mtu)));
            eprintln!("  rudp done");
            // quinn degrades badly above ~1500-byte datagrams (5 MB/s at 9000 here), so its
            // run is cut off rather than waited for.
            let quinn = rt.block_on(async {
                tokio::time::timeout(QUINN_LIMIT, quinn_run(mib, mtu))
                    .await
                    .ok()
            });
            match quinn {
                Some(d) => {
                    eprintln!("  quinn done");
                    q.push(d);
                }
                None => eprintln!("  quinn did not finish within {QUINN_LIMIT:?}"),
            }
            t.push(rt.block_on(tcp(mib)));
        }
        let (r, t) = (median(&mut r), median(&mut t));
        let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
        let (quinn, ratio) = if q.len() == rounds {
            let q = median(&mut q);
            (
                format!("{:.0} MB/s", mbps(q)),
                format!("{:.2}", q.as_secs_f64() / r.as_secs_f64()),
            )
        } else {
            let s = format!("did not finish in {}s", QUINN_LIMIT.as_secs());
            (s, "n/a".into())
        };
        println!(
            "mtu {mtu}: rudp {:.0} MB/s, quinn {quinn}, tcp {:.0} MB/s: rudp/quinn = {ratio} (target >= 1.0), rudp/tcp = {:.2}",
            mbps(r),
            mbps(t),
            t.as_secs_f64() / r.as_secs_f64()
        );
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn payload() -> Bytes {
    Bytes::from(vec![0x5a; CHUNK])
}

/// One rudp connection: the client sends `mib` 1 MiB messages; timed until the server has
/// received them all.
async fn rudp(mib: usize, mtu: usize) -> Duration {
    let config = Config {
        mtu,
        ..Config::default()
    };
    let stop = CancellationToken::new();
    let mut server = RudpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointConfig {
            connection: config.clone(),
            ..EndpointConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("bind rudp");
    let addr = server.local_addr();
    let want = (mib * CHUNK) as u64;
    let receiver = tokio::spawn(async move {
        let mut conn = server.accept().await.expect("a connection");
        let mut got = 0u64;
        while got < want {
            match conn.recv().await {
                Some(m) => got += m.len() as u64,
                None => break,
            }
        }
        (got, Instant::now(), server)
    });
    let client = connect(addr, config).await.expect("rudp connect");
    let started = Instant::now();
    let data = payload();
    for _ in 0..mib {
        client.send(data.clone()).await.expect("rudp send");
    }
    let (got, done, server) = receiver.await.expect("receiver");
    assert_eq!(got, want, "rudp lost data");
    client.close();
    stop.cancel();
    let _ = server.finish().await;
    done - started
}

fn quinn_transport(mtu: usize) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(mtu.min(65527) as u16);
    t.min_mtu(mtu.min(65527) as u16);
    t.mtu_discovery_config(None);
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t
}

/// A quinn endpoint on loopback that accepts datagrams of `mtu` bytes (quinn's default
/// limit, 1472, would make a peer sending larger ones wait forever).
fn quinn_endpoint(server: Option<quinn::ServerConfig>, mtu: usize) -> quinn::Endpoint {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(mtu.clamp(1200, 65527) as u16)
        .expect("payload size");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    grow_buffers(&socket);
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime)).expect("endpoint")
}

/// The same kernel socket buffers rudp's driver asks for (quinn leaves the default, which
/// holds only a couple of 65000-byte datagrams).
fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket descriptor, a pointer to a c_int and its exact size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// quinn over loopback: one unidirectional stream carrying `mib` MiB.
async fn quinn_run(mib: usize, mtu: usize) -> Duration {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut server_config = quinn::ServerConfig::with_single_cert(vec![der.clone()], key.into())
        .expect("server config");
    server_config.transport_config(Arc::new(quinn_transport(mtu)));
    let server = quinn_endpoint(Some(server_config), mtu);
    let addr: SocketAddr = server.local_addr().expect("addr");
    let want = (mib * CHUNK) as u64;
    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let mut stream = conn.accept_uni().await.expect("stream");
        let mut got = 0u64;
        let mut buf = vec![0u8; CHUNK];
        // An error ends the count (the sender gave up: see QUINN_LIMIT).
        while let Ok(Some(n)) = stream.read(&mut buf).await {
            got += n as u64;
        }
        (got, Instant::now(), server, conn)
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client_config =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    client_config.transport_config(Arc::new(quinn_transport(mtu)));
    let mut client = quinn_endpoint(None, mtu);
    client.set_default_client_config(client_config);
    let conn = client
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("quinn handshake");
    let started = Instant::now();
    let mut stream = conn.open_uni().await.expect("open stream");
    let data = payload();
    for _ in 0..mib {
        stream.write_all(&data).await.expect("quinn write");
    }
    stream.finish().expect("finish");
    let (got, done, _server, _sconn) = receiver.await.expect("receiver");
    assert_eq!(got, want, "quinn lost data");
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    done - started
}

/// Plain TCP over loopback, the same bytes.
async fn tcp(mib: usize) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let want = (mib * CHUNK) as u64;
    let receiver = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        (got, Instant::now())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let data = payload();
    for _ in 0..mib {
        s.write_all(&data).await.expect("write");
    }
    s.shutdown().await.expect("shutdown");
    let (got, done) = receiver.await.expect("receiver");
    assert_eq!(got, want);
    done - started
}
