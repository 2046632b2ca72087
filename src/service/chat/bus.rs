//! The chat's side of the cluster (see [`crate::cluster`]): what other servers' traffic does to
//! the local rooms, the history of rooms whose members are all elsewhere, the nick registry's
//! claims, and the reconciliation of provisional nicks when the link comes back.
//!
//! Lines from the bus enter a room's log like a local member's (under a sender number no local
//! member has), so they reach the local members under the same budget and retention: a member
//! that stops reading falls behind and is disconnected, and nothing queues for it elsewhere.

use std::collections::VecDeque;
use std::sync::Arc;

use lru::LruCache;
use tracing::{debug, info};

use super::{Reach, Registered, Shared, fit, lock, suffixed};
use crate::cluster::wire::{Change, Member};
use crate::cluster::{ClaimResult, Inbound};
use crate::message::Message;
use crate::service::chat::text::{fold, sanitize};

/// The sender number of lines from other servers: no local member has it.
pub(super) const REMOTE: u64 = u64::MAX;
/// Bytes of history kept for rooms with members on other servers only, all rooms together.
const SHADOW_BYTES: usize = 4 * 1024 * 1024;

/// The last chat lines of rooms that have no member here, least recently used dropped first.
#[derive(Debug)]
pub(super) struct Shadow {
    rooms: LruCache<String, VecDeque<String>>,
    bytes: usize,
    /// Lines kept per room.
    per_room: usize,
}

impl Shadow {
    /// Room for up to `rooms` rooms' histories.
    pub(super) fn new(rooms: usize) -> Shadow {
        Shadow {
            rooms: LruCache::new(std::num::NonZeroUsize::new(rooms.max(1)).unwrap_or(
                // `max(1)` makes this unreachable; a one-room cache is still correct.
                std::num::NonZeroUsize::MIN,
            )),
            bytes: 0,
            per_room: super::DEFAULT_HISTORY,
        }
    }

    fn set_per_room(&mut self, n: usize) {
        self.per_room = n;
    }

    /// Appends lines said in room `key`.
    fn push(&mut self, key: &str, lines: &[String]) {
        if self.per_room == 0 {
            return;
        }
        if !self.rooms.contains(key) {
            if let Some((_, old)) = self.rooms.push(key.to_owned(), VecDeque::new()) {
                self.bytes -= old.iter().map(String::len).sum::<usize>();
            }
        }
        let Some(history) = self.rooms.get_mut(key) else {
            return;
        };
        let mut bytes = self.bytes;
        for line in lines.iter().rev().take(self.per_room).rev() {
            if history.len() == self.per_room {
                if let Some(old) = history.pop_front() {
                    bytes -= old.len();
                }
            }
            bytes += line.len();
            history.push_back(line.clone());
        }
        self.bytes = bytes;
        self.trim();
    }

    /// Keeps `lines` as the history of room `key`, whose last member here left.
    pub(super) fn put(&mut self, key: &str, lines: Vec<String>) {
        if lines.is_empty() || self.per_room == 0 {
            return;
        }
        let added: usize = lines.iter().map(String::len).sum();
        if let Some((_, old)) = self.rooms.push(key.to_owned(), lines.into()) {
            self.bytes -= old.iter().map(String::len).sum::<usize>();
        }
        self.bytes += added;
        self.trim();
    }

    /// A copy of the history kept for room `key`.
    pub(super) fn peek(&self, key: &str) -> Option<Vec<String>> {
        self.rooms
            .peek(key)
            .map(|lines| lines.iter().cloned().collect())
    }

    /// Whether a history is kept for room `key`.
    pub(super) fn has(&self, key: &str) -> bool {
        self.rooms.contains(key)
    }

    /// Takes the history of room `key`, which now has a member here.
    pub(super) fn take(&mut self, key: &str) -> Option<Vec<String>> {
        let lines = self.rooms.pop(key)?;
        self.bytes -= lines.iter().map(String::len).sum::<usize>();
        Some(lines.into())
    }

    fn trim(&mut self) {
        while self.bytes > SHADOW_BYTES {
            match self.rooms.pop_lru() {
                Some((_, old)) => self.bytes -= old.iter().map(String::len).sum::<usize>(),
                None => break,
            }
        }
    }
}

impl Shared {
    /// Records the cluster claim `rev` on the nick `key` of member `id`.
    pub(super) fn set_claim(&self, key: &str, id: u64, rev: u64) {
        if let Some(entry) = lock(&self.nicks).get_mut(key).filter(|r| r.id == id) {
            entry.claim = Some(rev);
        }
    }

    /// Removes member `id`'s nick `key` from the registry; returns its cluster claim.
    pub(super) fn forget(&self, key: &str, id: u64) -> Option<u64> {
        let mut nicks = lock(&self.nicks);
        if nicks.get(key).is_some_and(|r| r.id == id) {
            nicks.remove(key).and_then(|r| r.claim)
        } else {
            None
        }
    }

    /// Records member `id`'s room.
    pub(super) fn set_room(&self, nick: &str, id: u64, room: Option<Arc<super::Room>>) {
        if let Some(entry) = lock(&self.nicks)
            .get_mut(&fold(nick))
            .filter(|r| r.id == id)
        {
            entry.room = room;
        }
    }

    /// Adds `lines` from the bus to room `room`'s log, or to its shadow history.
    fn deliver_remote(&self, room: &str, lines: &[String], chat: bool) {
        let key = fold(room);
        let local = lock(&self.rooms).get(&key).cloned();
        match local {
            Some(local) => local.publish(REMOTE, lines, chat, None, &self.stats),
            None if chat => {
                let mut shadow = lock(&self.shadow);
                shadow.set_per_room(self.settings.history);
                shadow.push(&key, lines);
            }
            None => {}
        }
    }

    /// Claims every nick of this server again after an outage; a nick someone elsewhere got
    /// meanwhile is replaced, and its member told.
    async fn reconcile(self: Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let held: Vec<(String, Arc<str>, u64)> = lock(&self.nicks)
            .iter()
            .map(|(key, r)| (key.clone(), r.nick.clone(), r.id))
            .collect();
        let mut taken = Vec::new();
        for (key, nick, id) in held {
            match cluster.claim(&key, &nick, id).await {
                ClaimResult::Claimed(rev) => self.set_claim(&key, id, rev),
                // The link went again: the next restore reconciles.
                ClaimResult::Offline => return,
                ClaimResult::Taken => taken.push((key, nick, id)),
            }
        }
        if taken.is_empty() {
            return;
        }
        // A holder may be a server that died while the link was down: its claims can be taken
        // over once its lease has run out, so try once more then before renaming anyone.
        tokio::time::sleep(cluster.settling() + crate::cluster::HEARTBEAT / 2).await;
        let mut renamed = 0usize;
        for (key, nick, id) in taken {
            // Gone meanwhile, or renamed by its own hand.
            if lock(&self.nicks).get(&key).is_none_or(|r| r.id != id) {
                continue;
            }
            match cluster.claim(&key, &nick, id).await {
                ClaimResult::Claimed(rev) => self.set_claim(&key, id, rev),
                ClaimResult::Offline => return,
                ClaimResult::Taken => {
                    if self.replace_nick(&key, &nick, id).await {
                        renamed += 1;
                    }
                }
            }
        }
        if renamed > 0 {
            info!(
                "cluster: {renamed} member(s) renamed: their nicks were taken elsewhere during the outage"
            );
        }
    }

    /// Gives member `id` (now `nick`, folded `key`) the first free `nick-N` and tells it.
    async fn replace_nick(&self, key: &str, nick: &Arc<str>, id: u64) -> bool {
        let Some(cluster) = self.cluster.clone() else {
            return false;
        };
        for k in 2u64..1000 {
            let candidate = suffixed(nick, k);
            let new_key = fold(&candidate);
            if lock(&self.nicks).contains_key(&new_key) || cluster.find_nick(&new_key).is_some() {
                continue;
            }
            let rev = match cluster.claim(&new_key, &candidate, id).await {
                ClaimResult::Claimed(rev) => rev,
                ClaimResult::Taken => continue,
                ClaimResult::Offline => return false,
            };
            let new: Arc<str> = candidate.into();
            let moved = {
                let mut nicks = lock(&self.nicks);
                if nicks.contains_key(&new_key) || nicks.get(key).is_none_or(|r| r.id != id) {
                    None
                } else {
                    nicks.remove(key).map(|old| {
                        *lock(&old.forced) = Some(new.clone());
                        let moved = (old.reach.clone(), old.room.clone());
                        nicks.insert(
                            new_key.clone(),
                            Registered {
                                nick: new.clone(),
                                id,
                                reach: old.reach,
                                claim: Some(rev),
                                room: old.room,
                                forced: old.forced,
                            },
                        );
                        moved
                    })
                }
            };
            let Some((reach, room)) = moved else {
                cluster.release(&new_key, rev);
                return false;
            };
            let t = self.texts;
            if let Some(room) = &room {
                room.rename(id, new.clone());
                room.publish(id, &[t.renamed(nick, &new)], false, None, &self.stats);
            }
            cluster.presence(Change::Rename {
                id,
                nick: new.to_string(),
            });
            let notice = t.nick_lost(nick, &new);
            match reach {
                Reach::Push(handle, max) => {
                    let _ = handle.try_send(Message::text(fit(notice, max)));
                }
                Reach::Datagram(peer) => peer.send(&notice, &self.stats),
            }
            debug!("cluster: {nick} renamed {new} (taken elsewhere)");
            return true;
        }
        false
    }
}

impl Inbound for Shared {
    fn lines(&self, room: &str, lines: Vec<String>) {
        // What other servers send is cleaned like what members send.
        let lines: Vec<String> = lines
            .iter()
            .map(|l| sanitize(l.as_bytes()))
            .filter(|l| !l.trim().is_empty())
            .collect();
        if !lines.is_empty() {
            self.deliver_remote(room, &lines, true);
        }
    }

    fn joined(&self, room: &str, nick: &str) {
        let line = self.texts.joined(&sanitize(nick.as_bytes()));
        self.deliver_remote(room, &[line], false);
    }

    fn left(&self, room: &str, nick: &str) {
        let line = self.texts.left(&sanitize(nick.as_bytes()));
        self.deliver_remote(room, &[line], false);
    }

    fn renamed(&self, room: &str, old: &str, new: &str) {
        let line = self
            .texts
            .renamed(&sanitize(old.as_bytes()), &sanitize(new.as_bytes()));
        self.deliver_remote(room, &[line], false);
    }

    fn private(&self, to: &str, from: &str, text: &str) {
        let reach = lock(&self.nicks).get(to).map(|r| r.reach.clone());
        let Some(reach) = reach else {
            debug!("cluster: private message for {to}, who is not here");
            return;
        };
        let line = self
            .texts
            .private_from(&sanitize(from.as_bytes()), &sanitize(text.as_bytes()));
        match reach {
            Reach::Push(handle, max) => {
                let _ = handle.try_send(Message::text(fit(line, max)));
            }
            Reach::Datagram(peer) => peer.send(&line, &self.stats),
        }
    }

    fn link(&self, up: bool) {
        let t = self.texts;
        let line = if up { t.link_restored() } else { t.link_lost() };
        let rooms: Vec<_> = lock(&self.rooms).values().cloned().collect();
        for room in rooms {
            room.publish(REMOTE, &[line.to_owned()], false, None, &self.stats);
        }
    }

    fn reclaim(&self) {
        // Nothing to claim on a fresh start; otherwise members arrived while the link was
        // down (or before it first came up) and hold provisional nicks.
        if lock(&self.nicks).is_empty() {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(me.reconcile());
        }
    }

    fn history(&self, room: &str) -> Option<Vec<String>> {
        let key = fold(room);
        let local = lock(&self.rooms).get(&key).cloned();
        match local {
            Some(room) => Some(room.history()),
            None => lock(&self.shadow).peek(&key),
        }
    }

    fn members(&self) -> Vec<Member> {
        lock(&self.nicks)
            .values()
            .map(|r| Member {
                id: r.id,
                nick: r.nick.to_string(),
                room: r.room.as_ref().map(|room| room.name().to_string()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_keeps_the_last_lines_within_its_bounds() {
        let mut shadow = Shadow::new(2);
        shadow.set_per_room(3);
        let lines: Vec<String> = (0..5).map(|i| format!("l{i}")).collect();
        shadow.push("a", &lines);
        assert_eq!(shadow.take("a").unwrap(), ["l2", "l3", "l4"]);
        assert_eq!(shadow.bytes, 0);
        shadow.push("a", &lines[..1]);
        shadow.push("b", &lines[..1]);
        shadow.push("c", &lines[..1]);
        assert!(
            shadow.take("a").is_none(),
            "least recently used room dropped"
        );
        shadow.put("d", vec!["x".repeat(SHADOW_BYTES + 1)]);
        assert_eq!(shadow.bytes, 0, "over the byte bound: dropped");
    }
}
