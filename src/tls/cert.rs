//! Certificates: SHA-256 fingerprints (of a certificate and of its public key), the
//! `sha256:HEX` pins that name them, PEM loading, and the self-signed ECDSA P-256 certificate
//! `serve --tls` makes when it is given none — kept in the user's data directory so that a pin
//! survives restarts.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

/// A SHA-256 digest of a DER certificate or of its SubjectPublicKeyInfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, no separators (the form of a pin).
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Uppercase hex with colons, as `openssl x509 -fingerprint -sha256` prints it.
    pub fn colon_hex(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl fmt::Display for Fingerprint {
    /// `sha256:` and lowercase hex: what `--tls-pin` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// A `--tls-pin`: `sha256:HEX`, the fingerprint of a certificate or of its public key.
///
/// The hex may be in any case, with or without colons between bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin(pub Fingerprint);

impl FromStr for Pin {
    type Err = String;

    fn from_str(s: &str) -> Result<Pin, String> {
        let s = s.trim();
        let hex = match s.split_once(':') {
            Some((alg, rest)) if alg.eq_ignore_ascii_case("sha256") => rest,
            _ => {
                return Err(format!(
                    "{s:?} is not a pin: write sha256:HEX (the fingerprint of the certificate or of its public key)"
                ));
            }
        };
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(format!(
                "a sha256 pin has 64 hex digits, {s:?} has {}",
                digits.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("{s:?} is not a sha256 pin: not a hex digit in it")),
            }
        }
        Ok(Pin(Fingerprint(out)))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What sockit shows of one certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The subject distinguished name (`CN=localhost`), or `?` if it does not parse.
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// The end of the validity period (RFC 2822-ish, as x509-parser prints it).
    pub not_after: String,
    /// SHA-256 of the whole DER certificate.
    pub fingerprint: Fingerprint,
    /// SHA-256 of the DER SubjectPublicKeyInfo (the public key), if the certificate parses.
    pub spki: Option<Fingerprint>,
}

impl CertInfo {
    /// Reads what can be read from a DER certificate; never fails (unparsable parts show `?`).
    pub fn of(der: &[u8]) -> CertInfo {
        let fingerprint = Fingerprint::of(der);
        match X509Certificate::from_der(der) {
            Ok((_, cert)) => CertInfo {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                not_after: cert.validity().not_after.to_string(),
                fingerprint,
                spki: Some(Fingerprint::of(cert.public_key().raw)),
            },
            Err(_) => CertInfo {
                subject: "?".into(),
                issuer: "?".into(),
                not_after: "?".into(),
                fingerprint,
                spki: None,
            },
        }
    }
}

/// The names (DNS and IP) a DER certificate is valid for, for error messages.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names
}

/// Reads every certificate of a PEM file (`--tls-cert`, `--tls-ca`, `--tls-client-ca`).
pub fn load_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Config(format!("{flag} {}: {reason}", path.display()));
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (`--tls-key`): PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bad = |reason: String| TlsError::Config(format!("{flag} {}: {reason}", path.display()));
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => bad("no PRIVATE KEY block in it".into()),
        e => bad(format!("not a PEM private key ({e})")),
    })
}

/// A certificate and its key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// Where `serve --tls` got its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// `--tls-cert FILE`.
    Given(PathBuf),
    /// Generated earlier and read back from this file.
    Stored(PathBuf),
    /// Generated now and saved to this file.
    Created(PathBuf),
    /// Generated now, kept in memory only (`--tls-ephemeral`).
    Ephemeral,
}

/// The directory generated certificates are kept in: `$XDG_DATA_HOME/sockit/tls`, else
/// `$HOME/.local/share/sockit/tls`.
pub fn store_dir() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/share"))
        })?;
    Some(data.join("sockit").join("tls"))
}

/// The names a generated certificate covers: localhost, 127.0.0.1, ::1, and the listening host
/// (for a loopback or wildcard listen, this machine's host name), and the file stem it is kept
/// under.
///
/// Loopback and wildcard listens share the stem `default`; any other host gets its own file,
/// so that each keeps one certificate (and one pin) across restarts.
pub fn names_for(listen_host: &str) -> (Vec<String>, String) {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let host = listen_host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<std::net::IpAddr>().ok();
    let shared = host.is_empty()
        || host.eq_ignore_ascii_case("localhost")
        || ip.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified());
    let extra = if shared {
        machine_host_name()
    } else {
        Some(host.to_ascii_lowercase())
    };
    if let Some(extra) = extra {
        if !names.contains(&extra) {
            names.push(extra);
        }
    }
    let stem = if shared {
        "default".to_owned()
    } else {
        host.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    (names, stem)
}

/// This machine's host name, if it is a usable DNS name.
fn machine_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(name)
}

/// Makes a self-signed ECDSA P-256 certificate for `names`, valid from yesterday for ten years.
pub fn generate(names: &[String]) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Config(format!("cannot generate a certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, names[0].clone());
    dn.push(rcgen::DnType::OrganizationName, "sockit");
    params.distinguished_name = dn;
    let now = chrono::Utc::now();
    let from = now - chrono::Duration::days(1);
    let until = now + chrono::Duration::days(3650);
    use chrono::Datelike;
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(until.year(), until.month() as u8, until.day() as u8);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Turns PEM text (a certificate and a key) into an [`Identity`].
fn identity_from_pem(cert_pem: &str, key_pem: &str) -> Option<Identity> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    if chain.is_empty() {
        return None;
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
    Some(Identity { chain, key })
}

/// A throwaway certificate for `listen_host` (`--tls-ephemeral`).
pub fn ephemeral(listen_host: &str) -> Result<Identity, TlsError> {
    let (names, _) = names_for(listen_host);
    let (cert, key) = generate(&names)?;
    identity_from_pem(&cert, &key)
        .ok_or_else(|| TlsError::Config("a generated certificate did not read back".into()))
}

/// The kept certificate for `listen_host` in `dir`: read back if it is there, still valid and
/// covers the names; else generated and saved (the key with mode 0600, the directory 0700).
pub fn stored(dir: &Path, listen_host: &str) -> Result<(Identity, CertSource), TlsError> {
    let (names, stem) = names_for(listen_host);
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    if let (Ok(cert), Ok(key)) = (
        fs::read_to_string(&cert_path),
        fs::read_to_string(&key_path),
    ) {
        match identity_from_pem(&cert, &key) {
            Some(id) if still_good(&id, &names) => return Ok((id, CertSource::Stored(cert_path))),
            _ => tracing::warn!(
                "{} is unreadable, expired or lacks a name: making a new certificate (its fingerprint changes)",
                cert_path.display()
            ),
        }
    }
    let (cert, key) = generate(&names)?;
    let id = identity_from_pem(&cert, &key)
        .ok_or_else(|| TlsError::Config("a generated certificate did not read back".into()))?;
    save(dir, &cert_path, &key_path, &cert, &key).map_err(|e| {
        TlsError::Config(format!(
            "cannot keep the certificate in {}: {e} (use --tls-ephemeral, or set XDG_DATA_HOME)",
            dir.display()
        ))
    })?;
    Ok((id, CertSource::Created(cert_path)))
}

/// Whether a kept certificate is in its validity period for the next day and names `names`.
fn still_good(id: &Identity, names: &[String]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(&id.chain[0]) else {
        return false;
    };
    let Ok(tomorrow) =
        x509_parser::time::ASN1Time::from_timestamp(chrono::Utc::now().timestamp() + 86_400)
    else {
        return false;
    };
    if cert.validity().not_after < tomorrow {
        return false;
    }
    let have = cert_names(&id.chain[0]);
    let key_ok = match &id.key {
        PrivateKeyDer::Pkcs8(k) => rcgen::KeyPair::try_from(k.secret_pkcs8_der())
            .is_ok_and(|kp| kp.public_key_raw() == &*cert.public_key().subject_public_key.data),
        _ => false,
    };
    key_ok && names.iter().all(|n| have.iter().any(|h| h == n))
}

fn save(dir: &Path, cert_path: &Path, key_path: &Path, cert: &str, key: &str) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let write = |path: &Path, text: &str, mode: u32| -> io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write(key_path, key, 0o600)?;
    write(cert_path, cert, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_take_any_case_and_colons() {
        let fp = Fingerprint::of(b"x");
        let plain: Pin = format!("sha256:{}", fp.hex()).parse().unwrap();
        let colons: Pin = format!("SHA256:{}", fp.colon_hex()).parse().unwrap();
        assert_eq!(plain.0, fp);
        assert_eq!(colons.0, fp);
        assert!("sha1:00".parse::<Pin>().is_err());
        assert!("sha256:00".parse::<Pin>().is_err());
        assert!(
            format!("sha256:{}", "zz".repeat(32))
                .parse::<Pin>()
                .is_err()
        );
        assert_eq!(fp.to_string(), format!("sha256:{}", fp.hex()));
    }

    #[test]
    fn generated_certificate_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("tls");
        let (first, src1) = stored(&store, "127.0.0.1").unwrap();
        assert!(matches!(src1, CertSource::Created(_)));
        let (second, src2) = stored(&store, "0.0.0.0").unwrap();
        assert!(matches!(src2, CertSource::Stored(_)), "{src2:?}");
        assert_eq!(first.chain[0], second.chain[0]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.join("default.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let names = cert_names(&first.chain[0]);
        for n in ["localhost", "127.0.0.1", "::1"] {
            assert!(names.iter().any(|h| h == n), "{names:?}");
        }
        // Another host gets its own certificate, naming it.
        let (other, _) = stored(&store, "myhost.example").unwrap();
        assert_ne!(other.chain[0], first.chain[0]);
        assert!(cert_names(&other.chain[0]).contains(&"myhost.example".to_owned()));
        // A damaged file is replaced.
        fs::write(store.join("default.crt"), "garbage").unwrap();
        let (third, src3) = stored(&store, "localhost").unwrap();
        assert!(matches!(src3, CertSource::Created(_)));
        assert_ne!(third.chain[0], first.chain[0]);
    }

    #[test]
    fn cert_info_reads_subject_and_key_fingerprint() {
        let id = ephemeral("::1").unwrap();
        let info = CertInfo::of(&id.chain[0]);
        assert!(info.subject.contains("localhost"), "{}", info.subject);
        assert!(info.spki.is_some());
        assert_ne!(info.spki, Some(info.fingerprint));
        assert_eq!(CertInfo::of(b"junk").subject, "?");
    }
}
