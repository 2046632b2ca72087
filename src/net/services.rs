//! The embedded table of well-known services behind `sockit port`: a few hundred common
//! registrations (name, port, transport protocol) agreeing with IANA's Service Name and
//! Transport Protocol Port Number Registry, with sockit's own short descriptions. Nothing is
//! read from `/etc/services`.
//!
//! Also: which IANA range a port falls in, and whether it is inside this machine's ephemeral
//! (dynamic local) port range.

use std::fmt;
use std::sync::OnceLock;

use serde::Serialize;

/// The table's source: `PORT<TAB>PROTOCOLS<TAB>NAME<TAB>ALIASES<TAB>DESCRIPTION`, `#` comments.
const TABLE: &str = include_str!("services.tsv");

/// Where Linux keeps the ephemeral port range.
pub const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// A transport protocol of a service registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One registration: a service name on a port and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The registered service name (`ssh`, `domain`, …).
    pub name: &'static str,
    /// Other names people use for it (`dns` for `domain`), lower case.
    pub aliases: Vec<&'static str>,
    /// The port.
    pub port: u16,
    /// The transport protocol.
    pub protocol: Protocol,
    /// A short description.
    pub description: &'static str,
}

impl Service {
    /// Whether `name` is this service's name or one of its aliases (ignoring case).
    pub fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// Every registration in the table, sorted by port, then protocol.
pub fn table() -> &'static [Service] {
    static PARSED: OnceLock<Vec<Service>> = OnceLock::new();
    // The table is checked by a unit test; were it broken, the command would find nothing
    // rather than crash.
    PARSED.get_or_init(|| parse_table(TABLE).unwrap_or_default())
}

/// Parses the table text; the error names the line at fault.
fn parse_table(text: &'static str) -> Result<Vec<Service>, String> {
    let mut services = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&'static str> = line.split('\t').collect();
        let [port, protocols, name, aliases, description] = fields[..] else {
            return Err(format!("line {n}: expected 5 tab-separated fields"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("line {n}: bad port {port:?}"))?;
        if name.is_empty() || description.is_empty() {
            return Err(format!("line {n}: empty name or description"));
        }
        let aliases: Vec<&'static str> = aliases.split(',').filter(|a| !a.is_empty()).collect();
        for protocol in protocols.split(',') {
            let protocol = match protocol {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(format!("line {n}: unknown protocol {other:?}")),
            };
            services.push(Service {
                name,
                aliases: aliases.clone(),
                port,
                protocol,
                description,
            });
        }
    }
    services.sort_by_key(|s| (s.port, s.protocol));
    Ok(services)
}

/// The registrations on `port` (TCP first, then UDP).
pub fn by_port(port: u16) -> Vec<&'static Service> {
    table().iter().filter(|s| s.port == port).collect()
}

/// The registrations called `name` or having it as an alias (ignoring case), by port.
pub fn by_name(name: &str) -> Vec<&'static Service> {
    table().iter().filter(|s| s.is_named(name)).collect()
}

/// IANA's three port ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortRange {
    /// 0–1023: system or well-known ports.
    #[serde(rename = "well-known")]
    WellKnown,
    /// 1024–49151: user or registered ports.
    Registered,
    /// 49152–65535: dynamic or private ports, never registered.
    Dynamic,
}

impl PortRange {
    /// The range `port` falls in.
    pub fn of(port: u16) -> PortRange {
        match port {
            0..=1023 => PortRange::WellKnown,
            1024..=49151 => PortRange::Registered,
            _ => PortRange::Dynamic,
        }
    }

    /// The range's bounds.
    pub fn bounds(self) -> (u16, u16) {
        match self {
            PortRange::WellKnown => (0, 1023),
            PortRange::Registered => (1024, 49151),
            PortRange::Dynamic => (49152, 65535),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortRange::WellKnown => "well-known",
            PortRange::Registered => "registered",
            PortRange::Dynamic => "dynamic",
        })
    }
}

/// This machine's ephemeral port range (the local ports the kernel picks for outgoing
/// connections), from [`EPHEMERAL_RANGE_FILE`]; `None` where it cannot be read.
pub fn ephemeral_range() -> Option<(u16, u16)> {
    parse_ephemeral_range(&std::fs::read_to_string(EPHEMERAL_RANGE_FILE).ok()?)
}

/// Parses the two numbers of `ip_local_port_range`.
fn parse_ephemeral_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let low = numbers.next()?.ok()?;
    let high = numbers.next()?.ok()?;
    (low <= high).then_some((low, high))
}

/// What the user asked `sockit port` about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortQuery {
    /// A port number.
    Number(u16),
    /// A service name (or alias), as typed.
    Name(String),
}

/// Parses a `sockit port` argument: a number 0–65535, or a service name (a letter, then
/// letters, digits, `-`, `_`, `.`, `+` or `/`, at most 64 characters). The error says why.
pub fn parse_query(s: &str) -> Result<PortQuery, String> {
    if s.is_empty() {
        return Err("empty: give a port number or a service name".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u16>() {
            Ok(port) => Ok(PortQuery::Number(port)),
            Err(_) => Err(format!("'{s}' is out of range (ports are 0-65535)")),
        };
    }
    let first_is_letter = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-_.+/".contains(&b);
    if !first_is_letter || s.len() > 64 || !s.bytes().all(valid) {
        return Err(format!(
            "'{}' is neither a port number (0-65535) nor a service name (a letter, then letters, \
             digits, '-', '_', '.', '+' or '/')",
            s.escape_debug()
        ));
    }
    Ok(PortQuery::Name(s.to_owned()))
}

/// One service in a [`PortInfo`], as `--json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    /// The registered name.
    pub name: &'static str,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// A short description.
    pub description: &'static str,
}

/// The answer about one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    /// The argument as given.
    pub input: String,
    /// The port.
    pub port: u16,
    /// Its IANA range.
    pub range: PortRange,
    /// Whether it is inside this machine's ephemeral range; `None` (JSON `null`) when unknown.
    pub ephemeral: Option<bool>,
    /// The registrations shown: every one on the port for a number, the named ones for a name.
    pub services: Vec<ServiceEntry>,
    /// The ephemeral range it was checked against.
    #[serde(skip)]
    pub ephemeral_range: Option<(u16, u16)>,
}

/// No service of that name in the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no service named '{0}' in sockit's table (try a port number)")]
pub struct UnknownService(pub String);

/// Answers a query, one [`PortInfo`] per port (a name may be registered on several ports);
/// `ephemeral` is the machine's ephemeral range, if known.
pub fn lookup(
    query: &PortQuery,
    input: &str,
    ephemeral: Option<(u16, u16)>,
) -> Result<Vec<PortInfo>, UnknownService> {
    let info = |port: u16, services: Vec<&'static Service>| PortInfo {
        input: input.to_owned(),
        port,
        range: PortRange::of(port),
        ephemeral: ephemeral.map(|(lo, hi)| (lo..=hi).contains(&port)),
        services: services
            .into_iter()
            .map(|s| ServiceEntry {
                name: s.name,
                protocol: s.protocol,
                description: s.description,
            })
            .collect(),
        ephemeral_range: ephemeral,
    };
    match query {
        PortQuery::Number(port) => Ok(vec![info(*port, by_port(*port))]),
        PortQuery::Name(name) => {
            let found = by_name(name);
            if found.is_empty() {
                return Err(UnknownService(name.clone()));
            }
            let mut ports: Vec<u16> = found.iter().map(|s| s.port).collect();
            ports.dedup();
            Ok(ports
                .into_iter()
                .map(|port| {
                    info(
                        port,
                        found.iter().copied().filter(|s| s.port == port).collect(),
                    )
                })
                .collect())
        }
    }
}

impl fmt::Display for PortInfo {
    /// `22: well-known (0-1023), not ephemeral here (32768-60999)`, then one line per service.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = self.range.bounds();
        write!(f, "{}: {} ({lo}-{hi}), ", self.port, self.range)?;
        match (self.ephemeral, self.ephemeral_range) {
            (Some(inside), Some((elo, ehi))) => write!(
                f,
                "{} this machine's ephemeral range ({elo}-{ehi})",
                if inside { "inside" } else { "outside" }
            )?,
            _ => f.write_str("ephemeral range unknown")?,
        }
        if self.services.is_empty() {
            write!(f, "\n  no service registered on it in sockit's table")?;
        }
        let width = self
            .services
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in &self.services {
            let at = format!("{}/{}", self.port, s.protocol);
            write!(f, "\n  {at:<9} {:<width$}  {}", s.name, s.description)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_is_large() {
        let services = parse_table(TABLE).unwrap();
        assert!(services.len() >= 250, "{} entries", services.len());
        assert_eq!(table().len(), services.len());
        let mut keys: Vec<_> = services
            .iter()
            .map(|s| (s.port, s.protocol, s.name))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate entries");
    }

    #[test]
    fn well_known_facts() {
        let on = |port| -> Vec<(String, &str)> {
            by_port(port)
                .iter()
                .map(|s| (s.protocol.to_string(), s.name))
                .collect()
        };
        assert_eq!(on(22), [("tcp".into(), "ssh")]);
        assert_eq!(on(53), [("tcp".into(), "domain"), ("udp".into(), "domain")]);
        assert_eq!(on(80), [("tcp".into(), "http"), ("udp".into(), "http")]);
        assert_eq!(on(123), [("udp".into(), "ntp")]);
        assert_eq!(on(443), [("tcp".into(), "https"), ("udp".into(), "https")]);
        assert_eq!(on(3306), [("tcp".into(), "mysql")]);
        assert!(on(0).is_empty());
        assert!(on(65535).is_empty());
    }

    #[test]
    fn names_and_aliases_ignore_case() {
        assert_eq!(by_name("SSH")[0].port, 22);
        assert_eq!(by_name("dns").len(), 2);
        assert_eq!(by_name("www")[0].port, 80);
        assert_eq!(by_name("Postgres")[0].port, 5432);
        assert!(by_name("no-such-service").is_empty());
        let ircu: Vec<u16> = by_name("ircu").iter().map(|s| s.port).collect();
        assert_eq!(ircu, [6665, 6666, 6667, 6668, 6669]);
    }

    #[test]
    fn ranges_at_their_boundaries() {
        for (port, range) in [
            (0, PortRange::WellKnown),
            (1023, PortRange::WellKnown),
            (1024, PortRange::Registered),
            (49151, PortRange::Registered),
            (49152, PortRange::Dynamic),
            (65535, PortRange::Dynamic),
        ] {
            assert_eq!(PortRange::of(port), range, "{port}");
        }
    }

    #[test]
    fn ephemeral_range_file() {
        assert_eq!(
            parse_ephemeral_range("32768\t60999\n"),
            Some((32768, 60999))
        );
        assert_eq!(parse_ephemeral_range("1 2"), Some((1, 2)));
        for bad in ["", "5", "x y", "70000 1", "9 8"] {
            assert_eq!(parse_ephemeral_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries() {
        assert_eq!(parse_query("80"), Ok(PortQuery::Number(80)));
        assert_eq!(parse_query("0"), Ok(PortQuery::Number(0)));
        assert_eq!(parse_query("ssh"), Ok(PortQuery::Name("ssh".into())));
        assert!(parse_query("65536").unwrap_err().contains("out of range"));
        for bad in ["", "-1", "8o", "a b", "1ssh", "ssh!"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookups_both_ways() {
        let range = Some((32768, 60999));
        let ssh = lookup(&PortQuery::Name("ssh".into()), "ssh", range).unwrap();
        assert_eq!(ssh.len(), 1);
        assert_eq!(ssh[0].port, 22);
        assert_eq!(ssh[0].ephemeral, Some(false));
        let high = lookup(&PortQuery::Number(40000), "40000", range).unwrap();
        assert_eq!(high[0].ephemeral, Some(true));
        assert!(high[0].services.is_empty());
        let unknown = lookup(&PortQuery::Number(40000), "40000", None).unwrap();
        assert_eq!(unknown[0].ephemeral, None);
        assert!(lookup(&PortQuery::Name("nope".into()), "nope", range).is_err());
    }
}
