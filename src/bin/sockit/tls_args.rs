//! The `--tls-*` flags: the server set (`serve`), the client set (`connect`, `bench`), and the
//! relay's, where the side written with `tls:` takes `--tls-*` and, with TLS on both sides,
//! `--listen-tls-*` and `--target-tls-*` say which.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use sockit::tls::{ClientOptions, Pin, ServerOptions, TlsClient, TlsServer};

fn parse_pin(s: &str) -> Result<Pin, String> {
    s.parse()
}

fn parse_alpn(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 {
        Err("an ALPN protocol name is 1 to 255 bytes".into())
    } else {
        Ok(s.to_owned())
    }
}

/// `serve --tls` and its settings.
#[derive(Debug, Args, Clone, Default)]
pub struct ServeTls {
    /// Serve over TLS (also: a tls:HOST:PORT address). Without --tls-cert, a certificate is
    /// generated and kept in the data directory; the banner shows its fingerprints
    #[arg(long, help_heading = "TLS")]
    pub tls: bool,
    /// The server's certificate chain (PEM, leaf first)
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CAs in FILE (mutual TLS)
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_client_ca: Option<PathBuf>,
    /// Generate a throwaway certificate instead of keeping one (its pin changes every run)
    #[arg(long, conflicts_with = "tls_cert", help_heading = "TLS")]
    pub tls_ephemeral: bool,
    /// Offer this ALPN protocol (repeat for more, most preferred first)
    #[arg(long, value_name = "PROTO", value_parser = parse_alpn, help_heading = "TLS")]
    pub tls_alpn: Vec<String>,
    /// Close a connection whose handshake is not done in this long (30, 500ms, 2s) [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_positive_secs, help_heading = "TLS")]
    pub tls_handshake_timeout: Option<std::time::Duration>,
}

impl ServeTls {
    /// Whether any TLS setting is given (they need --tls or a tls: address).
    pub fn any_setting(&self) -> bool {
        self.tls_cert.is_some()
            || self.tls_client_ca.is_some()
            || self.tls_ephemeral
            || !self.tls_alpn.is_empty()
            || self.tls_handshake_timeout.is_some()
    }

    /// The library's options.
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
            ephemeral: self.tls_ephemeral,
            alpn: self.tls_alpn.clone(),
            handshake_timeout: self
                .tls_handshake_timeout
                .unwrap_or(sockit::tls::DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// The TLS server when `enabled` (by --tls or the address), else `None`; settings without
    /// TLS are an error.
    pub fn build(&self, enabled: bool, listen_host: &str) -> anyhow::Result<Option<TlsServer>> {
        let enabled = enabled || self.tls;
        if !enabled {
            if self.any_setting() {
                anyhow::bail!("--tls-* settings need --tls (or a tls:HOST:PORT address)");
            }
            return Ok(None);
        }
        Ok(Some(TlsServer::new(&self.options(), listen_host)?))
    }
}

/// `connect --tls` / `bench --tls` and their settings.
#[derive(Debug, Args, Clone, Default)]
pub struct ClientTls {
    /// Connect over TLS (also: a tls:HOST:PORT address); the server's certificate is checked
    /// against the system's CAs and the name typed
    #[arg(long, help_heading = "TLS")]
    pub tls: bool,
    /// Trust the CAs in FILE (PEM) instead of the system's
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_ca: Option<PathBuf>,
    /// Do not check the server's certificate at all (said loudly on stderr)
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_pin"], help_heading = "TLS")]
    pub tls_insecure: bool,
    /// Accept only a server whose certificate or public key has this SHA-256 (sha256:HEX, any
    /// case, colons optional; repeatable); replaces the CA and name checks
    #[arg(long, value_name = "sha256:HEX", value_parser = parse_pin, conflicts_with = "tls_ca", help_heading = "TLS")]
    pub tls_pin: Vec<Pin>,
    /// The server name to send (SNI) and check, instead of the host typed
    #[arg(long, value_name = "NAME", help_heading = "TLS")]
    pub tls_sni: Option<String>,
    /// Offer this ALPN protocol (repeat for more, most preferred first)
    #[arg(long, value_name = "PROTO", value_parser = parse_alpn, help_heading = "TLS")]
    pub tls_alpn: Vec<String>,
    /// A client certificate chain (PEM), for servers that require one
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether any TLS setting is given (they need --tls or a tls: address).
    pub fn any_setting(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_insecure
            || !self.tls_pin.is_empty()
            || self.tls_sni.is_some()
            || !self.tls_alpn.is_empty()
            || self.tls_cert.is_some()
    }

    /// The library's options.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            ca: self.tls_ca.clone(),
            insecure: self.tls_insecure,
            pins: self.tls_pin.clone(),
            sni: self.tls_sni.clone(),
            alpn: self.tls_alpn.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ..ClientOptions::default()
        }
    }

    /// The TLS client when `enabled` (by --tls or the address), else `None`; settings without
    /// TLS are an error. `--tls-insecure` is announced on stderr here.
    pub fn build(&self, enabled: bool, resume: bool) -> anyhow::Result<Option<Arc<TlsClient>>> {
        let enabled = enabled || self.tls;
        if !enabled {
            if self.any_setting() {
                anyhow::bail!("--tls-* settings need --tls (or a tls:HOST:PORT address)");
            }
            return Ok(None);
        }
        build_client(&self.options(), resume).map(Some)
    }
}

fn build_client(options: &ClientOptions, resume: bool) -> anyhow::Result<Arc<TlsClient>> {
    if options.insecure {
        sockit::logging::stderr_line(sockit::tls::INSECURE_WARNING);
    }
    Ok(Arc::new(TlsClient::new(&ClientOptions {
        resume,
        ..options.clone()
    })?))
}

/// The relay's TLS server (a tls: LISTEN) and client (a tls: TARGET).
pub type RelaySides = (Option<Arc<TlsServer>>, Option<Arc<TlsClient>>);

/// `relay`'s TLS flags.
#[derive(Debug, Args, Clone, Default)]
pub struct RelayTls {
    /// tls: LISTEN: the certificate chain clients see (PEM); without it one is generated
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
    /// tls: LISTEN: require client certificates signed by the CAs in FILE
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_client_ca: Option<PathBuf>,
    /// tls: LISTEN: a throwaway certificate instead of a kept one
    #[arg(long, help_heading = "TLS")]
    pub tls_ephemeral: bool,
    /// tls: TARGET: trust the CAs in FILE instead of the system's
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_ca: Option<PathBuf>,
    /// tls: TARGET: do not check its certificate (said loudly)
    #[arg(long, help_heading = "TLS")]
    pub tls_insecure: bool,
    /// tls: TARGET: accept only this certificate or public key (sha256:HEX; repeatable)
    #[arg(long, value_name = "sha256:HEX", value_parser = parse_pin, help_heading = "TLS")]
    pub tls_pin: Vec<Pin>,
    /// tls: TARGET: the name to send and check instead of the target's host
    #[arg(long, value_name = "NAME", help_heading = "TLS")]
    pub tls_sni: Option<String>,
    /// The tls: side's ALPN protocols (repeatable)
    #[arg(long, value_name = "PROTO", value_parser = parse_alpn, help_heading = "TLS")]
    pub tls_alpn: Vec<String>,

    /// With TLS on both sides: the LISTEN side's certificate (PEM)
    #[arg(
        long,
        value_name = "FILE",
        requires = "listen_tls_key",
        help_heading = "TLS"
    )]
    pub listen_tls_cert: Option<PathBuf>,
    /// The private key of --listen-tls-cert
    #[arg(
        long,
        value_name = "FILE",
        requires = "listen_tls_cert",
        help_heading = "TLS"
    )]
    pub listen_tls_key: Option<PathBuf>,
    /// The LISTEN side requires client certificates from these CAs
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub listen_tls_client_ca: Option<PathBuf>,
    /// The LISTEN side uses a throwaway certificate
    #[arg(long, help_heading = "TLS")]
    pub listen_tls_ephemeral: bool,
    /// The LISTEN side's ALPN protocols
    #[arg(long, value_name = "PROTO", value_parser = parse_alpn, help_heading = "TLS")]
    pub listen_tls_alpn: Vec<String>,
    /// The TARGET side trusts these CAs
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub target_tls_ca: Option<PathBuf>,
    /// The TARGET's certificate is not checked
    #[arg(long, help_heading = "TLS")]
    pub target_tls_insecure: bool,
    /// The TARGET's certificate or public key pin (sha256:HEX)
    #[arg(long, value_name = "sha256:HEX", value_parser = parse_pin, help_heading = "TLS")]
    pub target_tls_pin: Vec<Pin>,
    /// The name sent to and checked against the TARGET
    #[arg(long, value_name = "NAME", help_heading = "TLS")]
    pub target_tls_sni: Option<String>,
    /// The TARGET side's ALPN protocols
    #[arg(long, value_name = "PROTO", value_parser = parse_alpn, help_heading = "TLS")]
    pub target_tls_alpn: Vec<String>,
    /// A client certificate for the TARGET (PEM)
    #[arg(
        long,
        value_name = "FILE",
        requires = "target_tls_key",
        help_heading = "TLS"
    )]
    pub target_tls_cert: Option<PathBuf>,
    /// The private key of --target-tls-cert
    #[arg(
        long,
        value_name = "FILE",
        requires = "target_tls_cert",
        help_heading = "TLS"
    )]
    pub target_tls_key: Option<PathBuf>,
}

impl RelayTls {
    /// The generic flags only a TLS server takes (--tls-cert is either side's certificate).
    fn generic_server(&self) -> bool {
        self.tls_client_ca.is_some() || self.tls_ephemeral
    }

    fn generic_client(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_insecure
            || !self.tls_pin.is_empty()
            || self.tls_sni.is_some()
    }

    fn listen_set(&self) -> bool {
        self.listen_tls_cert.is_some()
            || self.listen_tls_client_ca.is_some()
            || self.listen_tls_ephemeral
            || !self.listen_tls_alpn.is_empty()
    }

    fn target_set(&self) -> bool {
        self.target_tls_ca.is_some()
            || self.target_tls_insecure
            || !self.target_tls_pin.is_empty()
            || self.target_tls_sni.is_some()
            || !self.target_tls_alpn.is_empty()
            || self.target_tls_cert.is_some()
    }

    /// The TLS sides of a relay whose LISTEN (`listen_tls`) and TARGET (`target_tls`) are or
    /// are not `tls:`; flags that fit no TLS side are errors.
    pub fn build(
        &self,
        listen_tls: bool,
        target_tls: bool,
        listen_host: &str,
    ) -> anyhow::Result<RelaySides> {
        let generic = self.generic_server()
            || self.generic_client()
            || self.tls_cert.is_some()
            || !self.tls_alpn.is_empty();
        if listen_tls && target_tls && generic {
            anyhow::bail!(
                "TLS on both sides: say which side a setting is for with --listen-tls-* or --target-tls-*"
            );
        }
        if !listen_tls && (self.listen_set() || (self.generic_server() && !target_tls)) {
            anyhow::bail!("TLS server settings need a tls: LISTEN address");
        }
        if !target_tls && (self.target_set() || (self.generic_client() && !listen_tls)) {
            anyhow::bail!("TLS client settings need a tls: TARGET address");
        }
        if listen_tls && !target_tls && self.generic_client() {
            anyhow::bail!(
                "--tls-ca/--tls-insecure/--tls-pin/--tls-sni are for a tls: TARGET, and TARGET is not tls:"
            );
        }
        if target_tls && !listen_tls && self.generic_server() {
            anyhow::bail!(
                "--tls-client-ca/--tls-ephemeral are for a tls: LISTEN address, and LISTEN is not tls:"
            );
        }
        if !listen_tls && !target_tls && (generic || self.tls_key.is_some()) {
            anyhow::bail!("--tls-* settings need a tls: LISTEN or TARGET address");
        }
        let server = if listen_tls {
            let options = if target_tls {
                ServerOptions {
                    cert: self.listen_tls_cert.clone(),
                    key: self.listen_tls_key.clone(),
                    client_ca: self.listen_tls_client_ca.clone(),
                    ephemeral: self.listen_tls_ephemeral,
                    alpn: self.listen_tls_alpn.clone(),
                    ..ServerOptions::default()
                }
            } else {
                ServerOptions {
                    cert: self.tls_cert.clone().or(self.listen_tls_cert.clone()),
                    key: self.tls_key.clone().or(self.listen_tls_key.clone()),
                    client_ca: self
                        .tls_client_ca
                        .clone()
                        .or(self.listen_tls_client_ca.clone()),
                    ephemeral: self.tls_ephemeral || self.listen_tls_ephemeral,
                    alpn: [self.tls_alpn.clone(), self.listen_tls_alpn.clone()].concat(),
                    ..ServerOptions::default()
                }
            };
            Some(Arc::new(TlsServer::new(&options, listen_host)?))
        } else {
            None
        };
        let client = if target_tls {
            let options = if listen_tls {
                ClientOptions {
                    ca: self.target_tls_ca.clone(),
                    insecure: self.target_tls_insecure,
                    pins: self.target_tls_pin.clone(),
                    sni: self.target_tls_sni.clone(),
                    alpn: self.target_tls_alpn.clone(),
                    cert: self.target_tls_cert.clone(),
                    key: self.target_tls_key.clone(),
                    ..ClientOptions::default()
                }
            } else {
                ClientOptions {
                    ca: self.tls_ca.clone().or(self.target_tls_ca.clone()),
                    insecure: self.tls_insecure || self.target_tls_insecure,
                    pins: [self.tls_pin.clone(), self.target_tls_pin.clone()].concat(),
                    sni: self.tls_sni.clone().or(self.target_tls_sni.clone()),
                    alpn: [self.tls_alpn.clone(), self.target_tls_alpn.clone()].concat(),
                    cert: self.tls_cert.clone().or(self.target_tls_cert.clone()),
                    key: self.tls_key.clone().or(self.target_tls_key.clone()),
                    ..ClientOptions::default()
                }
            };
            if options.insecure && (options.ca.is_some() || !options.pins.is_empty()) {
                anyhow::bail!("--tls-insecure contradicts --tls-ca and --tls-pin");
            }
            Some(build_client(&options, true)?)
        } else {
            None
        };
        Ok((server, client))
    }
}
