//! One chat room: its members, the log of its traffic that every member reads with a cursor of
//! its own, the last chat lines shown to newcomers, and the fan-out to UDP members.
//!
//! Each line is stored once, however many members read it. A member reading over a stream polls
//! the log (see [`Room::feed`]) whenever its connection has written what it owed, and takes a
//! bounded batch from its cursor on; a member that stops reading stops being fed and falls
//! behind on its own. Only members waiting at the end of the log are woken by a new line, and
//! they are woken after the lock is released. Retention is bounded in bytes and charged to the
//! server's memory budget; a member whose cursor falls behind what is retained is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::budget::MemoryBudget;
use crate::codec::MAX_DATAGRAM;
use crate::logging::RateLimited;

/// Most lines in one log chunk.
const CHUNK_LINES: usize = 4096;

/// Where a UDP member is, and how it ends its own lines (replies follow its habit, like the
/// raw codec's: `nc -u` users get lines, `recvfrom` clients bare text).
#[derive(Clone, Debug)]
pub struct DatagramPeer {
    /// The member's address.
    pub addr: SocketAddr,
    /// The server socket to send from.
    pub socket: Arc<UdpSocket>,
    /// Whether the member's last datagram ended with a newline.
    pub newline: Arc<AtomicBool>,
}

impl DatagramPeer {
    /// Sends `text` as one datagram without waiting; a full socket buffer drops it (counted).
    pub fn send(&self, text: &str, stats: &Stats) {
        let mut end = text.len().min(MAX_DATAGRAM - 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let mut packet = Vec::with_capacity(text.len() + 1);
        packet.extend_from_slice(text.as_bytes());
        packet.push(b'\n');
        self.send_packet(&packet, stats);
    }

    /// Sends `packet` (which ends with `\n`), without the newline if the member does not use
    /// them.
    fn send_packet(&self, packet: &[u8], stats: &Stats) {
        let bytes = if self.newline.load(Ordering::Relaxed) {
            packet
        } else {
            &packet[..packet.len() - 1]
        };
        match self.socket.try_send_to(bytes, self.addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stats.dropped_datagram(),
            Err(e) => debug!("chat: cannot send to {}: {e}", self.addr),
        }
    }
}

/// Counters shared by every room of a chat.
#[derive(Debug)]
pub struct Stats {
    dropped: AtomicU64,
    dropped_log: Mutex<RateLimited>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            dropped: AtomicU64::new(0),
            dropped_log: Mutex::new(RateLimited::new(Duration::from_secs(1))),
        }
    }
}

impl Stats {
    /// Datagrams to UDP members dropped because the socket's buffer was full.
    pub fn dropped_datagrams(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn dropped_datagram(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let hit = self
            .dropped_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hit();
        if let Some(n) = hit {
            warn!("chat: dropped {n} datagram(s) to UDP members: the socket's send buffer is full");
        }
    }
}

/// A room's settings.
#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// Bytes of traffic kept for members that read slowly.
    pub retention: usize,
    /// Chat lines shown to a newcomer.
    pub history: usize,
    /// Most members.
    pub max_members: usize,
    /// Where the log's memory is charged.
    pub budget: Option<Arc<MemoryBudget>>,
}

/// A chat room.
#[derive(Debug)]
pub struct Room {
    name: Arc<str>,
    key: Box<str>,
    max_members: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    log: Log,
    /// The last chat lines, oldest first.
    history: VecDeque<Box<str>>,
    history_max: usize,
    history_bytes: usize,
    members: HashMap<u64, Member>,
    /// Members whose waker is set: they are at the end of the log.
    waiting: Vec<u64>,
    /// UDP members, rebuilt when one joins or leaves so that fan-out takes one clone.
    datagrams: Arc<[(u64, DatagramPeer)]>,
}

#[derive(Debug)]
struct Member {
    nick: Arc<str>,
    waker: Option<Waker>,
}

/// What a newcomer gets from [`Room::add`].
#[derive(Debug)]
pub struct Joined {
    /// Where its cursor starts: after everything already in the log.
    pub cursor: u64,
    /// The room's last chat lines, oldest first.
    pub history: Vec<String>,
    /// Members, the newcomer included.
    pub members: usize,
}

/// What [`Room::feed`] found for a member.
#[derive(Debug)]
pub enum Feed {
    /// Lines for the member, each ending with `\n`.
    Batch(Vec<u8>),
    /// Nothing new; the member will be woken when there is.
    Waiting,
    /// The member's cursor is older than anything kept.
    Behind,
}

impl Room {
    /// An empty room called `name`, registered under `key`.
    pub fn new(name: &str, key: &str, settings: &RoomSettings) -> Room {
        Room {
            name: name.into(),
            key: key.into(),
            max_members: settings.max_members,
            state: Mutex::new(State {
                log: Log::new(settings.retention, settings.budget.clone()),
                history: VecDeque::new(),
                history_max: settings.history,
                history_bytes: 0,
                members: HashMap::new(),
                waiting: Vec::new(),
                datagrams: Arc::from(Vec::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The room's name, as first written.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The key the room is registered under (its name, case-folded).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds member `id`; `None` if the room is full.
    pub fn add(&self, id: u64, nick: Arc<str>, datagram: Option<DatagramPeer>) -> Option<Joined> {
        let mut state = self.lock();
        if state.members.len() >= self.max_members {
            return None;
        }
        state.members.insert(id, Member { nick, waker: None });
        if let Some(peer) = datagram {
            let mut list = state.datagrams.to_vec();
            list.push((id, peer));
            state.datagrams = Arc::from(list);
        }
        Some(Joined {
            cursor: state.log.next,
            history: state.history.iter().map(|l| l.to_string()).collect(),
            members: state.members.len(),
        })
    }

    /// Removes member `id`; returns whether the room is now empty.
    pub fn remove(&self, id: u64) -> bool {
        let mut state = self.lock();
        state.members.remove(&id);
        state.waiting.retain(|&w| w != id);
        if state.datagrams.iter().any(|(d, _)| *d == id) {
            let list: Vec<_> = state
                .datagrams
                .iter()
                .filter(|(d, _)| *d != id)
                .cloned()
                .collect();
            state.datagrams = Arc::from(list);
        }
        state.members.is_empty()
    }

    /// Changes member `id`'s nick in the member list.
    pub fn rename(&self, id: u64, nick: Arc<str>) {
        if let Some(member) = self.lock().members.get_mut(&id) {
            member.nick = nick;
        }
    }

    /// How many members the room has.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// Whether the room has no members (it is then dropped from the registry).
    pub fn is_empty(&self) -> bool {
        self.lock().members.is_empty()
    }

    /// The members' nicks, in no particular order.
    pub fn nicks(&self) -> Vec<Arc<str>> {
        self.lock()
            .members
            .values()
            .map(|m| m.nick.clone())
            .collect()
    }

    /// Adds `lines` (no line endings) from member `sender` to the room: to the log for stream
    /// members, as datagrams to UDP members, and to the history if they are `chat` lines.
    /// Nobody gets their own lines back: if the sender's `cursor` is at the end of the log, it
    /// moves past the new lines, so a member that only talks never falls behind.
    pub fn publish(
        &self,
        sender: u64,
        lines: &[String],
        chat: bool,
        cursor: Option<&mut u64>,
        stats: &Stats,
    ) {
        if lines.is_empty() {
            return;
        }
        let (wakers, datagrams) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let caught_up = cursor.as_deref().is_some_and(|&c| c == state.log.next);
            // Only members on streams read the log: with none but the sender (a room of UDP
            // members, or someone talking alone), the lines are not kept.
            let sender_reads = state.members.contains_key(&sender)
                && !state.datagrams.iter().any(|(id, _)| *id == sender);
            let readers = state.members.len() - state.datagrams.len() - usize::from(sender_reads);
            if readers > 0 {
                for line in lines {
                    state.log.push(sender, line);
                }
            }
            if caught_up {
                if let Some(cursor) = cursor {
                    *cursor = state.log.next;
                }
            }
            if chat && state.history_max > 0 {
                for line in lines.iter().rev().take(state.history_max).rev() {
                    if state.history.len() == state.history_max {
                        if let Some(old) = state.history.pop_front() {
                            state.history_bytes -= old.len();
                        }
                    }
                    state.history_bytes += line.len();
                    state.history.push_back(line.as_str().into());
                }
                state.log.set_extra(state.history_bytes);
            }
            let mut wakers = Vec::new();
            if !state.waiting.is_empty() {
                wakers.reserve(state.waiting.len());
                for id in state.waiting.drain(..) {
                    if let Some(waker) = state.members.get_mut(&id).and_then(|m| m.waker.take()) {
                        wakers.push(waker);
                    }
                }
            }
            let datagrams = (!state.datagrams.is_empty()).then(|| state.datagrams.clone());
            (wakers, datagrams)
        };
        // Woken outside the lock: the woken members take it first thing.
        for waker in wakers {
            waker.wake();
        }
        if let Some(members) = datagrams {
            let packets = pack(lines);
            for (id, peer) in members.iter() {
                if *id != sender {
                    for packet in &packets {
                        peer.send_packet(packet, stats);
                    }
                }
            }
        }
    }

    /// Takes the next batch of at most about `max` bytes for member `id` from `cursor` on,
    /// skipping its own lines, and moves the cursor past it. At the end of the log, arranges
    /// for `cx` (if given) to be woken by the next line.
    pub fn feed(&self, id: u64, cursor: &mut u64, cx: Option<&Context<'_>>, max: usize) -> Feed {
        let mut guard = self.lock();
        let state = &mut *guard;
        if *cursor < state.log.first {
            return Feed::Behind;
        }
        let mut batch = Vec::new();
        *cursor = state.log.read(*cursor, id, max, &mut batch);
        if !batch.is_empty() {
            return Feed::Batch(batch);
        }
        let Some(cx) = cx else {
            return Feed::Waiting;
        };
        if let Some(member) = state.members.get_mut(&id) {
            match &member.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                Some(_) => member.waker = Some(cx.waker().clone()),
                None => {
                    member.waker = Some(cx.waker().clone());
                    state.waiting.push(id);
                }
            }
        }
        Feed::Waiting
    }

    /// The room's last chat lines, oldest first.
    pub fn history(&self) -> Vec<String> {
        self.lock().history.iter().map(|l| l.to_string()).collect()
    }

    /// Puts `lines` (oldest first) before the room's history, keeping the last of them that
    /// fit: the lines other servers' members said before this room had members here.
    pub fn seed_history(&self, lines: Vec<String>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let room = state.history_max.saturating_sub(state.history.len());
        for line in lines.into_iter().rev().take(room) {
            state.history_bytes += line.len();
            state.history.push_front(line.into());
        }
        state.log.set_extra(state.history_bytes);
    }

    /// Bytes the log holds (for tests and diagnostics).
    pub fn retained(&self) -> usize {
        self.lock().log.held
    }
}

/// `lines` as datagrams of at most [`MAX_DATAGRAM`] bytes, lines joined by `\n`, each datagram
/// ending with `\n` (which [`DatagramPeer::send_packet`] drops for members that do not use
/// newlines). A line too long for one datagram is cut at a character boundary.
fn pack(lines: &[String]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for line in lines {
        let mut text = line.as_str();
        if text.len() + 1 > MAX_DATAGRAM {
            let mut end = MAX_DATAGRAM - 1;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text = &text[..end];
        }
        if !current.is_empty() && current.len() + text.len() + 1 > MAX_DATAGRAM {
            packets.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(text.as_bytes());
        current.push(b'\n');
    }
    if !current.is_empty() {
        packets.push(current);
    }
    packets
}

/// The shared log: lines in chunks, each line stored once with its sender, numbered from 0 in
/// order of arrival. Members hold line numbers (cursors).
#[derive(Debug)]
struct Log {
    chunks: VecDeque<Chunk>,
    /// Number of the oldest line kept.
    first: u64,
    /// Number the next line will get.
    next: u64,
    /// Bytes held by the chunks, plus `extra`.
    held: usize,
    /// Memory held outside the chunks but charged with them (the room's history).
    extra: usize,
    retention: usize,
    chunk_bytes: usize,
    budget: Option<Arc<MemoryBudget>>,
    /// What `held` has been charged to the budget.
    charged: usize,
}

#[derive(Debug)]
struct Chunk {
    /// Number of the chunk's first line.
    first: u64,
    /// The lines, each ending with `\n`.
    data: Vec<u8>,
    /// Where each line ends in `data` (after its `\n`).
    ends: Vec<u32>,
    /// Who sent each line.
    senders: Vec<u64>,
}

impl Chunk {
    fn bytes(&self) -> usize {
        self.data.capacity() + self.ends.capacity() * 4 + self.senders.capacity() * 8
    }

    fn lines(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Where line `i` of this chunk starts.
    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] as usize }
    }
}

impl Log {
    fn new(retention: usize, budget: Option<Arc<MemoryBudget>>) -> Log {
        Log {
            chunks: VecDeque::new(),
            first: 0,
            next: 0,
            held: 0,
            extra: 0,
            retention,
            // Whole chunks are dropped at once: small enough that a drop is a small part of the
            // retention, large enough that a chunk holds many lines.
            chunk_bytes: (retention / 16).clamp(4 * 1024, 64 * 1024),
            budget,
            charged: 0,
        }
    }

    /// Appends one line (without its ending).
    fn push(&mut self, sender: u64, line: &str) {
        let len = line.len() + 1;
        let full = match self.chunks.back() {
            None => true,
            Some(chunk) => {
                chunk.data.len() + len > chunk.data.capacity()
                    || chunk.ends.len() >= CHUNK_LINES
                    || chunk.data.len() + len > u32::MAX as usize
            }
        };
        if full {
            let capacity = self.chunk_bytes.max(len);
            let chunk = Chunk {
                first: self.next,
                data: Vec::with_capacity(capacity),
                ends: Vec::new(),
                senders: Vec::new(),
            };
            self.held += chunk.bytes();
            self.chunks.push_back(chunk);
        }
        let Some(chunk) = self.chunks.back_mut() else {
            return;
        };
        let before = chunk.bytes();
        chunk.data.extend_from_slice(line.as_bytes());
        chunk.data.push(b'\n');
        chunk.ends.push(chunk.data.len() as u32);
        chunk.senders.push(sender);
        let after = chunk.bytes();
        self.next += 1;
        self.held = self.held + after - before;
        self.settle();
    }

    /// Charges `extra` bytes held elsewhere with the log.
    fn set_extra(&mut self, extra: usize) {
        self.held = self.held - self.extra + extra;
        self.extra = extra;
        self.settle();
    }

    /// Drops the oldest chunks while over the retention, or while the budget has no room for
    /// what is held (never the newest chunk: the line just added must reach its readers).
    fn settle(&mut self) {
        while self.held > self.retention && self.chunks.len() > 1 {
            self.drop_oldest();
        }
        let Some(budget) = self.budget.clone() else {
            return;
        };
        if self.held <= self.charged {
            budget.give_back(self.charged - self.held);
            self.charged = self.held;
            return;
        }
        // Rooms share the half of the budget that large frames may use, so they can never take
        // the memory every connection needs to read its next message.
        while !budget.try_take_large(self.held - self.charged) {
            if self.chunks.len() <= 1 {
                budget.take_anyway(self.held - self.charged);
                break;
            }
            self.drop_oldest();
            if self.held <= self.charged {
                budget.give_back(self.charged - self.held);
                self.charged = self.held;
                return;
            }
        }
        self.charged = self.held;
    }

    fn drop_oldest(&mut self) {
        if let Some(chunk) = self.chunks.pop_front() {
            self.held -= chunk.bytes();
            self.first = chunk.first + chunk.lines();
        }
    }

    /// Copies the lines from number `cursor` on that `me` did not send into `out`, each ending
    /// with `\n`, as many as fit in `max` bytes (not counting the last `\n`); returns the number
    /// of the first line not taken. A line that alone is longer than `max` is cut to fit.
    fn read(&self, cursor: u64, me: u64, max: usize, out: &mut Vec<u8>) -> u64 {
        if cursor >= self.next {
            return cursor;
        }
        // The last line's `\n` is not part of the message.
        let room = max.max(1).saturating_add(1);
        let mut idx = self
            .chunks
            .partition_point(|c| c.first + c.lines() <= cursor);
        let mut at = cursor;
        'chunks: while let Some(chunk) = self.chunks.get(idx) {
            let mut i = (at - chunk.first) as usize;
            let mut run = chunk.start(i)..chunk.start(i);
            let mut full = false;
            while i < chunk.ends.len() {
                let (start, end) = (chunk.start(i), chunk.ends[i] as usize);
                if chunk.senders[i] == me {
                    out.extend_from_slice(&chunk.data[run.clone()]);
                    run = end..end;
                } else if out.len() + run.len() + (end - start) <= room {
                    run.end = end;
                } else {
                    if out.is_empty() && run.is_empty() {
                        // Alone too long for one message: its first `max` bytes.
                        let line = &chunk.data[start..end - 1];
                        let mut cut = max.max(1).min(line.len());
                        while cut > 0 && cut < line.len() && line[cut] & 0xc0 == 0x80 {
                            cut -= 1;
                        }
                        out.extend_from_slice(&line[..cut]);
                        out.push(b'\n');
                        i += 1;
                    }
                    full = true;
                    break;
                }
                i += 1;
            }
            out.extend_from_slice(&chunk.data[run]);
            at = chunk.first + i as u64;
            if full {
                break 'chunks;
            }
            idx += 1;
        }
        at
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(log: &Log, cursor: u64, me: u64, max: usize) -> (String, u64) {
        let mut out = Vec::new();
        let next = log.read(cursor, me, max, &mut out);
        (String::from_utf8(out).unwrap(), next)
    }

    #[test]
    fn readers_skip_their_own_lines_and_batches_are_bounded() {
        let mut log = Log::new(1 << 20, None);
        for (i, sender) in [1, 2, 1, 3, 2].into_iter().enumerate() {
            log.push(sender, &format!("l{i}"));
        }
        assert_eq!(read_all(&log, 0, 1, 1 << 20), ("l1\nl3\nl4\n".into(), 5));
        assert_eq!(read_all(&log, 0, 2, 1 << 20), ("l0\nl2\nl3\n".into(), 5));
        assert_eq!(read_all(&log, 2, 9, 1 << 20), ("l2\nl3\nl4\n".into(), 5));
        // A batch holds what fits: `l0\nl1` is 5 bytes.
        assert_eq!(read_all(&log, 0, 9, 5), ("l0\nl1\n".into(), 2));
        assert_eq!(read_all(&log, 0, 9, 4), ("l0\n".into(), 1));
        assert_eq!(read_all(&log, 5, 9, 4), (String::new(), 5));
        // Own lines are skipped without counting against the bound.
        assert_eq!(read_all(&log, 0, 1, 5), ("l1\nl3\n".into(), 4));
        // A line longer than the bound alone is cut, at a character boundary.
        log.push(2, "ab€cd");
        assert_eq!(read_all(&log, 5, 9, 4), ("ab\n".into(), 6));
        assert_eq!(read_all(&log, 5, 9, 5), ("ab€\n".into(), 6));
    }

    #[test]
    fn reading_crosses_chunks_and_retention_drops_the_oldest() {
        let mut log = Log::new(64 * 1024, None);
        let line = "x".repeat(1000);
        for _ in 0..200 {
            log.push(1, &line);
        }
        assert!(log.chunks.len() > 2);
        assert!(log.held <= 64 * 1024, "{}", log.held);
        assert!(
            log.held >= (200 - log.first as usize) * 1001,
            "{}",
            log.held
        );
        assert!(log.first > 0);
        let (text, next) = read_all(&log, log.first, 2, usize::MAX);
        assert_eq!(next, 200);
        assert_eq!(text.len() as u64, (200 - log.first) * 1001);
    }

    #[test]
    fn the_log_is_charged_to_the_budget_and_gives_it_back() {
        let budget = MemoryBudget::new(1 << 20);
        let mut log = Log::new(4 << 20, Some(budget.clone()));
        let line = "y".repeat(500);
        for _ in 0..5000 {
            log.push(1, &line);
        }
        // Within half of the budget, by trimming: the retention alone would allow 4 MiB.
        assert!(budget.used() <= 512 * 1024 + 64 * 1024, "{}", budget.used());
        assert_eq!(budget.used(), log.held);
        drop(log);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn packets_fit_datagrams() {
        let lines = vec!["a".repeat(40_000), "b".repeat(40_000), "c".into()];
        let packets = pack(&lines);
        assert_eq!(packets.len(), 2);
        assert!(packets.iter().all(|p| p.len() <= MAX_DATAGRAM));
        assert_eq!(packets[1].len(), 40_000 + 1 + 2);
        let long = vec!["é".repeat(40_000)];
        let packets = pack(&long);
        assert!(packets[0].len() <= MAX_DATAGRAM);
        assert!(std::str::from_utf8(&packets[0]).is_ok());
    }
}
