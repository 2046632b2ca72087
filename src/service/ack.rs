//! `ack`: a receipt for every message, `ack <local RFC 3339 time, milliseconds> <N> bytes` —
//! the tutorials' "received at <time>" reply. The size counts bytes, so invalid UTF-8 is
//! acknowledged like anything else.

use chrono::{Local, SecondsFormat};

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
    let now = Local::now().to_rfc3339_opts(SecondsFormat::Millis, false);
    format!("ack {now} {len} bytes")
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
}
