//! What the chat servers of a cluster say to each other on the bus: the subjects and the
//! messages (JSON objects with a `t` tag), with the checks every incoming message passes before
//! it is used. A message that is too large, is not JSON, has an unknown tag or carries a field
//! out of bounds is rejected with a reason, which the caller logs; nothing here panics.

use serde::{Deserialize, Serialize};

/// Every subject starts with this.
pub const PREFIX: &str = "sockit.chat";
/// Largest bus message accepted or sent, in bytes; larger ones are dropped and logged.
pub const MAX_BUS_MESSAGE: usize = 256 * 1024;
/// Most members in one presence snapshot part (a larger presence is sent in several parts).
pub const SNAPSHOT_PART: usize = 500;
/// Longest node name, in bytes.
pub const MAX_NODE: usize = 32;
/// Longest nick or room name carried, in bytes (names are at most 32 characters).
const MAX_NAME_BYTES: usize = 32 * 4;
/// Most lines in one `lines` message.
const MAX_LINES: usize = 64 * 1024;

/// The subject of room `key`'s chat lines: the folded name in hex, so that any name is a valid
/// subject token.
pub fn room_subject(key: &str) -> String {
    let mut s = String::with_capacity(PREFIX.len() + 6 + key.len() * 2);
    s.push_str(PREFIX);
    s.push_str(".room.");
    push_hex(&mut s, key.as_bytes());
    s
}

/// The subject of presence changes and snapshots.
pub fn presence_subject() -> String {
    format!("{PREFIX}.presence")
}

/// The subject of requests for room `key`'s last chat lines.
pub fn ask_subject(key: &str) -> String {
    let mut s = String::with_capacity(PREFIX.len() + 5 + key.len() * 2);
    s.push_str(PREFIX);
    s.push_str(".ask.");
    push_hex(&mut s, key.as_bytes());
    s
}

/// The subject heartbeats go to.
pub fn heartbeat_subject() -> String {
    format!("{PREFIX}.hb")
}

/// The subject snapshot requests go to.
pub fn sync_subject() -> String {
    format!("{PREFIX}.sync")
}

/// The subject of private messages for `node`.
pub fn private_subject(node: &str) -> String {
    format!("{PREFIX}.pm.{node}")
}

/// The subject every server subscribes to (one subscription keeps one publisher's messages in
/// the order it sent them, whatever their subjects).
pub fn all_subjects() -> String {
    format!("{PREFIX}.>")
}

/// The key-value key of a (folded) nick: hex, so that any nick is a valid key.
pub fn nick_key(folded: &str) -> String {
    let mut s = String::with_capacity(2 + folded.len() * 2);
    s.push_str("n_");
    push_hex(&mut s, folded.as_bytes());
    s
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Whether `name` can be a node name: 1 to 32 ASCII letters, digits, `-` or `_`.
pub fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One member as presence messages carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's number on its server.
    pub id: u64,
    /// Its nick.
    pub nick: String,
    /// The room it is in, as named (none: it has a nick but no room yet).
    pub room: Option<String>,
}

/// The owner of a nick claim, as stored in the key-value bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The claiming server's node name.
    pub node: String,
    /// The claiming server process (a new number each start).
    pub inst: u64,
    /// The member's number on that server.
    pub id: u64,
    /// The nick as written.
    pub nick: String,
}

/// A bus message. Every one names the node and process that sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Bus {
    /// Chat lines (already `<nick> text`) said in `room`, in the order they were said: one
    /// member's or, merged by the publisher, several members' of the same room.
    Lines {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The room as named.
        room: String,
        /// The lines, without line endings.
        lines: Vec<String>,
    },
    /// A presence change: `member` joined `room` (or its nick changed, or it left).
    Presence {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The node's presence version after this change.
        pv: u64,
        /// What changed.
        change: Change,
    },
    /// Every member of a node, in parts of at most [`SNAPSHOT_PART`].
    Snapshot {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The node's presence version.
        pv: u64,
        /// Part number, from 0.
        part: u32,
        /// Whether this is the last part.
        last: bool,
        /// The members in this part.
        members: Vec<Member>,
    },
    /// A node is alive.
    Heartbeat {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The node's presence version.
        pv: u64,
    },
    /// Please send your snapshot (every node, or only `want`).
    Sync {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The node asked, or every node.
        want: Option<String>,
    },
    /// Who has the last chat lines of `room`? (A request: the answer goes to its reply
    /// subject.)
    Ask {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The room as named.
        room: String,
    },
    /// The answer to [`Bus::Ask`]: the room's last chat lines, oldest first.
    History {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The room as named.
        room: String,
        /// The lines, without line endings.
        lines: Vec<String>,
    },
    /// A private message for the member of the receiving node called `to`.
    Private {
        /// Sending node.
        node: String,
        /// Sending process.
        inst: u64,
        /// The recipient's nick, folded.
        to: String,
        /// The sender's nick.
        from: String,
        /// The text.
        text: String,
    },
}

/// A presence change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub enum Change {
    /// A member arrived in a room (or is known for the first time).
    Join {
        /// The member.
        member: Member,
    },
    /// A member left its room (`gone`: and the chat).
    Leave {
        /// The member's number.
        id: u64,
        /// Whether the member left the chat entirely.
        gone: bool,
    },
    /// A member changed nick.
    Rename {
        /// The member's number.
        id: u64,
        /// The new nick.
        nick: String,
    },
}

impl Bus {
    /// The node and process that sent this message.
    pub fn origin(&self) -> (&str, u64) {
        match self {
            Bus::Lines { node, inst, .. }
            | Bus::Presence { node, inst, .. }
            | Bus::Snapshot { node, inst, .. }
            | Bus::Heartbeat { node, inst, .. }
            | Bus::Sync { node, inst, .. }
            | Bus::Ask { node, inst, .. }
            | Bus::History { node, inst, .. }
            | Bus::Private { node, inst, .. } => (node, *inst),
        }
    }

    /// The message as bytes for the bus.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a message from the bus.
    pub fn decode(bytes: &[u8]) -> Result<Bus, String> {
        if bytes.len() > MAX_BUS_MESSAGE {
            return Err(format!(
                "oversized ({} bytes, at most {MAX_BUS_MESSAGE})",
                bytes.len()
            ));
        }
        let bus: Bus = serde_json::from_slice(bytes).map_err(|e| format!("malformed: {e}"))?;
        bus.check()?;
        Ok(bus)
    }

    fn check(&self) -> Result<(), String> {
        let (node, _) = self.origin();
        if !valid_node(node) {
            return Err("malformed: bad node name".into());
        }
        let name = |s: &str| !s.is_empty() && s.len() <= MAX_NAME_BYTES;
        let member = |m: &Member| name(&m.nick) && m.room.as_deref().is_none_or(name);
        let ok = match self {
            Bus::Lines { room, lines, .. } => {
                name(room) && !lines.is_empty() && lines.len() <= MAX_LINES
            }
            Bus::Presence { change, .. } => match change {
                Change::Join { member: m } => member(m),
                Change::Leave { .. } => true,
                Change::Rename { nick, .. } => name(nick),
            },
            Bus::Snapshot { members, .. } => {
                members.len() <= SNAPSHOT_PART && members.iter().all(member)
            }
            Bus::Heartbeat { .. } => true,
            Bus::Sync { want, .. } => want.as_deref().is_none_or(valid_node),
            Bus::Ask { room, .. } => name(room),
            Bus::History { room, lines, .. } => name(room) && lines.len() <= MAX_LINES,
            Bus::Private { to, from, .. } => name(to) && name(from),
        };
        if ok {
            Ok(())
        } else {
            Err("malformed: a field is empty or out of bounds".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_keys_are_valid_tokens_for_any_name() {
        assert_eq!(room_subject("lobby"), "sockit.chat.room.6c6f626279");
        assert_eq!(nick_key("a.b c"), "n_612e622063");
        assert!(room_subject("大厅").is_ascii());
        assert!(valid_node("node-1_a"));
        assert!(!valid_node("a.b") && !valid_node("") && !valid_node(&"x".repeat(33)));
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let msg = Bus::Lines {
            node: "a".into(),
            inst: 7,
            room: "lobby".into(),
            lines: vec!["<x> hi".into()],
        };
        assert_eq!(Bus::decode(&msg.encode()).unwrap(), msg);
        assert!(Bus::decode(b"{nope").unwrap_err().starts_with("malformed"));
        assert!(Bus::decode(br#"{"t":"what"}"#).is_err());
        let big = vec![b' '; MAX_BUS_MESSAGE + 1];
        assert!(Bus::decode(&big).unwrap_err().starts_with("oversized"));
        let bad_node = br#"{"t":"heartbeat","node":"a.b","inst":1,"pv":0}"#;
        assert!(Bus::decode(bad_node).is_err());
        let empty = br#"{"t":"lines","node":"a","inst":1,"room":"r","lines":[]}"#;
        assert!(Bus::decode(empty).is_err());
    }
}
