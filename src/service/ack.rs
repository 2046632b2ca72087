//! `ack`: a receipt for every message, `ack <local RFC 3339 time, milliseconds> <N> bytes` —
//! the tutorials' "received at `<time>`" reply. The size counts bytes, so invalid UTF-8 is
//! acknowledged like anything else.

use std::cell::RefCell;

use chrono::{DateTime, Local, Utc};

use crate::message::Message;
use crate::service::{Outbox, PeerInfo, Service, Session};

/// The ack service.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ack;

/// An ack connection: stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct AckSession;

impl Service for Ack {
    type Session = AckSession;

    fn open(&self, _peer: &PeerInfo) -> AckSession {
        AckSession
    }
}

/// The receipt for a message of `len` bytes, stamped with the current local time.
pub fn receipt(len: usize) -> String {
    receipt_at(Utc::now(), len)
}

/// The local date, time and offset of one second, formatted once for every receipt in it.
struct SecondStamp {
    second: i64,
    /// `2026-11-22T10:15:30`
    date_time: String,
    /// `+08:00`
    offset: String,
}

thread_local! {
    static STAMP: RefCell<Option<SecondStamp>> = const { RefCell::new(None) };
}

/// The receipt for `len` bytes at instant `now`. Formatting a local timestamp from scratch
/// costs more than the rest of a UDP round trip's user-space work, so the part that changes
/// once a second is cached per thread and only the milliseconds are written each time.
fn receipt_at(now: DateTime<Utc>, len: usize) -> String {
    STAMP.with_borrow_mut(|cached| {
        let second = now.timestamp();
        let stamp = match cached {
            Some(stamp) if stamp.second == second => stamp,
            _ => {
                let local = now.with_timezone(&Local);
                cached.insert(SecondStamp {
                    second,
                    date_time: local.format("%Y-%m-%dT%H:%M:%S").to_string(),
                    offset: local.format("%:z").to_string(),
                })
            }
        };
        // A leap second reports 1000+ ms; it still belongs to this second.
        let millis = now.timestamp_subsec_millis().min(999);
        let mut out = String::with_capacity(48);
        out.push_str("ack ");
        out.push_str(&stamp.date_time);
        out.push('.');
        out.push(char::from(b'0' + (millis / 100) as u8));
        out.push(char::from(b'0' + (millis / 10 % 10) as u8));
        out.push(char::from(b'0' + (millis % 10) as u8));
        out.push_str(&stamp.offset);
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(len));
        out.push_str(" bytes");
        out
    })
}

impl Session for AckSession {
    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        out.send(Message::text(receipt(msg.len())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_has_an_rfc3339_millisecond_timestamp_and_the_byte_count() {
        let r = receipt(42);
        let parts: Vec<&str> = r.split(' ').collect();
        assert_eq!(parts.len(), 4, "{r}");
        assert_eq!((parts[0], parts[2], parts[3]), ("ack", "42", "bytes"));
        let ts = chrono::DateTime::parse_from_rfc3339(parts[1]).expect(parts[1]);
        // Milliseconds: exactly three fractional digits.
        let frac = parts[1].split('.').nth(1).unwrap();
        assert!(frac.starts_with(|c: char| c.is_ascii_digit()));
        assert_eq!(
            frac.chars().take_while(char::is_ascii_digit).count(),
            3,
            "{r}"
        );
        assert!((Local::now().fixed_offset() - ts).num_seconds().abs() < 5);
    }

    #[test]
    fn cached_receipts_match_chronos_own_formatting() {
        use chrono::{SecondsFormat, TimeZone};
        let base = Utc.with_ymd_and_hms(2026, 11, 22, 10, 15, 30).unwrap();
        for millis in [0, 7, 59, 123, 999] {
            for offset_secs in [0, 1, 999, 1000] {
                let at = base
                    + chrono::Duration::milliseconds(millis)
                    + chrono::Duration::milliseconds(offset_secs * 1000);
                let want = format!(
                    "ack {} 5 bytes",
                    at.with_timezone(&Local)
                        .to_rfc3339_opts(SecondsFormat::Millis, false)
                );
                assert_eq!(receipt_at(at, 5), want);
            }
        }
    }
}
