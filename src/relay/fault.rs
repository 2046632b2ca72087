//! Faults the relay injects: parsed from `--fault [up:|down:]NAME[=VALUE][,PARAM=VALUE…][,p=PROB]`.
//!
//! `up` is client → target, `down` is target → client; with neither, both. `p` is the
//! probability that the fault applies to a given connection (or UDP flow), drawn from the
//! seeded generator, so a run with the same `--seed` makes the same choices.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A direction of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client → target.
    Up,
    /// Target → client.
    Down,
}

impl Dir {
    /// `>` for up, `<` for down (as in `socat -v`).
    pub fn arrow(self) -> char {
        match self {
            Dir::Up => '>',
            Dir::Down => '<',
        }
    }

    /// `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// TCP and UDP: hold each chunk/datagram for `delay` ± `jitter`.
    Latency {
        /// Base delay.
        delay: Duration,
        /// Uniform spread around the delay.
        jitter: Duration,
    },
    /// TCP: at most this many bytes per second (UDP: see `Rate`).
    Bandwidth {
        /// Bytes per second.
        bytes_per_sec: u64,
    },
    /// TCP: wait this long before relaying a FIN.
    SlowClose {
        /// The wait.
        delay: Duration,
    },
    /// TCP: let no data through; close the connection after `after` (never if zero).
    Timeout {
        /// Time until the close.
        after: Duration,
    },
    /// TCP: reset both sides after `after`.
    ResetPeer {
        /// Time until the reset.
        after: Duration,
    },
    /// TCP: cut each chunk into pieces of `avg` ± `variation` bytes, `delay` apart.
    Slicer {
        /// Average piece size.
        avg: usize,
        /// Spread of the piece size.
        variation: usize,
        /// Pause between pieces.
        delay: Duration,
    },
    /// TCP: close the connection once this many bytes have passed in the direction.
    LimitData {
        /// The byte budget.
        bytes: u64,
    },
    /// TCP and UDP: the relay is down; connections are closed at once, datagrams dropped.
    Down,
    /// TCP: merge what arrives within `window` into one write.
    Coalesce {
        /// How long to gather.
        window: Duration,
    },
    /// UDP: drop datagrams with probability `prob`; with `burst` > 1, in Gilbert–Elliott
    /// bursts of that mean length (same average loss).
    Loss {
        /// Average loss rate, 0–1.
        prob: f64,
        /// Mean burst length in datagrams (1 = independent losses).
        burst: f64,
    },
    /// UDP: send a datagram twice with probability `prob`.
    Duplicate {
        /// Probability.
        prob: f64,
    },
    /// UDP: hold a datagram (probability `prob`) until `window` later ones have gone (or
    /// 200 ms have passed).
    Reorder {
        /// How many datagrams overtake a held one.
        window: u32,
        /// Probability.
        prob: f64,
    },
    /// UDP: at most this many datagrams per second (queued, excess dropped past 1024).
    Rate {
        /// Datagrams per second.
        per_sec: f64,
    },
    /// UDP: flip one random bit of a datagram with probability `prob`.
    Corrupt {
        /// Probability.
        prob: f64,
    },
    /// UDP: cut datagrams to at most `len` bytes.
    Truncate {
        /// Maximum length.
        len: usize,
    },
    /// UDP: drop everything.
    Blackhole,
    /// UDP: drop the datagram number `n` (1-based) of the direction.
    DropNth {
        /// Which datagram.
        n: u64,
    },
}

impl FaultKind {
    /// Whether this fault applies to TCP streams.
    pub fn for_tcp(&self) -> bool {
        !matches!(
            self,
            FaultKind::Loss { .. }
                | FaultKind::Duplicate { .. }
                | FaultKind::Reorder { .. }
                | FaultKind::Rate { .. }
                | FaultKind::Corrupt { .. }
                | FaultKind::Truncate { .. }
                | FaultKind::Blackhole
                | FaultKind::DropNth { .. }
        )
    }

    /// Whether this fault applies to UDP datagrams.
    pub fn for_udp(&self) -> bool {
        matches!(
            self,
            FaultKind::Latency { .. }
                | FaultKind::Down
                | FaultKind::Loss { .. }
                | FaultKind::Duplicate { .. }
                | FaultKind::Reorder { .. }
                | FaultKind::Rate { .. }
                | FaultKind::Corrupt { .. }
                | FaultKind::Truncate { .. }
                | FaultKind::Blackhole
                | FaultKind::DropNth { .. }
        )
    }
}

/// One `--fault`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Applies client → target.
    pub up: bool,
    /// Applies target → client.
    pub down: bool,
    /// What it does.
    pub kind: FaultKind,
    /// Probability that it applies to a connection or flow.
    pub p: f64,
    /// The text it was parsed from.
    pub text: String,
}

impl Fault {
    /// Whether it applies in `dir`.
    pub fn applies(&self, dir: Dir) -> bool {
        match dir {
            Dir::Up => self.up,
            Dir::Down => self.down,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The names `--fault` accepts.
pub const FAULT_NAMES: &[&str] = &[
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
    "down",
    "coalesce",
    "loss",
    "duplicate",
    "reorder",
    "delay",
    "rate",
    "corrupt",
    "truncate",
    "blackhole",
    "drop",
];

/// Largest slicer piece (and variation): larger ones would not slice a 64 KiB chunk anyway.
const MAX_SLICE: usize = 1 << 20;

/// Parses a duration: `100ms`, `2s`, `500us`, `1m`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" => 1e-3,
        "s" => 1.0,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        _ => return Err(format!("'{s}' is not a duration (like 100ms, 2s, 500us)")),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && n * scale <= 86_400.0 => {
            Ok(Duration::from_secs_f64(n * scale))
        }
        _ => Err(format!("'{s}' is not a duration (like 100ms, 2s, 500us)")),
    }
}

/// Parses a probability: `5%` or `0.05`.
pub fn parse_prob(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    match v {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a probability (0-1, or a percentage like 5%)"
        )),
    }
}

/// Parses a byte rate: a number of bytes per second with an optional K, M or G (decimal).
fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("/s").trim_end_matches("ps");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        _ => return Err(format!("'{s}' is not a byte rate (like 500k, 10M)")),
    };
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
    {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a byte rate (like 500k, 10M), or it is 0"
        )),
    }
}

fn parse_count<T: FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what} '{s}' is not a whole number"))
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Fault, String> {
        let err = |reason: String| format!("--fault {text}: {reason}");
        let mut rest = text.trim();
        let (mut up, mut down) = (true, true);
        if let Some(r) = rest.strip_prefix("up:") {
            (down, rest) = (false, r);
        } else if let Some(r) = rest.strip_prefix("down:") {
            (up, rest) = (false, r);
        }
        let mut parts = rest.split(',');
        let head = parts.next().unwrap_or_default();
        let (name, value) = match head.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (head.trim().to_ascii_lowercase(), None),
        };
        let mut params: Vec<(String, &str)> = Vec::new();
        let mut p = 1.0;
        for part in parts {
            let Some((k, v)) = part.split_once('=') else {
                return Err(err(format!("'{part}' is not PARAM=VALUE")));
            };
            let k = k.trim().to_ascii_lowercase();
            if k == "p" {
                p = parse_prob(v).map_err(err)?;
            } else {
                params.push((k, v.trim()));
            }
        }
        let mut take = |key: &str| -> Option<&str> {
            let i = params.iter().position(|(k, _)| k == key)?;
            Some(params.remove(i).1)
        };
        fn need_value<'a>(text: &str, name: &str, v: Option<&'a str>) -> Result<&'a str, String> {
            v.ok_or_else(|| format!("--fault {text}: {name} needs a value ({name}=…)"))
        }
        let need = |v| need_value(text, &name, v);
        let kind = match name.as_str() {
            "latency" | "delay" => FaultKind::Latency {
                delay: parse_duration(need(value)?).map_err(err)?,
                jitter: take("jitter")
                    .map(parse_duration)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or_default(),
            },
            "bandwidth" => FaultKind::Bandwidth {
                bytes_per_sec: parse_rate(need(value)?).map_err(err)?,
            },
            "slow_close" => FaultKind::SlowClose {
                delay: parse_duration(need(value)?).map_err(err)?,
            },
            "timeout" => FaultKind::Timeout {
                after: value
                    .map(parse_duration)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or_default(),
            },
            "reset_peer" => FaultKind::ResetPeer {
                after: value
                    .map(parse_duration)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or_default(),
            },
            "slicer" => {
                let avg: usize = parse_count("size", need(value)?).map_err(err)?;
                if !(1..=MAX_SLICE).contains(&avg) {
                    return Err(err(format!("the slice size must be 1 to {MAX_SLICE}")));
                }
                FaultKind::Slicer {
                    avg,
                    variation: take("variation")
                        .map(|v| parse_count("variation", v))
                        .transpose()
                        .map_err(err)?
                        .unwrap_or(0)
                        .min(MAX_SLICE),
                    delay: take("delay")
                        .map(parse_duration)
                        .transpose()
                        .map_err(err)?
                        .unwrap_or_default(),
                }
            }
            "limit_data" => FaultKind::LimitData {
                bytes: parse_count("byte count", need(value)?).map_err(err)?,
            },
            "down" => FaultKind::Down,
            "coalesce" => FaultKind::Coalesce {
                window: parse_duration(need(value)?).map_err(err)?,
            },
            "loss" => {
                let burst: f64 = take("burst")
                    .map(|v| {
                        v.parse::<f64>()
                            .map_err(|_| format!("burst '{v}' is not a number"))
                    })
                    .transpose()
                    .map_err(err)?
                    .unwrap_or(1.0);
                if !(1.0..=1e6).contains(&burst) {
                    return Err(err("burst must be a mean length of 1 or more".into()));
                }
                FaultKind::Loss {
                    prob: parse_prob(need(value)?).map_err(err)?,
                    burst,
                }
            }
            "duplicate" => FaultKind::Duplicate {
                prob: parse_prob(need(value)?).map_err(err)?,
            },
            "reorder" => FaultKind::Reorder {
                window: parse_count("window", value.unwrap_or("3")).map_err(err)?,
                prob: take("prob")
                    .map(parse_prob)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or(0.25),
            },
            "rate" => {
                let per_sec: f64 = need(value)?
                    .parse()
                    .map_err(|_| err("rate is datagrams per second, a number".into()))?;
                if !(0.001..=1e9).contains(&per_sec) {
                    return Err(err("rate must be 0.001 to 1e9 datagrams per second".into()));
                }
                FaultKind::Rate { per_sec }
            }
            "corrupt" => FaultKind::Corrupt {
                prob: parse_prob(need(value)?).map_err(err)?,
            },
            "truncate" => FaultKind::Truncate {
                len: parse_count("length", need(value)?).map_err(err)?,
            },
            "blackhole" => FaultKind::Blackhole,
            "drop" => {
                let n: u64 = parse_count("datagram number", need(value)?).map_err(err)?;
                if n == 0 {
                    return Err(err("datagrams are numbered from 1".into()));
                }
                FaultKind::DropNth { n }
            }
            other => {
                return Err(err(format!(
                    "unknown fault '{other}' (known: {})",
                    FAULT_NAMES.join(", ")
                )));
            }
        };
        if let Some((k, _)) = params.first() {
            return Err(err(format!("{name} takes no parameter '{k}'")));
        }
        Ok(Fault {
            up,
            down,
            kind,
            p,
            text: text.trim().to_owned(),
        })
    }
}

/// A small seeded generator (SplitMix64): reproducible choices, no shared state.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and a stream number (connection id, fault index, …).
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p >= 1.0 || self.unit() < p
    }

    /// Uniform in `[base - spread, base + spread]`, at least 0.
    pub fn around(&mut self, base: Duration, spread: Duration) -> Duration {
        if spread.is_zero() {
            return base;
        }
        let offset = (self.unit() * 2.0 - 1.0) * spread.as_secs_f64();
        Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
    }

    /// Uniform in `[base - spread, base + spread]`, at least 1.
    pub fn around_usize(&mut self, base: usize, spread: usize) -> usize {
        if spread == 0 {
            return base.max(1);
        }
        let span = 2 * spread as u64 + 1;
        let v = base as i64 - spread as i64 + (self.next_u64() % span) as i64;
        v.max(1) as usize
    }
}

/// A relay's faults, changeable while it runs (the API does): every connection and flow
/// follows a change, existing ones included — a stream direction at its next chunk, the
/// connection-wide timers (`timeout`, `reset_peer`) at once.
#[derive(Debug)]
pub struct FaultSet {
    faults: arc_swap::ArcSwap<Vec<Fault>>,
    changes: tokio::sync::watch::Sender<u64>,
    live: bool,
}

impl FaultSet {
    /// Faults fixed for the relay's life (the command line).
    pub fn fixed(faults: Vec<Fault>) -> std::sync::Arc<FaultSet> {
        Self::make(faults, false)
    }

    /// Faults that may change while the relay runs (an API proxy): UDP flows then always pass
    /// through the fault stage, ready for faults that come later.
    pub fn live(faults: Vec<Fault>) -> std::sync::Arc<FaultSet> {
        Self::make(faults, true)
    }

    fn make(faults: Vec<Fault>, live: bool) -> std::sync::Arc<FaultSet> {
        std::sync::Arc::new(FaultSet {
            faults: arc_swap::ArcSwap::from_pointee(faults),
            changes: tokio::sync::watch::Sender::new(0),
            live,
        })
    }

    /// Whether the faults may change.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The faults now.
    pub fn load(&self) -> std::sync::Arc<Vec<Fault>> {
        self.faults.load_full()
    }

    /// Replaces the faults and tells every connection.
    pub fn store(&self, faults: Vec<Fault>) {
        self.faults.store(std::sync::Arc::new(faults));
        self.changes.send_modify(|v| *v += 1);
    }

    /// A receiver that sees every change after this call (subscribe, then load, so that no
    /// change falls between the two).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The faults that apply to one connection or flow in one direction (the `p` draws done).
pub fn active(faults: &[Fault], dir: Dir, seed: u64, conn: u64) -> Vec<FaultKind> {
    let mut rng = Rng::new(seed, conn);
    faults
        .iter()
        .filter_map(|f| {
            // Draw for every fault so each fault's choice does not depend on the others'.
            let on = rng.chance(f.p);
            (on && f.applies(dir)).then(|| f.kind.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_examples() {
        let f: Fault = "down:latency=100ms,jitter=20ms".parse().unwrap();
        assert!(!f.up && f.down);
        assert_eq!(
            f.kind,
            FaultKind::Latency {
                delay: Duration::from_millis(100),
                jitter: Duration::from_millis(20)
            }
        );
        let f: Fault = "up:loss=5%".parse().unwrap();
        assert!(f.up && !f.down);
        assert_eq!(
            f.kind,
            FaultKind::Loss {
                prob: 0.05,
                burst: 1.0
            }
        );
        let f: Fault = "slicer=64,p=0.5".parse().unwrap();
        assert!(f.up && f.down);
        assert_eq!(f.p, 0.5);
    }

    #[test]
    fn refuses_bad_faults_with_a_reason() {
        for bad in [
            "nope",
            "latency",
            "latency=fast",
            "loss=150%",
            "slicer=0",
            "slicer=10,colour=red",
            "drop=0",
            "rate=0",
            "rate=1e-300",
            "slicer=99999999999",
            "latency=1ms,p=2",
            "bandwidth=0",
            "latency=1ms,jitter",
        ] {
            let e = bad.parse::<Fault>().unwrap_err();
            assert!(e.starts_with(&format!("--fault {bad}:")), "{e}");
        }
    }

    #[test]
    fn the_generator_is_reproducible() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(1, 1);
        let hits = (0..10_000).filter(|_| r.chance(0.3)).count();
        assert!((2_500..3_500).contains(&hits), "{hits}");
    }
}
