//! TLS over any byte stream (rustls on aws-lc-rs): the server side of `serve --tls` and the
//! client side of `connect`/`bench`/`relay --tls`.
//!
//! - [`TlsServer`]: a certificate (given as PEM, or generated and kept: see [`cert`]), optional
//!   client certificates (mTLS), and [`TlsServer::accept`] with a handshake timeout.
//! - [`TlsClient`]: the server's certificate checked against the system's roots, a `--tls-ca`
//!   file, or pins (`sha256:` of the certificate or its public key), or not at all
//!   (`--tls-insecure`); [`TlsClient::connect`] with a handshake timeout.
//! - Every failure becomes one [`TlsError`] line that says what was wrong and what to do:
//!   unknown CA, wrong name, expired, pin mismatch (with the fingerprints seen), timeout.

pub mod cert;
pub mod verify;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, CommonState, DigitallySignedStruct, Error, OtherError,
    RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::service::PeerInfo;
use crate::transport::stream::{BoxFuture, BoxStream, ClientUpgrade, Upgrade};

pub use cert::{CertInfo, CertSource, Fingerprint, Pin};
pub use verify::PinMismatch;

/// How long a handshake may take unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up or a handshake failed: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A flag's file or value is unusable (names the flag and file).
    #[error("{0}")]
    Config(String),
    /// The handshake failed; the text says why and, where it can, what to do.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out after {}s", .0.as_secs_f64())]
    Timeout(Duration),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        let kind = match e {
            TlsError::Config(_) => io::ErrorKind::InvalidInput,
            TlsError::Handshake(_) => io::ErrorKind::InvalidData,
            TlsError::Timeout(_) => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

/// The crypto provider every sockit TLS config uses: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `serve --tls` settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--tls-cert`: the certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// `--tls-key`: its private key (PEM).
    pub key: Option<PathBuf>,
    /// `--tls-client-ca`: require client certificates signed by these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    /// `--tls-ephemeral`: a generated certificate not kept on disk.
    pub ephemeral: bool,
    /// `--tls-alpn`: protocols offered, most preferred first (empty: no ALPN).
    pub alpn: Vec<String>,
    /// Most time a handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cert: None,
            key: None,
            client_ca: None,
            ephemeral: false,
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The server side: a rustls config and what the banner shows about its certificate.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The leaf certificate's subject and fingerprints.
    pub leaf: CertInfo,
    /// Where the certificate came from.
    pub source: CertSource,
    /// Whether clients must show a certificate (`--tls-client-ca`).
    pub mtls: bool,
    timeout: Duration,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("leaf", &self.leaf)
            .field("source", &self.source)
            .field("mtls", &self.mtls)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Builds the server side for a server listening on `listen_host` (used for the names of a
    /// generated certificate). Generated certificates are kept in [`cert::store_dir`].
    pub fn new(opts: &ServerOptions, listen_host: &str) -> Result<TlsServer, TlsError> {
        let (identity, source) = match (&opts.cert, &opts.key) {
            (Some(c), Some(k)) => (
                cert::Identity {
                    chain: cert::load_certs(c, "--tls-cert")?,
                    key: cert::load_key(k, "--tls-key")?,
                },
                CertSource::Given(c.clone()),
            ),
            (Some(_), None) => return Err(TlsError::Config("--tls-cert needs --tls-key".into())),
            (None, Some(_)) => return Err(TlsError::Config("--tls-key needs --tls-cert".into())),
            (None, None) if opts.ephemeral => {
                (cert::ephemeral(listen_host)?, CertSource::Ephemeral)
            }
            (None, None) => {
                let dir = cert::store_dir().ok_or_else(|| {
                    TlsError::Config(
                        "no data directory to keep the certificate in (set XDG_DATA_HOME or HOME, or use --tls-ephemeral)".into(),
                    )
                })?;
                cert::stored(&dir, listen_host)?
            }
        };
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("TLS setup: {e}")))?;
        let builder = match &opts.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in cert::load_certs(path, "--tls-client-ca")? {
                    roots.add(c).map_err(|e| {
                        TlsError::Config(format!("--tls-client-ca {}: {e}", path.display()))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            TlsError::Config(format!("--tls-client-ca {}: {e}", path.display()))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let leaf = CertInfo::of(&identity.chain[0]);
        let mut config = builder
            .with_single_cert(identity.chain, identity.key)
            .map_err(|e| {
                TlsError::Config(format!(
                    "--tls-cert/--tls-key: the key does not fit the certificate ({e})"
                ))
            })?;
        config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            leaf,
            source,
            mtls: opts.client_ca.is_some(),
            timeout: opts.handshake_timeout,
        })
    }

    /// The banner lines: where the certificate is from, its fingerprints, and a ready
    /// `sockit connect` line pinning it (for `host`:`port`, as a client would type them, with
    /// `flags` such as ` --framing len32` after `connect`).
    pub fn banner(&self, host: &str, port: u16, flags: &str) -> Vec<String> {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        self.banner_at(&format!("{host} {port}"), flags)
    }

    /// The banner lines for a server reached as `place` (`HOST PORT`, or `unix:PATH`).
    pub fn banner_at(&self, place: &str, flags: &str) -> Vec<String> {
        let from = match &self.source {
            CertSource::Given(p) => format!("certificate {}", p.display()),
            CertSource::Stored(p) => format!("certificate {} (kept from before)", p.display()),
            CertSource::Created(p) => format!("new certificate, kept in {}", p.display()),
            CertSource::Ephemeral => "throwaway certificate (--tls-ephemeral)".to_owned(),
        };
        let mut lines = vec![
            format!(
                "tls: {from}: {}{}",
                self.leaf.subject,
                if self.mtls {
                    ", client certificates required"
                } else {
                    ""
                }
            ),
            format!(
                "tls: certificate sha256 {}",
                self.leaf.fingerprint.colon_hex()
            ),
        ];
        if let Some(spki) = self.leaf.spki {
            lines.push(format!("tls: public key  sha256 {}", spki.colon_hex()));
            lines.push(format!(
                "connect with: sockit connect{flags} {place} --tls --tls-pin {spki}"
            ));
        }
        lines
    }

    /// What a client passes to `--tls-pin` for this server (its public key's fingerprint, else
    /// its certificate's).
    pub fn pin(&self) -> String {
        match self.leaf.spki {
            Some(spki) => spki.to_string(),
            None => self.leaf.fingerprint.to_string(),
        }
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs the server handshake on `stream`, within the handshake timeout.
    pub async fn accept<S>(&self, stream: S) -> Result<tokio_rustls::server::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(TlsError::Handshake(explain_server(&e))),
            Err(_) => Err(TlsError::Timeout(self.timeout)),
        }
    }
}

/// `connect --tls` settings (also bench and relay's TLS target).
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `--tls-ca`: trust these CAs instead of the system's.
    pub ca: Option<PathBuf>,
    /// `--tls-insecure`: accept any certificate.
    pub insecure: bool,
    /// `--tls-pin`: accept a certificate, or public key, with one of these digests (instead of
    /// a CA check and name check).
    pub pins: Vec<Pin>,
    /// `--tls-sni`: the name sent and checked, instead of the host typed.
    pub sni: Option<String>,
    /// `--tls-alpn`: protocols offered, most preferred first.
    pub alpn: Vec<String>,
    /// `--tls-cert`: a client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `--tls-key`: its key (PEM).
    pub key: Option<PathBuf>,
    /// Most time a handshake may take.
    pub handshake_timeout: Duration,
    /// Resume earlier sessions (on by default; off to measure full handshakes).
    pub resume: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ca: None,
            insecure: false,
            pins: Vec::new(),
            sni: None,
            alpn: Vec::new(),
            cert: None,
            key: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            resume: true,
        }
    }
}

/// How a [`TlsClient`] decides to trust a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The system's CA certificates.
    System,
    /// The CAs of a `--tls-ca` file.
    CaFile(PathBuf),
    /// Pins.
    Pinned,
    /// Nothing checked (`--tls-insecure`).
    Insecure,
}

/// The client side: a rustls config and the name to use.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    sni: Option<String>,
    /// How servers are trusted.
    pub trust: Trust,
    timeout: Duration,
    verbose: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("sni", &self.sni)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Builds the client side. `--tls-insecure` is the caller's to announce (see
    /// [`INSECURE_WARNING`]).
    pub fn new(opts: &ClientOptions) -> Result<TlsClient, TlsError> {
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        let (verifier, trust): (Arc<dyn ServerCertVerifier>, Trust) = if opts.insecure {
            (
                Arc::new(verify::PinVerifier::insecure(algorithms)),
                Trust::Insecure,
            )
        } else if !opts.pins.is_empty() {
            (
                Arc::new(verify::PinVerifier::new(opts.pins.clone(), algorithms)),
                Trust::Pinned,
            )
        } else {
            let mut roots = RootCertStore::empty();
            let trust = match &opts.ca {
                Some(path) => {
                    for c in cert::load_certs(path, "--tls-ca")? {
                        roots.add(c).map_err(|e| {
                            TlsError::Config(format!("--tls-ca {}: {e}", path.display()))
                        })?;
                    }
                    Trust::CaFile(path.clone())
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err(TlsError::Config(
                            "no system CA certificates found (install ca-certificates), give --tls-ca FILE or --tls-pin sha256:…".into(),
                        ));
                    }
                    Trust::System
                }
            };
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(format!("TLS setup: {e}")))?;
            (Arc::new(Explaining { inner }), trust)
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&opts.cert, &opts.key) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(
                    cert::load_certs(c, "--tls-cert")?,
                    cert::load_key(k, "--tls-key")?,
                )
                .map_err(|e| {
                    TlsError::Config(format!(
                        "--tls-cert/--tls-key: the key does not fit the certificate ({e})"
                    ))
                })?,
            (Some(_), None) => return Err(TlsError::Config("--tls-cert needs --tls-key".into())),
            (None, Some(_)) => return Err(TlsError::Config("--tls-key needs --tls-cert".into())),
            (None, None) => builder.with_no_client_auth(),
        };
        config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        if !opts.resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        if let Some(sni) = &opts.sni {
            server_name(sni)?;
        }
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sni: opts.sni.clone(),
            trust,
            timeout: opts.handshake_timeout,
            verbose: false,
        })
    }

    /// Prints [`describe`] lines (and how the server was trusted) to stderr after each
    /// handshake made as a [`ClientUpgrade`] layer (`connect -v`).
    pub fn verbose(mut self, on: bool) -> TlsClient {
        self.verbose = on;
        self
    }

    /// The name sent (SNI) and checked: `--tls-sni`, else `host` as the user typed it.
    pub fn name_for<'a>(&'a self, host: &'a str) -> &'a str {
        self.sni.as_deref().unwrap_or(host)
    }

    /// Runs the client handshake on `stream` to the server the user named `host`, within the
    /// handshake timeout.
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.name_for(host);
        let server = server_name(name)?;
        match tokio::time::timeout(self.timeout, self.connector.connect(server, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(TlsError::Handshake(explain_client(&e, name))),
            Err(_) => Err(TlsError::Timeout(self.timeout)),
        }
    }
}

/// Moves the bytes of `stream` (a TLS stream, say) to and from one end of a new unix socket
/// pair, in a task of its own, and returns the other end: code written for plain sockets
/// (the relay's splice and copy paths) then runs over TLS unchanged. The task ends when both
/// directions have ended, or on the first error.
pub fn bridge<S>(stream: S) -> io::Result<tokio::net::UnixStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::net::UnixStream::pair()?;
    tokio::spawn(async move {
        let mut stream = EofTolerant(stream);
        let mut near = near;
        // One TLS record at most per read: 2 × 16 KiB per relayed connection.
        const BUF: usize = 16 * 1024;
        if let Err(e) =
            tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut near, BUF, BUF).await
        {
            tracing::debug!("tls bridge ended: {e}");
        }
    });
    Ok(far)
}

/// A TLS stream whose peer may close without a `close_notify` alert: most do (openssl
/// s_client, ncat, a killed process), and for a byte stream a plain close is the end of it, not
/// an error worth a warning. Every other error passes through.
#[derive(Debug)]
pub struct EofTolerant<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for EofTolerant<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            // TLS 1.3 finishes the client's handshake before the server has checked the
            // client's certificate: a refusal arrives as an alert on the first read.
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(match rustls_error(&e) {
                Some(Error::AlertReceived(AlertDescription::CertificateRequired)) => {
                    io::Error::new(
                        e.kind(),
                        "the peer requires a client certificate (give --tls-cert and --tls-key)",
                    )
                }
                Some(Error::AlertReceived(a)) => io::Error::new(
                    e.kind(),
                    format!("the peer ended TLS with the alert {}", alert_text(a)),
                ),
                _ => e,
            })),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EofTolerant<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Upgrade for TlsServer {
    fn name(&self) -> &str {
        "tls"
    }

    fn upgrade(
        &self,
        stream: BoxStream,
        _peer: &PeerInfo,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let server = self.clone();
        Box::pin(async move {
            let tls = server.accept(stream).await?;
            Ok(Box::new(EofTolerant(tls)) as BoxStream)
        })
    }
}

impl ClientUpgrade for TlsClient {
    fn name(&self) -> &str {
        "tls"
    }

    fn upgrade(
        &self,
        stream: BoxStream,
        target: &str,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let client = self.clone();
        let target = target.to_owned();
        Box::pin(async move {
            let tls = client.connect(&target, stream).await?;
            if client.verbose {
                let (_, conn) = tls.get_ref();
                for line in describe(conn) {
                    crate::logging::stderr_line(&line);
                }
                crate::logging::stderr_line(&match &client.trust {
                    Trust::System => format!(
                        "tls: verified {:?} against the system's CAs",
                        client.name_for(&target)
                    ),
                    Trust::CaFile(p) => format!(
                        "tls: verified {:?} against {}",
                        client.name_for(&target),
                        p.display()
                    ),
                    Trust::Pinned => "tls: verified by pin".to_owned(),
                    Trust::Insecure => "tls: NOT verified (--tls-insecure)".to_owned(),
                });
            }
            Ok(Box::new(EofTolerant(tls)) as BoxStream)
        })
    }
}

/// What `--tls-insecure` prints to stderr.
pub const INSECURE_WARNING: &str = "WARNING: --tls-insecure: the server's certificate is NOT checked; anyone on the path can read and change this connection";

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned())
        .map_err(|_| TlsError::Config(format!("{name:?} is not a valid TLS server name")))
}

/// Wraps the CA verifier to turn its refusals into sentences naming the certificate seen.
#[derive(Debug)]
struct Explaining {
    inner: Arc<WebPkiServerVerifier>,
}

/// A CA-check refusal, explained.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Explained(String);

impl ServerCertVerifier for Explaining {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let err = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(Error::InvalidCertificate(e)) => e,
            Err(e) => return Err(e),
        };
        let info = CertInfo::of(end_entity);
        let seen = format!(
            "{} (certificate {}, public key {})",
            info.subject,
            info.fingerprint,
            info.spki.map_or_else(|| "?".into(), |s| s.to_string())
        );
        let text = match &err {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a trusted CA: {seen}; give --tls-ca FILE, or pin it with --tls-pin"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = cert::cert_names(end_entity);
                format!(
                    "the server's certificate is not valid for the name {:?}: it names {}; connect by one of those names or give --tls-sni NAME",
                    server_name.to_str(),
                    if names.is_empty() {
                        "nothing".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the server's certificate expired on {}: {seen}",
                info.not_after
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the server's certificate is not valid yet: {seen}")
            }
            other => format!("the server's certificate was refused ({other}): {seen}"),
        };
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(Explained(text))),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
fn rustls_error(e: &io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

fn alert_text(alert: &AlertDescription) -> String {
    format!("{alert:?}")
}

/// A client handshake failure as one sentence.
fn explain_client(e: &io::Error, name: &str) -> String {
    match rustls_error(e) {
        Some(Error::InvalidCertificate(CertificateError::Other(other))) => other.0.to_string(),
        Some(Error::InvalidCertificate(c)) => format!("the server's certificate was refused: {c}"),
        Some(Error::AlertReceived(
            a @ (AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure),
        )) => format!(
            "the server refused the handshake ({}); does it require a client certificate (--tls-cert, --tls-key)?",
            alert_text(a)
        ),
        Some(Error::AlertReceived(a)) => {
            format!("the server sent the alert {}", alert_text(a))
        }
        Some(Error::InvalidMessage(m)) => {
            format!("{name} does not speak TLS (a plain TCP server?): {m:?}")
        }
        Some(Error::NoApplicationProtocol) => {
            "the server accepts none of the --tls-alpn protocols".to_owned()
        }
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => format!(
            "{name} closed the connection during the handshake (not a TLS server, or it refused us)"
        ),
        None => e.to_string(),
    }
}

/// A server handshake failure as one sentence (for the log).
fn explain_server(e: &io::Error) -> String {
    match rustls_error(e) {
        Some(Error::InvalidMessage(_)) | Some(Error::InappropriateMessage { .. }) => {
            "the client does not speak TLS (plaintext or garbage)".to_owned()
        }
        Some(Error::NoCertificatesPresented) => {
            "the client sent no certificate (--tls-client-ca requires one)".to_owned()
        }
        Some(Error::InvalidCertificate(c)) => format!("the client's certificate was refused: {c}"),
        Some(Error::AlertReceived(a)) => format!(
            "the client refused the handshake with the alert {} (it does not trust our certificate?)",
            alert_text(a)
        ),
        Some(Error::PeerIncompatible(p)) => format!("the client is incompatible: {p:?}"),
        Some(Error::NoApplicationProtocol) => {
            "the client offers none of the --tls-alpn protocols".to_owned()
        }
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the client closed the connection during the handshake".to_owned()
        }
        None => e.to_string(),
    }
}

/// What `-v` shows of an established session: version, cipher suite, ALPN, and the peer's
/// chain (subject and fingerprints), one line each.
pub fn describe(state: &CommonState) -> Vec<String> {
    let version = state
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .replace('_', ".");
    let suite = state
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("?");
    let alpn = state.alpn_protocol().map_or_else(
        || "none".to_owned(),
        |p| String::from_utf8_lossy(p).into_owned(),
    );
    let mut lines = vec![format!("tls: {version}, {suite}, ALPN {alpn}")];
    for (i, der) in state.peer_certificates().unwrap_or(&[]).iter().enumerate() {
        let info = CertInfo::of(der);
        lines.push(format!(
            "tls: certificate {i}: {} (issuer {}, until {})",
            info.subject, info.issuer, info.not_after
        ));
        lines.push(format!("tls:   certificate {}", info.fingerprint));
        if let Some(spki) = info.spki {
            lines.push(format!("tls:   public key {spki}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ephemeral_server(opts: ServerOptions) -> TlsServer {
        TlsServer::new(
            &ServerOptions {
                ephemeral: true,
                ..opts
            },
            "127.0.0.1",
        )
        .unwrap()
    }

    async fn handshake(
        server: &TlsServer,
        client: &TlsClient,
        host: &str,
    ) -> (Result<(), TlsError>, Result<Vec<String>, TlsError>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (s, c) = tokio::join!(server.accept(a), client.connect(host, b));
        (s.map(|_| ()), c.map(|c| describe(c.get_ref().1)))
    }

    #[tokio::test]
    async fn pins_of_certificate_and_key_are_accepted_and_others_refused() {
        let server = ephemeral_server(ServerOptions::default());
        for pin in [server.leaf.fingerprint, server.leaf.spki.unwrap()] {
            let client = TlsClient::new(&ClientOptions {
                pins: vec![Pin(pin)],
                ..Default::default()
            })
            .unwrap();
            let (s, c) = handshake(&server, &client, "127.0.0.1").await;
            s.unwrap();
            let lines = c.unwrap();
            assert!(lines[0].starts_with("tls: TLSv1.3, TLS13_"), "{lines:?}");
        }
        let client = TlsClient::new(&ClientOptions {
            pins: vec![Pin(Fingerprint::of(b"other"))],
            ..Default::default()
        })
        .unwrap();
        let (_, c) = handshake(&server, &client, "127.0.0.1").await;
        let err = c.unwrap_err().to_string();
        assert!(err.contains("pin mismatch"), "{err}");
        assert!(err.contains(&server.leaf.fingerprint.to_string()), "{err}");
    }

    #[tokio::test]
    async fn self_signed_is_refused_by_ca_check_and_wrong_name_explained() {
        let server = ephemeral_server(ServerOptions::default());
        let client = TlsClient::new(&ClientOptions::default());
        // No system roots on a minimal machine is a clear error too.
        if let Ok(client) = client {
            let (_, c) = handshake(&server, &client, "localhost").await;
            let err = c.unwrap_err().to_string();
            assert!(err.contains("not signed by a trusted CA"), "{err}");
        }
        // Trusting the certificate itself as a CA: right name passes, wrong name explained.
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = cert::stored(dir.path(), "127.0.0.1").unwrap();
        let pem = std::fs::read_to_string(dir.path().join("default.crt")).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pem).unwrap();
        let key = dir.path().join("default.key");
        let server = TlsServer::new(
            &ServerOptions {
                cert: Some(ca.clone()),
                key: Some(key),
                ..Default::default()
            },
            "127.0.0.1",
        )
        .unwrap();
        assert_eq!(server.leaf.fingerprint, Fingerprint::of(&id.chain[0]));
        let client = TlsClient::new(&ClientOptions {
            ca: Some(ca),
            ..Default::default()
        })
        .unwrap();
        let (s, c) = handshake(&server, &client, "localhost").await;
        s.unwrap();
        c.unwrap();
        let (_, c) = handshake(&server, &client, "example.org").await;
        let err = c.unwrap_err().to_string();
        assert!(
            err.contains("not valid for the name \"example.org\""),
            "{err}"
        );
        assert!(err.contains("localhost"), "{err}");
    }

    #[tokio::test]
    async fn plaintext_client_is_explained_and_timeout_applies() {
        use tokio::io::AsyncWriteExt;
        let server = ephemeral_server(ServerOptions {
            handshake_timeout: Duration::from_millis(200),
            ..Default::default()
        });
        let (a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let err = server.accept(a).await.unwrap_err().to_string();
        assert!(err.contains("does not speak TLS"), "{err}");
        let (a, _b) = tokio::io::duplex(4096);
        let err = server.accept(a).await.unwrap_err();
        assert!(matches!(err, TlsError::Timeout(_)), "{err}");
    }

    #[test]
    fn banner_has_fingerprints_and_a_connect_line() {
        let server = ephemeral_server(ServerOptions::default());
        let lines = server.banner("::1", 4433, "").join("\n");
        assert!(
            lines.contains(&server.leaf.fingerprint.colon_hex()),
            "{lines}"
        );
        assert!(
            lines.contains(&format!(
                "sockit connect [::1] 4433 --tls --tls-pin {}",
                server.leaf.spki.unwrap()
            )),
            "{lines}"
        );
    }
}
