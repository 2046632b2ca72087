//! `sockit ip`: what an IP address (or an address with a prefix) is — version, canonical and
//! expanded forms, historic IPv4 class, the special-purpose ranges it falls in, the IPv4
//! address embedded in IPv6 forms, and the prefix arithmetic (network, masks, hosts).
//!
//! Everything here is pure: [`parse_input`] turns `ADDR[/PREFIX]` into an [`IpInput`] (or an
//! [`IpInputError`] that says exactly what is wrong), and [`report`] describes it. The
//! special-purpose ranges follow IANA's IPv4 and IPv6 Special-Purpose Address Registries and
//! the IPv6 Address Space registry.
//!
//! IPv4 addresses are parsed here rather than by the standard library, so that the error can
//! name the octet at fault, and so that leading zeros (`010.0.0.1`: octal 8 to some tools,
//! decimal 10 to others) are refused rather than guessed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// One special-purpose category an address can fall in. [`Kind::as_str`] gives its name in
/// the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `fc00::/7`.
    UniqueLocal,
    /// `100.64.0.0/10` (carrier-grade NAT).
    Shared,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Documentation ranges (TEST-NET-1/2/3, MCAST-TEST-NET, `2001:db8::/32`, `3fff::/20`).
    Documentation,
    /// Benchmarking: `198.18/15`, `2001:2::/48`.
    Benchmarking,
    /// Reserved or not globally reachable for another reason (`240/4`, `0/8`, …).
    Reserved,
    /// None of the special-purpose ranges.
    Global,
    /// `::ffff:0:0/96`.
    Ipv4Mapped,
    /// `2002::/16`.
    SixToFour,
    /// `64:ff9b::/96`.
    Nat64,
    /// `2001::/32`.
    Teredo,
}

impl Kind {
    /// The name used in the output (`"unique-local"`, `"6to4"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Loopback => "loopback",
            Kind::Private => "private",
            Kind::UniqueLocal => "unique-local",
            Kind::Shared => "shared",
            Kind::LinkLocal => "link-local",
            Kind::Multicast => "multicast",
            Kind::Broadcast => "broadcast",
            Kind::Documentation => "documentation",
            Kind::Benchmarking => "benchmarking",
            Kind::Reserved => "reserved",
            Kind::Global => "global",
            Kind::Ipv4Mapped => "ipv4-mapped",
            Kind::SixToFour => "6to4",
            Kind::Nat64 => "nat64",
            Kind::Teredo => "teredo",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A range of a special-purpose table: the first address, the prefix length, and the kinds of
/// every address in it. An empty `kinds` marks a globally reachable exception inside a larger
/// special range.
#[derive(Clone, Copy, Debug)]
pub struct Range<T> {
    /// The first address of the range.
    pub base: T,
    /// The prefix length.
    pub len: u8,
    /// The kinds of its addresses (empty: global).
    pub kinds: &'static [Kind],
}

const fn r4(a: u8, b: u8, c: u8, d: u8, len: u8, kinds: &'static [Kind]) -> Range<u32> {
    Range {
        base: Ipv4Addr::new(a, b, c, d).to_bits(),
        len,
        kinds,
    }
}

const fn r6(s: [u16; 8], len: u8, kinds: &'static [Kind]) -> Range<u128> {
    let a = Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    Range {
        base: a.to_bits(),
        len,
        kinds,
    }
}

use Kind::*;

/// IPv4 special-purpose ranges, most specific first: the first range containing an address
/// decides its kinds; an address in none of them is global.
pub const IPV4_RANGES: &[Range<u32>] = &[
    r4(0, 0, 0, 0, 32, &[Unspecified]),
    r4(0, 0, 0, 0, 8, &[Reserved]), // "this network"
    r4(10, 0, 0, 0, 8, &[Private]),
    r4(100, 64, 0, 0, 10, &[Shared]),
    r4(127, 0, 0, 0, 8, &[Loopback]),
    r4(169, 254, 0, 0, 16, &[LinkLocal]),
    r4(172, 16, 0, 0, 12, &[Private]),
    r4(192, 0, 0, 9, 32, &[]),         // PCP anycast: globally reachable
    r4(192, 0, 0, 10, 32, &[]),        // TURN anycast: globally reachable
    r4(192, 0, 0, 0, 24, &[Reserved]), // IETF protocol assignments
    r4(192, 0, 2, 0, 24, &[Documentation]),
    r4(192, 88, 99, 0, 24, &[Reserved]), // deprecated 6to4 relay anycast (RFC 7526)
    r4(192, 168, 0, 0, 16, &[Private]),
    r4(198, 18, 0, 0, 15, &[Benchmarking]),
    r4(198, 51, 100, 0, 24, &[Documentation]),
    r4(203, 0, 113, 0, 24, &[Documentation]),
    r4(233, 252, 0, 0, 24, &[Multicast, Documentation]), // MCAST-TEST-NET
    r4(224, 0, 0, 0, 4, &[Multicast]),
    r4(255, 255, 255, 255, 32, &[Broadcast]),
    r4(240, 0, 0, 0, 4, &[Reserved]),
];

/// IPv6 special-purpose ranges, most specific first: the first range containing an address
/// decides its kinds. An address in none of them is global inside `2000::/3` (global unicast)
/// and reserved outside it.
pub const IPV6_RANGES: &[Range<u128>] = &[
    r6([0; 8], 128, &[Unspecified]),
    r6([0, 0, 0, 0, 0, 0, 0, 1], 128, &[Loopback]),
    r6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, &[Ipv4Mapped]),
    r6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, &[Nat64]),
    r6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, &[Reserved]), // local-use translation (RFC 8215)
    r6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, &[Reserved]),     // discard-only
    r6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, &[Reserved]),     // dummy prefix
    r6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, &[Teredo]),
    // Globally reachable assignments inside 2001::/23.
    r6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, &[]), // PCP anycast
    r6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, &[]), // TURN anycast
    r6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, &[]), // DNS-SD SRP anycast
    r6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, &[Benchmarking]),
    r6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, &[]),     // AMT
    r6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, &[]), // AS112-v6
    r6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, &[]),  // ORCHIDv2
    r6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, &[]),  // drone remote ID
    r6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, &[Reserved]), // IETF protocol assignments
    r6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, &[Documentation]),
    r6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, &[SixToFour]),
    r6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, &[Documentation]),
    r6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, &[Reserved]), // SRv6 SIDs
    r6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, &[UniqueLocal]),
    r6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, &[LinkLocal]),
    r6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, &[Reserved]), // deprecated site-local
    r6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, &[Multicast]),
];

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// The kinds of an IPv4 address, in [`Kind`] order.
pub fn kinds_v4(ip: Ipv4Addr) -> Vec<Kind> {
    let a = ip.to_bits();
    IPV4_RANGES
        .iter()
        .find(|r| a & mask4(r.len) == r.base)
        .map(|r| r.kinds)
        .filter(|k| !k.is_empty())
        .map_or_else(|| vec![Global], <[Kind]>::to_vec)
}

/// The kinds of an IPv6 address, in [`Kind`] order.
pub fn kinds_v6(ip: Ipv6Addr) -> Vec<Kind> {
    let a = ip.to_bits();
    match IPV6_RANGES.iter().find(|r| a & mask6(r.len) == r.base) {
        Some(r) if !r.kinds.is_empty() => r.kinds.to_vec(),
        Some(_) => vec![Global],
        // Only 2000::/3 is allocated for global unicast; the rest is reserved by the IETF.
        None if a >> 125 == 1 => vec![Global],
        None => vec![Reserved],
    }
}

/// The historic (classful) class of an IPv4 address: `'A'` to `'E'`.
pub fn class_v4(ip: Ipv4Addr) -> char {
    match ip.octets()[0] {
        0..=127 => 'A',
        128..=191 => 'B',
        192..=223 => 'C',
        224..=239 => 'D',
        _ => 'E',
    }
}

/// The IPv4 address embedded in an IPv4-mapped, NAT64, 6to4 or Teredo (client) address.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let a = ip.to_bits();
    let low32 = a as u32;
    match kinds_v6(ip).first()? {
        Ipv4Mapped | Nat64 => Some(Ipv4Addr::from_bits(low32)),
        SixToFour => Some(Ipv4Addr::from_bits((a >> 80) as u32)),
        // The client address is stored inverted (RFC 4380).
        Teredo => Some(Ipv4Addr::from_bits(low32 ^ 0xffff_ffff)),
        _ => None,
    }
}

/// The eight groups of an IPv6 address, each as four hex digits.
pub fn expanded_v6(ip: Ipv6Addr) -> String {
    let s = ip.segments();
    s.iter()
        .map(|g| format!("{g:04x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A parsed `ADDR[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpInput {
    /// The argument as given.
    pub input: String,
    /// The address.
    pub addr: IpAddr,
    /// The prefix length, if one was given.
    pub prefix: Option<u8>,
}

/// Why an argument is not `ADDR[/PREFIX]`; displays as `INPUT: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpInputError {
    /// The argument as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for IpInputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.input.is_empty() {
            write!(f, "empty argument: {}", self.reason)
        } else {
            write!(f, "{}: {}", self.input, self.reason)
        }
    }
}

impl std::error::Error for IpInputError {}

/// Parses a dotted-quad IPv4 address strictly: exactly four decimal octets 0-255, no leading
/// zeros, no signs or spaces. The error is the reason alone (without the input).
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return Err(format!("expected 4 octets, found {}", parts.len()));
    }
    let mut octets = [0u8; 4];
    for (i, (part, octet)) in parts.iter().zip(&mut octets).enumerate() {
        let n = i + 1;
        if part.is_empty() {
            return Err(format!("octet {n} is empty"));
        }
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("octet {n} is '{part}', not a number 0-255"));
        }
        if part.len() > 1 && part.starts_with('0') {
            return Err(format!(
                "octet {n} is {part}: a leading zero is ambiguous (octal to some tools, decimal \
                 to others), so it is refused; write it without leading zeros"
            ));
        }
        match part.parse::<u8>() {
            Ok(v) => *octet = v,
            Err(_) => return Err(format!("octet {n} is {part}, above 255")),
        }
    }
    Ok(Ipv4Addr::from(octets))
}

/// Says why `s` is not an IPv6 address (after the standard parser refused it).
fn ipv6_reason(s: &str) -> String {
    const HINT: &str = "not an IPv6 address (up to 8 groups of 1-4 hex digits separated by ':', \
                        '::' once for a run of zero groups)";
    if let Some((_, zone)) = s.split_once('%') {
        return format!("zone index '%{zone}' is not supported here: leave it out");
    }
    if s.matches("::").count() > 1 {
        return "'::' may appear only once".into();
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_hexdigit() || *c == ':' || *c == '.'))
    {
        return format!("'{c}' is not a hex digit");
    }
    let groups: Vec<&str> = s.split(':').collect();
    let last = groups.last().copied().unwrap_or("");
    if last.contains('.') {
        if let Err(why) = parse_ipv4(last) {
            return format!("embedded IPv4 part {last}: {why}");
        }
    }
    if let Some(g) = groups.iter().find(|g| !g.contains('.') && g.len() > 4) {
        return format!("group '{g}' has more than 4 hex digits");
    }
    if !s.contains("::") {
        let n = groups.len() + usize::from(last.contains('.'));
        if n != 8 {
            return format!("expected 8 groups, found {n} (use '::' for a run of zero groups)");
        }
    }
    HINT.into()
}

/// Parses one `ADDR[/PREFIX]` argument: an IPv4 address (see [`parse_ipv4`]) or an IPv6
/// address (optionally in brackets), and an optional prefix length (0-32 or 0-128).
pub fn parse_input(input: &str) -> Result<IpInput, IpInputError> {
    let err = |reason: String| IpInputError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(err("expected ADDR[/PREFIX]".into()));
    }
    let (addr_s, prefix_s) = match input.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (input, None),
    };
    if prefix_s.is_some_and(|p| p.contains('/')) {
        return Err(err("more than one '/': expected ADDR[/PREFIX]".into()));
    }
    let addr: IpAddr = if addr_s.contains(':') || addr_s.starts_with('[') {
        let inner = addr_s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(addr_s);
        match inner.parse::<Ipv6Addr>() {
            Ok(a) => a.into(),
            Err(_) => return Err(err(ipv6_reason(inner))),
        }
    } else if addr_s.is_empty() {
        return Err(err("no address before the '/'".into()));
    } else if addr_s.starts_with(|c: char| c.is_ascii_digit()) {
        // Dotted numbers, perhaps with a typo: say which octet is wrong.
        parse_ipv4(addr_s).map_err(err)?.into()
    } else {
        return Err(err(
            "not an IP address (IPv4 like 192.0.2.1, IPv6 like 2001:db8::1, optionally /PREFIX)"
                .into(),
        ));
    };
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let version = if addr.is_ipv4() { 4 } else { 6 };
    let prefix = match prefix_s {
        None => None,
        Some("") => return Err(err("the prefix after '/' is empty".into())),
        Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(err(format!("prefix '{p}' is not a number 0-{max}")));
        }
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => Some(n),
            _ => {
                return Err(err(format!(
                    "prefix /{p} is out of range: IPv{version} prefixes are 0-{max}"
                )));
            }
        },
    };
    Ok(IpInput {
        input: input.to_owned(),
        addr,
        prefix,
    })
}

/// What `sockit ip` says about one input; serialises to the `--json` object. Fields that do
/// not apply (the class of an IPv6 address, the broadcast of a /31, …) are left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpReport {
    /// The argument as given.
    pub input: String,
    /// 4 or 6.
    pub version: u8,
    /// Canonical form (IPv6: RFC 5952 compressed).
    pub address: String,
    /// IPv6: all eight groups, four hex digits each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expanded: Option<String>,
    /// IPv4: historic class, "A" to "E".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Every kind that applies.
    pub kinds: Vec<Kind>,
    /// IPv6 forms carrying an IPv4 address: that address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_ipv4: Option<String>,
    /// The prefix length, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// The network address of the prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The netmask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    /// The wildcard (host) mask: the netmask inverted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wildcard: Option<String>,
    /// IPv4 prefixes up to /30: the broadcast address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
    /// The first usable host address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_host: Option<String>,
    /// The last usable host address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_host: Option<String>,
    /// How many host addresses, as a decimal string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Whether the address is the prefix's "network" address, its "broadcast" address
    /// (IPv4), or a "host".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
}

/// The prefix facts of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PrefixFacts {
    network: String,
    netmask: String,
    wildcard: String,
    broadcast: Option<String>,
    first_host: String,
    last_host: String,
    hosts: String,
    role: &'static str,
}

fn prefix_v4(ip: Ipv4Addr, len: u8) -> PrefixFacts {
    let a = ip.to_bits();
    let mask = mask4(len);
    let net = a & mask;
    let last = net | !mask;
    let show = |x: u32| Ipv4Addr::from_bits(x).to_string();
    let (first_host, last_host, hosts, broadcast) = match len {
        32 => (net, net, 1u64, None),
        // RFC 3021: both addresses of a /31 are hosts; there is no broadcast.
        31 => (net, last, 2, None),
        _ => (net + 1, last - 1, (1u64 << (32 - len)) - 2, Some(last)),
    };
    let role = if len <= 30 && a == net {
        "network"
    } else if len <= 30 && a == last {
        "broadcast"
    } else {
        "host"
    };
    PrefixFacts {
        network: show(net),
        netmask: show(mask),
        wildcard: show(!mask),
        broadcast: broadcast.map(show),
        first_host: show(first_host),
        last_host: show(last_host),
        hosts: hosts.to_string(),
        role,
    }
}

fn prefix_v6(ip: Ipv6Addr, len: u8) -> PrefixFacts {
    let a = ip.to_bits();
    let mask = mask6(len);
    let net = a & mask;
    let last = net | !mask;
    let show = |x: u128| Ipv6Addr::from_bits(x).to_string();
    let hosts = match 1u128.checked_shl(128 - u32::from(len)) {
        Some(n) if len > 0 => n.to_string(),
        // 2^128 does not fit in a u128.
        _ => "340282366920938463463374607431768211456".to_owned(),
    };
    // The network address (the subnet-router anycast address, RFC 4291) is also counted among
    // the hosts; in a /127 (RFC 6164) or /128 every address is simply a host.
    let role = if len < 127 && a == net {
        "network"
    } else {
        "host"
    };
    PrefixFacts {
        network: show(net),
        netmask: show(mask),
        wildcard: show(!mask),
        broadcast: None,
        first_host: show(net),
        last_host: show(last),
        hosts,
        role,
    }
}

/// Describes a parsed input.
pub fn report(input: &IpInput) -> IpReport {
    let (version, address, expanded, class, kinds, embedded, facts) = match input.addr {
        IpAddr::V4(ip) => (
            4,
            ip.to_string(),
            None,
            Some(class_v4(ip).to_string()),
            kinds_v4(ip),
            None,
            input.prefix.map(|p| prefix_v4(ip, p)),
        ),
        IpAddr::V6(ip) => (
            6,
            ip.to_string(),
            Some(expanded_v6(ip)),
            None,
            kinds_v6(ip),
            embedded_ipv4(ip).map(|e| e.to_string()),
            input.prefix.map(|p| prefix_v6(ip, p)),
        ),
    };
    let facts = facts.as_ref();
    IpReport {
        input: input.input.clone(),
        version,
        address,
        expanded,
        class,
        kinds,
        embedded_ipv4: embedded,
        prefix: input.prefix,
        network: facts.map(|f| f.network.clone()),
        netmask: facts.map(|f| f.netmask.clone()),
        wildcard: facts.map(|f| f.wildcard.clone()),
        broadcast: facts.and_then(|f| f.broadcast.clone()),
        first_host: facts.map(|f| f.first_host.clone()),
        last_host: facts.map(|f| f.last_host.clone()),
        hosts: facts.map(|f| f.hosts.clone()),
        role: facts.map(|f| f.role),
    }
}

impl fmt::Display for IpReport {
    /// Aligned `field: value` lines, one per fact that applies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
        let network = self
            .network
            .as_ref()
            .zip(self.prefix)
            .map(|(n, p)| format!("{n}/{p}"));
        let lines: [(&str, Option<String>); 15] = [
            ("input", Some(self.input.clone())),
            ("version", Some(format!("IPv{}", self.version))),
            ("address", Some(self.address.clone())),
            ("expanded", self.expanded.clone()),
            ("class", self.class.clone()),
            ("kinds", Some(kinds.join(", "))),
            ("embedded IPv4", self.embedded_ipv4.clone()),
            ("network", network),
            ("netmask", self.netmask.clone()),
            ("wildcard", self.wildcard.clone()),
            ("broadcast", self.broadcast.clone()),
            ("first host", self.first_host.clone()),
            ("last host", self.last_host.clone()),
            ("hosts", self.hosts.clone()),
            ("address is", self.role.map(|r| format!("the {r} address"))),
        ];
        // The same column for every input, so that consecutive reports line up.
        let width = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        let mut first = true;
        for (key, value) in &lines {
            let Some(value) = value else { continue };
            if !first {
                writeln!(f)?;
            }
            first = false;
            let label = format!("{key}:");
            write!(f, "{label:<width$} {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<&'static str> {
        let input = parse_input(s).unwrap_or_else(|e| panic!("{e}"));
        report(&input).kinds.iter().map(|k| k.as_str()).collect()
    }

    /// Every special range: its first and last address, and the addresses just outside.
    #[test]
    fn ipv4_ranges_and_their_boundaries() {
        let cases: &[(&str, &[&str])] = &[
            ("0.0.0.0", &["unspecified"]),
            ("0.0.0.1", &["reserved"]),
            ("0.255.255.255", &["reserved"]),
            ("1.0.0.0", &["global"]),
            ("9.255.255.255", &["global"]),
            ("10.0.0.0", &["private"]),
            ("10.255.255.255", &["private"]),
            ("11.0.0.0", &["global"]),
            ("100.63.255.255", &["global"]),
            ("100.64.0.0", &["shared"]),
            ("100.127.255.255", &["shared"]),
            ("100.128.0.0", &["global"]),
            ("126.255.255.255", &["global"]),
            ("127.0.0.0", &["loopback"]),
            ("127.0.0.1", &["loopback"]),
            ("127.255.255.255", &["loopback"]),
            ("128.0.0.0", &["global"]),
            ("169.253.255.255", &["global"]),
            ("169.254.0.0", &["link-local"]),
            ("169.254.255.255", &["link-local"]),
            ("169.255.0.0", &["global"]),
            ("172.15.255.255", &["global"]),
            ("172.16.0.0", &["private"]),
            ("172.31.255.255", &["private"]),
            ("172.32.0.0", &["global"]),
            ("191.255.255.255", &["global"]),
            ("192.0.0.0", &["reserved"]),
            ("192.0.0.8", &["reserved"]),
            ("192.0.0.9", &["global"]),
            ("192.0.0.10", &["global"]),
            ("192.0.0.11", &["reserved"]),
            ("192.0.0.255", &["reserved"]),
            ("192.0.1.0", &["global"]),
            ("192.0.2.0", &["documentation"]),
            ("192.0.2.255", &["documentation"]),
            ("192.0.3.0", &["global"]),
            ("192.88.98.255", &["global"]),
            ("192.88.99.0", &["reserved"]),
            ("192.88.99.255", &["reserved"]),
            ("192.88.100.0", &["global"]),
            ("192.167.255.255", &["global"]),
            ("192.168.0.0", &["private"]),
            ("192.168.255.255", &["private"]),
            ("192.169.0.0", &["global"]),
            ("198.17.255.255", &["global"]),
            ("198.18.0.0", &["benchmarking"]),
            ("198.19.255.255", &["benchmarking"]),
            ("198.20.0.0", &["global"]),
            ("198.51.99.255", &["global"]),
            ("198.51.100.0", &["documentation"]),
            ("198.51.100.255", &["documentation"]),
            ("198.51.101.0", &["global"]),
            ("203.0.112.255", &["global"]),
            ("203.0.113.0", &["documentation"]),
            ("203.0.113.255", &["documentation"]),
            ("203.0.114.0", &["global"]),
            ("223.255.255.255", &["global"]),
            ("224.0.0.0", &["multicast"]),
            ("233.251.255.255", &["multicast"]),
            ("233.252.0.0", &["multicast", "documentation"]),
            ("233.252.0.255", &["multicast", "documentation"]),
            ("233.253.0.0", &["multicast"]),
            ("239.255.255.255", &["multicast"]),
            ("240.0.0.0", &["reserved"]),
            ("255.255.255.254", &["reserved"]),
            ("255.255.255.255", &["broadcast"]),
            ("8.8.8.8", &["global"]),
        ];
        for (addr, want) in cases {
            assert_eq!(kinds(addr), *want, "{addr}");
        }
    }

    #[test]
    fn ipv6_ranges_and_their_boundaries() {
        let cases: &[(&str, &[&str])] = &[
            ("::", &["unspecified"]),
            ("::1", &["loopback"]),
            ("::2", &["reserved"]),
            ("::fffe:ffff:ffff", &["reserved"]),
            ("::ffff:0.0.0.0", &["ipv4-mapped"]),
            ("::ffff:255.255.255.255", &["ipv4-mapped"]),
            ("::1:0:0:0", &["reserved"]),
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("64:ff9b::", &["nat64"]),
            ("64:ff9b::ffff:ffff", &["nat64"]),
            ("64:ff9b::1:0:0", &["reserved"]),
            ("64:ff9b:1::", &["reserved"]),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("100::", &["reserved"]),
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("100:0:0:0:ffff:ffff:ffff:ffff", &["reserved"]),
            ("100:0:0:1::", &["reserved"]),
            ("100::1:ffff:ffff:ffff:ffff", &["reserved"]),
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("2000::", &["global"]),
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2001::", &["teredo"]),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", &["teredo"]),
            ("2001:1::", &["reserved"]),
            ("2001:1::1", &["global"]),
            ("2001:1::2", &["global"]),
            ("2001:1::3", &["global"]),
            ("2001:1::4", &["reserved"]),
            ("2001:2:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("2001:3::1", &["global"]),
            ("2001:4::", &["reserved"]),
            ("2001:2::", &["benchmarking"]),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", &["benchmarking"]),
            ("2001:2:1::", &["reserved"]),
            ("2001:3::", &["global"]),
            ("2001:3:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2001:4:112::", &["global"]),
            ("2001:4:111:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("2001:4:112:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2001:4:113::", &["reserved"]),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2001:30::", &["global"]),
            ("2001:10::", &["reserved"]),
            ("2001:20::", &["global"]),
            ("2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2001:40::", &["reserved"]),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("2001:200::", &["global"]),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2001:db8::", &["documentation"]),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", &["documentation"]),
            ("2001:db9::", &["global"]),
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("2002::", &["6to4"]),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["6to4"]),
            ("2003::", &["global"]),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("3fff::", &["documentation"]),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", &["documentation"]),
            ("3fff:1000::", &["global"]),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["global"]),
            ("4000::", &["reserved"]),
            ("5f00::", &["reserved"]),
            ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("fc00::", &["unique-local"]),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["unique-local"]),
            ("fe00::", &["reserved"]),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("fe80::", &["link-local"]),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["link-local"]),
            ("fec0::", &["reserved"]),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["reserved"]),
            ("ff00::", &["multicast"]),
            ("ff02::1", &["multicast"]),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["multicast"]),
        ];
        for (addr, want) in cases {
            assert_eq!(kinds(addr), *want, "{addr}");
        }
    }

    #[test]
    fn classes_a_to_e() {
        for (addr, class) in [
            ("0.0.0.0", 'A'),
            ("127.255.255.255", 'A'),
            ("128.0.0.0", 'B'),
            ("191.255.255.255", 'B'),
            ("192.0.0.0", 'C'),
            ("223.255.255.255", 'C'),
            ("224.0.0.0", 'D'),
            ("239.255.255.255", 'D'),
            ("240.0.0.0", 'E'),
            ("255.255.255.255", 'E'),
        ] {
            assert_eq!(class_v4(parse_ipv4(addr).unwrap()), class, "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_addresses() {
        for (addr, want) in [
            ("::ffff:192.0.2.1", Some("192.0.2.1")),
            ("::ffff:c000:201", Some("192.0.2.1")),
            ("64:ff9b::192.0.2.33", Some("192.0.2.33")),
            ("2002:c000:0204::1", Some("192.0.2.4")),
            // RFC 4380's example: server 65.54.227.120, client 192.0.2.45 (inverted).
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some("192.0.2.45")),
            ("2001:db8::1", None),
            ("::1", None),
        ] {
            let ip: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(
                embedded_ipv4(ip).map(|e| e.to_string()).as_deref(),
                want,
                "{addr}"
            );
        }
    }

    #[test]
    fn ipv6_forms() {
        let r = report(&parse_input("2001:DB8:0:0:0:0:0:1").unwrap());
        assert_eq!(r.address, "2001:db8::1");
        assert_eq!(
            r.expanded.as_deref(),
            Some("2001:0db8:0000:0000:0000:0000:0000:0001")
        );
        let r = report(&parse_input("[::]").unwrap());
        assert_eq!(r.address, "::");
        assert_eq!(
            r.expanded.as_deref(),
            Some("0000:0000:0000:0000:0000:0000:0000:0000")
        );
        let r = report(&parse_input("2001:db8:0:0:1:0:0:1").unwrap());
        assert_eq!(r.address, "2001:db8::1:0:0:1");
    }

    fn reason(s: &str) -> String {
        parse_input(s).unwrap_err().to_string()
    }

    #[test]
    fn invalid_inputs_say_exactly_why() {
        let cases = [
            ("256.1.1.1", "256.1.1.1: octet 1 is 256, above 255"),
            ("1.2.3.300", "1.2.3.300: octet 4 is 300, above 255"),
            ("1.2.3", "1.2.3: expected 4 octets, found 3"),
            ("1.2.3.4.5", "1.2.3.4.5: expected 4 octets, found 5"),
            ("1", "1: expected 4 octets, found 1"),
            ("1..2.3", "1..2.3: octet 2 is empty"),
            ("1.2.3.x", "1.2.3.x: octet 4 is 'x', not a number 0-255"),
            (
                "1.2.3.99999999999",
                "1.2.3.99999999999: octet 4 is 99999999999, above 255",
            ),
            (
                "10.0.0.0/33",
                "10.0.0.0/33: prefix /33 is out of range: IPv4 prefixes are 0-32",
            ),
            (
                "::/129",
                "::/129: prefix /129 is out of range: IPv6 prefixes are 0-128",
            ),
            (
                "::/99999",
                "::/99999: prefix /99999 is out of range: IPv6 prefixes are 0-128",
            ),
            ("10.0.0.0/", "10.0.0.0/: the prefix after '/' is empty"),
            ("10.0.0.0/x", "10.0.0.0/x: prefix 'x' is not a number 0-32"),
            (
                "10.0.0.0/-1",
                "10.0.0.0/-1: prefix '-1' is not a number 0-32",
            ),
            (
                "10.0.0.0/8/8",
                "10.0.0.0/8/8: more than one '/': expected ADDR[/PREFIX]",
            ),
            ("/8", "/8: no address before the '/'"),
            ("", "empty argument: expected ADDR[/PREFIX]"),
            ("::g", "::g: 'g' is not a hex digit"),
            ("1::2::3", "1::2::3: '::' may appear only once"),
            (
                "12345::",
                "12345::: group '12345' has more than 4 hex digits",
            ),
            (
                "1:2:3",
                "1:2:3: expected 8 groups, found 3 (use '::' for a run of zero groups)",
            ),
            (
                "fe80::1%eth0",
                "fe80::1%eth0: zone index '%eth0' is not supported here: leave it out",
            ),
            (
                "::ffff:1.2.3.256",
                "::ffff:1.2.3.256: embedded IPv4 part 1.2.3.256: octet 4 is 256, above 255",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(reason(input), want, "{input}");
        }
        let e = reason("010.0.0.1");
        assert!(
            e.starts_with("010.0.0.1: octet 1 is 010: a leading zero is ambiguous"),
            "{e}"
        );
        assert!(reason("1.2.3.00").contains("octet 4 is 00"));
        assert!(reason("hello").starts_with("hello: not an IP address"));
        assert!(reason("example.com").starts_with("example.com: not an IP address"));
        assert!(reason("localhost/8").starts_with("localhost/8: not an IP address"));
        assert!(reason("1.2.3.4 ").contains("octet 4 is '4 '"));
    }

    #[test]
    fn ipv4_prefixes() {
        let r = report(&parse_input("192.168.1.10/24").unwrap());
        assert_eq!(r.network.as_deref(), Some("192.168.1.0"));
        assert_eq!(r.netmask.as_deref(), Some("255.255.255.0"));
        assert_eq!(r.wildcard.as_deref(), Some("0.0.0.255"));
        assert_eq!(r.broadcast.as_deref(), Some("192.168.1.255"));
        assert_eq!(r.first_host.as_deref(), Some("192.168.1.1"));
        assert_eq!(r.last_host.as_deref(), Some("192.168.1.254"));
        assert_eq!(r.hosts.as_deref(), Some("254"));
        assert_eq!(r.role, Some("host"));
        assert_eq!(
            report(&parse_input("10.0.0.0/8").unwrap()).role,
            Some("network")
        );
        let r = report(&parse_input("10.255.255.255/8").unwrap());
        assert_eq!(r.role, Some("broadcast"));
        assert_eq!(r.hosts.as_deref(), Some("16777214"));

        // (input, network, broadcast, first, last, hosts)
        let cases = [
            (
                "0.0.0.0/0",
                "0.0.0.0",
                Some("255.255.255.255"),
                "0.0.0.1",
                "255.255.255.254",
                "4294967294",
            ),
            (
                "1.2.3.4/30",
                "1.2.3.4",
                Some("1.2.3.7"),
                "1.2.3.5",
                "1.2.3.6",
                "2",
            ),
            ("1.2.3.5/31", "1.2.3.4", None, "1.2.3.4", "1.2.3.5", "2"),
            ("1.2.3.5/32", "1.2.3.5", None, "1.2.3.5", "1.2.3.5", "1"),
            (
                "172.20.1.2/12",
                "172.16.0.0",
                Some("172.31.255.255"),
                "172.16.0.1",
                "172.31.255.254",
                "1048574",
            ),
        ];
        for (input, net, bc, first, last, hosts) in cases {
            let r = report(&parse_input(input).unwrap());
            assert_eq!(r.network.as_deref(), Some(net), "{input}");
            assert_eq!(r.broadcast.as_deref(), bc, "{input}");
            assert_eq!(r.first_host.as_deref(), Some(first), "{input}");
            assert_eq!(r.last_host.as_deref(), Some(last), "{input}");
            assert_eq!(r.hosts.as_deref(), Some(hosts), "{input}");
        }
        let r = report(&parse_input("0.0.0.0/0").unwrap());
        assert_eq!(r.netmask.as_deref(), Some("0.0.0.0"));
        assert_eq!(r.wildcard.as_deref(), Some("255.255.255.255"));
        let r = report(&parse_input("1.2.3.4/31").unwrap());
        assert_eq!(r.role, Some("host"));
        assert_eq!(r.netmask.as_deref(), Some("255.255.255.254"));
    }

    #[test]
    fn ipv6_prefixes() {
        let r = report(&parse_input("2001:db8::1/64").unwrap());
        assert_eq!(r.network.as_deref(), Some("2001:db8::"));
        assert_eq!(r.netmask.as_deref(), Some("ffff:ffff:ffff:ffff::"));
        assert_eq!(r.wildcard.as_deref(), Some("::ffff:ffff:ffff:ffff"));
        assert_eq!(r.broadcast, None);
        assert_eq!(r.first_host.as_deref(), Some("2001:db8::"));
        assert_eq!(
            r.last_host.as_deref(),
            Some("2001:db8::ffff:ffff:ffff:ffff")
        );
        assert_eq!(r.hosts.as_deref(), Some("18446744073709551616"));
        assert_eq!(r.role, Some("host"));
        for (input, hosts) in [
            ("::/0", "340282366920938463463374607431768211456"),
            ("::/1", "170141183460469231731687303715884105728"),
            ("::/127", "2"),
            ("::1/128", "1"),
        ] {
            let r = report(&parse_input(input).unwrap());
            assert_eq!(r.hosts.as_deref(), Some(hosts), "{input}");
        }
        let r = report(&parse_input("::/0").unwrap());
        assert_eq!(r.netmask.as_deref(), Some("::"));
        assert_eq!(
            r.last_host.as_deref(),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert_eq!(r.role, Some("network"));
        assert_eq!(
            report(&parse_input("2001:db8::/32").unwrap()).role,
            Some("network")
        );
        assert_eq!(report(&parse_input("::/128").unwrap()).role, Some("host"));
    }

    #[test]
    fn json_fields() {
        let r = report(&parse_input("10.1.2.3/8").unwrap());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["version"], 4);
        assert_eq!(v["class"], "A");
        assert_eq!(v["kinds"], serde_json::json!(["private"]));
        assert_eq!(v["prefix"], 8);
        assert_eq!(v["hosts"], "16777214");
        assert!(v.get("expanded").is_none() && v.get("embedded_ipv4").is_none());
        let v = serde_json::to_value(report(&parse_input("2002:c000:204::1").unwrap())).unwrap();
        assert_eq!(v["embedded_ipv4"], "192.0.2.4");
        assert_eq!(v["kinds"], serde_json::json!(["6to4"]));
        assert!(v.get("class").is_none() && v.get("network").is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_parsed_or_refused_without_panic(
            s in "[0-9a-fA-F:./\\[\\]%x -]{0,45}"
        ) {
            if let Ok(input) = parse_input(&s) {
                let r = report(&input);
                proptest::prop_assert!(!r.kinds.is_empty());
                let _ = r.to_string();
            }
        }

        #[test]
        fn every_address_round_trips(v4: u32, v6: u128, p4 in 0u8..=32, p6 in 0u8..=128) {
            let a4 = Ipv4Addr::from_bits(v4);
            let r = report(&parse_input(&format!("{a4}/{p4}")).unwrap());
            proptest::prop_assert_eq!(r.address, a4.to_string());
            let one_kind = r.kinds.len() == 1 || r.kinds == [Multicast, Documentation];
            proptest::prop_assert!(one_kind, "{:?}", r.kinds);
            let a6 = Ipv6Addr::from_bits(v6);
            let r = report(&parse_input(&format!("{a6}/{p6}")).unwrap());
            proptest::prop_assert_eq!(r.address, a6.to_string());
            let expanded: Ipv6Addr = r.expanded.unwrap().parse().unwrap();
            proptest::prop_assert_eq!(expanded, a6);
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        for s in [
            "",
            "/",
            "//",
            "[",
            "[]",
            "]",
            ":",
            ":::",
            "1.",
            ".1",
            "....",
            "::/",
            "[::1",
            "€",
            "1.2.3.4/€",
        ] {
            let _ = parse_input(s).map(|i| report(&i).to_string());
        }
    }
}
