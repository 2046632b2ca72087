//! `chat`: multi-client chat rooms, the thing `ncat --chat` does, done properly.
//!
//! Every line a member sends goes to every other member of its room as `<nick> text`, one
//! prefix per line however the lines arrived (a raw read or a length frame holding several
//! lines is split on `\n`). Terminal escape sequences and control characters are stripped from
//! what members send, so nobody can rewrite another member's screen. Lines starting with `/`
//! are commands (`/nick`, `/join`, `/who`, `/msg`, `/rooms`, `/quit`, `/help`); `//` sends a
//! line that starts with `/`.
//!
//! Each room keeps one log of its traffic that every member reads with its own cursor (see
//! [`room`]), so a line is stored once however many members there are, per-sender order holds
//! for every reader, and a member that stops reading only hurts itself: once it is further
//! behind than the room's retention it is told so and disconnected.
//!
//! Over UDP (`--udp`) a member is an address that sent `/join [ROOM]`; room traffic goes from
//! the room straight to the server socket, one datagram per message, and a member leaves with
//! `/quit` or when the server forgets the silent peer.
//!
//! With a [`Cluster`] (`serve --cluster`), the rooms are shared with every other server on the
//! same NATS server: members' lines, joins, departures and nick changes are published on the
//! bus as well, and what other servers publish enters the local rooms' logs like a local
//! member's traffic (see [`crate::cluster`] for the bus and the module `bus` here for the
//! chat's side). Nicks are then claimed cluster-wide before they are given.

mod bus;
pub mod room;
pub mod text;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use tracing::{debug, info};

use crate::budget::MemoryBudget;
use crate::cluster::wire::Change;
use crate::cluster::{ClaimResult, Cluster};
use crate::message::Message;
use crate::service::{ConnHandle, Lang, Outbox, PeerInfo, PushError, Service, Session};

use room::{DatagramPeer, Feed, Room, RoomSettings, Stats};
use text::{MAX_NAME_CHARS, NameError, Texts, check_name, fold, is_guest_form, sanitize};

/// The room members join when they name none.
pub const DEFAULT_ROOM: &str = "lobby";
/// Default bytes of traffic a room keeps for members that read slowly.
pub const DEFAULT_RETENTION: usize = 4 * 1024 * 1024;
/// Smallest retention accepted: a few of the largest messages.
pub const MIN_RETENTION: usize = 256 * 1024;
/// Default chat lines shown to a newcomer.
pub const DEFAULT_HISTORY: usize = 20;
/// Default most rooms at once.
pub const DEFAULT_MAX_ROOMS: usize = 1000;
/// Default most members in one room.
pub const DEFAULT_MAX_MEMBERS: usize = 10_000;
/// Default largest message a member may send (all its lines together).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// About the most bytes of room traffic one poll of a member's feed queues.
pub const FEED_BATCH: usize = 64 * 1024;
/// Names listed by `/who` and `/rooms` before the list is cut short.
const LIST_MAX: usize = 200;

/// How a chat is set up.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// The server's memory budget, which room logs are charged to (within half of it, shared
    /// with large frames); `None`: not charged.
    pub budget: Option<Arc<MemoryBudget>>,
    /// The language of notices and errors.
    pub lang: Lang,
    /// Bytes of traffic each room keeps for members that read slowly; a member further
    /// behind is disconnected. At least [`MIN_RETENTION`].
    pub retention: usize,
    /// Chat lines a newcomer gets, marked as history.
    pub history: usize,
    /// Most rooms at once.
    pub max_rooms: usize,
    /// Most members in one room.
    pub max_members: usize,
    /// Largest message a member may send, in bytes.
    pub max_message: usize,
    /// The cluster this chat shares its rooms with (`--cluster`); `None`: this server alone.
    pub cluster: Option<Cluster>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            budget: None,
            lang: Lang::En,
            retention: DEFAULT_RETENTION,
            history: DEFAULT_HISTORY,
            max_rooms: DEFAULT_MAX_ROOMS,
            max_members: DEFAULT_MAX_MEMBERS,
            max_message: DEFAULT_MAX_MESSAGE,
            cluster: None,
        }
    }
}

/// The chat service: rooms and nicks shared by every session. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Chat {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    texts: Texts,
    settings: RoomSettings,
    max_rooms: usize,
    max_message: usize,
    /// Rooms by folded name. Lock order: `rooms`, then a room's own lock.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Nicks in use by folded nick, server-wide.
    nicks: Mutex<HashMap<String, Registered>>,
    stats: Stats,
    /// The cluster, if the rooms are shared with other servers.
    cluster: Option<Cluster>,
    /// The last chat lines of rooms with members on other servers only.
    shadow: Mutex<bus::Shadow>,
    /// This, for tasks the chat starts itself.
    me: Weak<Shared>,
}

/// A nick forced on a member from outside its session (a collision found when the cluster
/// link came back), for the session to adopt.
type Forced = Arc<Mutex<Option<Arc<str>>>>;

/// Who holds a nick and how to reach them with `/msg`.
#[derive(Debug)]
struct Registered {
    nick: Arc<str>,
    id: u64,
    reach: Reach,
    /// The revision of the cluster's claim on the nick (`None`: provisional, or no cluster).
    claim: Option<u64>,
    /// The member's room.
    room: Option<Arc<Room>>,
    /// Where a nick forced on the member is left for its session.
    forced: Forced,
}

#[derive(Clone, Debug)]
enum Reach {
    /// A connection's push queue, and the largest message it can carry.
    Push(ConnHandle, usize),
    /// A UDP peer, reached through the socket directly.
    Datagram(DatagramPeer),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Chat {
    /// A chat with no rooms yet.
    pub fn new(config: ChatConfig) -> Chat {
        let shared = Arc::new_cyclic(|me| Shared {
            texts: Texts(config.lang),
            settings: RoomSettings {
                retention: config.retention.max(MIN_RETENTION),
                history: config.history,
                max_members: config.max_members.max(1),
                budget: config.budget,
            },
            max_rooms: config.max_rooms.max(1),
            max_message: config.max_message.max(1),
            rooms: Mutex::new(HashMap::new()),
            nicks: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            shadow: Mutex::new(bus::Shadow::new(config.max_rooms.max(1))),
            cluster: config.cluster.clone(),
            me: me.clone(),
        });
        if let Some(cluster) = &config.cluster {
            cluster.attach(shared.clone());
        }
        Chat { shared }
    }

    /// A session for `peer` that joins `room` (the lobby if `None`) when it opens, over any
    /// transport: what the hub's `chat [ROOM]` command uses, calling
    /// [`Session::on_open`] itself.
    pub fn session(&self, peer: &PeerInfo, room: Option<&str>) -> ChatSession {
        ChatSession::new(
            self.shared.clone(),
            peer,
            Some(room.unwrap_or(DEFAULT_ROOM).to_owned()),
        )
    }

    /// How many rooms exist.
    pub fn rooms(&self) -> usize {
        lock(&self.shared.rooms).len()
    }

    /// Datagrams to UDP members dropped because the socket's send buffer was full.
    pub fn dropped_datagrams(&self) -> u64 {
        self.shared.stats.dropped_datagrams()
    }
}

impl Default for Chat {
    fn default() -> Self {
        Chat::new(ChatConfig::default())
    }
}

impl Service for Chat {
    type Session = ChatSession;

    /// Over a connection (TCP, rudp) the member joins the lobby at once; over UDP an address
    /// becomes a member only when it sends `/join`.
    fn open(&self, peer: &PeerInfo) -> ChatSession {
        let room = peer
            .transport
            .is_connection()
            .then(|| DEFAULT_ROOM.to_owned());
        ChatSession::new(self.shared.clone(), peer, room)
    }

    /// `bye` and `quit` are chat like any other words: `/quit` leaves.
    fn quit_words(&self) -> bool {
        false
    }
}

/// A member's place in a room.
#[derive(Debug)]
struct Membership {
    room: Arc<Room>,
    /// The number of the next log line to read.
    cursor: u64,
}

/// One member: its nick, its room and its cursor in the room's log.
#[derive(Debug)]
pub struct ChatSession {
    shared: Arc<Shared>,
    id: u64,
    /// The logged-in user, whose name is the nick.
    user: Option<Arc<str>>,
    /// The room to join when the session opens.
    join_on_open: Option<String>,
    /// The nick, once registered.
    nick: Option<Arc<str>>,
    reach: Option<Reach>,
    member: Option<Membership>,
    /// UDP: where the member is.
    datagram: Option<DatagramPeer>,
    close_on_quit: bool,
    left: bool,
    /// Bytes published since the session last let other tasks run.
    unyielded: usize,
    /// A nick forced on the member from outside (see [`Registered::forced`]).
    forced: Forced,
}

impl ChatSession {
    fn new(shared: Arc<Shared>, peer: &PeerInfo, join_on_open: Option<String>) -> ChatSession {
        ChatSession {
            shared,
            id: peer.id,
            user: peer.user.clone(),
            join_on_open,
            nick: None,
            reach: None,
            member: None,
            datagram: None,
            close_on_quit: true,
            left: false,
            unyielded: 0,
            forced: Arc::new(Mutex::new(None)),
        }
    }

    /// Takes on a nick the chat forced on the member meanwhile, if any.
    fn adopt_forced(&mut self) {
        if let Some(nick) = lock(&self.forced).take() {
            self.nick = Some(nick);
        }
    }

    /// Makes `/quit` leave the chat without closing the connection (replying `* you left the
    /// chat`), for a session hosted by another service that takes over again; see
    /// [`ChatSession::has_left`].
    pub fn stay_open_on_quit(mut self) -> ChatSession {
        self.close_on_quit = false;
        self
    }

    /// Whether the member has left the chat (`/quit`, or dropped for falling behind).
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The member's nick, once it has one.
    pub fn nick(&self) -> Option<&str> {
        self.nick.as_deref()
    }

    /// The name of the member's room, if it is in one.
    pub fn room(&self) -> Option<&str> {
        self.member.as_ref().map(|m| &**m.room.name())
    }

    fn texts(&self) -> Texts {
        self.shared.texts
    }

    /// Learns how to reach this member from its outbox (the first time only).
    fn learn_reach(&mut self, out: &mut Outbox) {
        if self.reach.is_some() {
            return;
        }
        let addr = out.peer().socket_addr();
        let reach = match (out.datagram_socket(), addr) {
            (Some(socket), Some(addr)) => {
                let peer = DatagramPeer {
                    addr,
                    socket: socket.clone(),
                    newline: Arc::new(AtomicBool::new(false)),
                };
                self.datagram = Some(peer.clone());
                Reach::Datagram(peer)
            }
            _ => Reach::Push(out.handle(), out.max_message()),
        };
        self.reach = Some(reach);
    }

    /// Gives the member its default nick (its user name when logged in, else `guestN`), or
    /// the first free variant of it, if it has none yet.
    async fn ensure_nick(&mut self, out: &mut Outbox) -> Arc<str> {
        if let Some(nick) = &self.nick {
            return nick.clone();
        }
        self.learn_reach(out);
        let guest = format!("guest{}", self.id);
        // A user name is made a valid nick: spaces become `_`, and it is cut to length.
        let base = self
            .user
            .as_deref()
            .map(|u| {
                let clean: String = sanitize(u.as_bytes())
                    .chars()
                    .map(|c| if c.is_whitespace() { '_' } else { c })
                    .collect();
                text::truncate_chars(&clean, MAX_NAME_CHARS).to_owned()
            })
            .filter(|u| check_name(u).is_ok())
            .unwrap_or(guest.clone());
        let reach = self
            .reach
            .clone()
            .unwrap_or_else(|| Reach::Push(out.handle(), out.max_message()));
        // The last sequence is unbounded and nicks are finite, so a free one is found.
        let candidates = std::iter::once(base.clone())
            .chain((2..=100).map(|k| suffixed(&base, k)))
            .chain(std::iter::once(guest.clone()))
            .chain((2u64..).map(|k| suffixed(&guest, k)));
        let mut chosen: Arc<str> = guest.as_str().into();
        for candidate in candidates {
            let key = fold(&candidate);
            let nick: Arc<str> = candidate.into();
            {
                let mut nicks = lock(&self.shared.nicks);
                if nicks.contains_key(&key) {
                    continue;
                }
                // Known to be someone's on another server: not worth asking the cluster.
                if let Some(cluster) = &self.shared.cluster {
                    if cluster.find_nick(&key).is_some() {
                        continue;
                    }
                }
                nicks.insert(
                    key.clone(),
                    Registered {
                        nick: nick.clone(),
                        id: self.id,
                        reach: reach.clone(),
                        claim: None,
                        room: None,
                        forced: self.forced.clone(),
                    },
                );
            }
            chosen = nick.clone();
            let Some(cluster) = self.shared.cluster.clone() else {
                break;
            };
            match cluster.claim(&key, &nick, self.id).await {
                ClaimResult::Claimed(rev) => {
                    self.shared.set_claim(&key, self.id, rev);
                    break;
                }
                // Provisional: claimed when the link comes back.
                ClaimResult::Offline => break,
                ClaimResult::Taken => {
                    self.shared.forget(&key, self.id);
                }
            }
        }
        self.nick = Some(chosen.clone());
        chosen
    }

    /// Joins `name`, leaving the current room; the reply is the welcome and the history.
    async fn join(&mut self, name: &str, out: &mut Outbox) -> String {
        let t = self.texts();
        let clean = sanitize(name.as_bytes());
        let clean = clean.strip_prefix('#').unwrap_or(&clean);
        if let Err(why) = check_name(clean) {
            return t.bad_name(true, truncate_for_error(clean), why);
        }
        let key = fold(clean);
        if let Some(m) = &self.member {
            if m.room.key() == key {
                return t.already_in(m.room.name());
            }
        }
        let nick = self.ensure_nick(out).await;
        // A room new here but with members elsewhere: its history is asked for (the room
        // itself is made below, with the registry locked).
        let mut told: Option<Vec<String>> = None;
        if let Some(cluster) = &self.shared.cluster {
            let unknown = !lock(&self.shared.rooms).contains_key(&key)
                && !lock(&self.shared.shadow).has(&key);
            if unknown && !cluster.members_in(&key).is_empty() {
                told = cluster.history(clean).await.map(|lines| {
                    lines
                        .iter()
                        .map(|l| sanitize(l.as_bytes()))
                        .filter(|l| !l.trim().is_empty())
                        .collect()
                });
            }
        }
        let (room, joined, old, old_empty) = {
            let mut rooms = lock(&self.shared.rooms);
            let room = match rooms.get(&key) {
                Some(room) => room.clone(),
                None => {
                    if rooms.len() >= self.shared.max_rooms {
                        return t.too_many_rooms(self.shared.max_rooms);
                    }
                    let room = Arc::new(Room::new(clean, &key, &self.shared.settings));
                    if self.shared.cluster.is_some() {
                        let kept = lock(&self.shared.shadow).take(&key);
                        let lines = match (told, kept) {
                            // Lines that came from the bus while the answer was awaited
                            // follow the answer, unless it had them already.
                            (Some(mut told), Some(kept)) => {
                                for line in kept {
                                    if !told.contains(&line) {
                                        told.push(line);
                                    }
                                }
                                Some(told)
                            }
                            (told, kept) => kept.or(told),
                        };
                        if let Some(lines) = lines {
                            room.seed_history(lines);
                        }
                    }
                    rooms.insert(key.clone(), room.clone());
                    room
                }
            };
            let Some(joined) = room.add(self.id, nick.clone(), self.datagram.clone()) else {
                return t.room_full(room.name(), self.shared.settings.max_members);
            };
            let old = self.member.take();
            let old_empty = old
                .as_ref()
                .is_some_and(|m| leave_locked(&self.shared, &mut rooms, &m.room, self.id));
            (room, joined, old, old_empty)
        };
        self.shared.set_room(&nick, self.id, Some(room.clone()));
        if let Some(cluster) = &self.shared.cluster {
            cluster.presence(Change::Join {
                member: crate::cluster::wire::Member {
                    id: self.id,
                    nick: nick.to_string(),
                    room: Some(room.name().to_string()),
                },
            });
        }
        if let Some(old) = old {
            if !old_empty {
                old.room
                    .publish(self.id, &[t.left(&nick)], false, None, &self.shared.stats);
            }
        }
        let mut cursor = joined.cursor;
        room.publish(
            self.id,
            &[t.joined(&nick)],
            false,
            Some(&mut cursor),
            &self.shared.stats,
        );
        debug!("chat: {nick} joined {}", room.name());
        let remote = self
            .shared
            .cluster
            .as_ref()
            .map_or(0, |c| c.members_in(room.key()).len());
        let mut reply = t.welcome(&nick, room.name(), joined.members + remote);
        for line in &joined.history {
            reply.push('\n');
            reply.push_str(t.history());
            reply.push_str(line);
        }
        self.member = Some(Membership { room, cursor });
        reply
    }

    /// Leaves the current room, if any, telling the others.
    fn leave(&mut self) {
        let Some(m) = self.member.take() else {
            return;
        };
        let empty = {
            let mut rooms = lock(&self.shared.rooms);
            leave_locked(&self.shared, &mut rooms, &m.room, self.id)
        };
        if let Some(nick) = &self.nick {
            self.shared.set_room(nick, self.id, None);
        }
        if !empty {
            if let Some(nick) = &self.nick {
                m.room.publish(
                    self.id,
                    &[self.texts().left(nick)],
                    false,
                    None,
                    &self.shared.stats,
                );
            }
        }
    }

    /// Gives the nick up.
    fn unregister(&mut self) {
        self.adopt_forced();
        if let Some(nick) = self.nick.take() {
            let key = fold(&nick);
            let claim = self.shared.forget(&key, self.id);
            if let Some(cluster) = &self.shared.cluster {
                if let Some(rev) = claim {
                    cluster.release(&key, rev);
                }
                cluster.presence(Change::Leave {
                    id: self.id,
                    gone: true,
                });
            }
        }
    }

    /// Leaves the room and gives the nick up.
    fn depart(&mut self) {
        self.leave();
        self.unregister();
        self.left = true;
    }

    async fn rename(&mut self, arg: &str, out: &mut Outbox) -> String {
        let t = self.texts();
        if let Some(user) = &self.user {
            return t.nick_is_login(user);
        }
        let Some(wanted) = arg.split_whitespace().next() else {
            return t.usage("/nick NAME");
        };
        if arg.split_whitespace().nth(1).is_some() {
            return t.bad_name(false, truncate_for_error(arg), NameError::Space);
        }
        if let Err(why) = check_name(wanted) {
            return t.bad_name(false, truncate_for_error(wanted), why);
        }
        let old = self.ensure_nick(out).await;
        let key = fold(wanted);
        if is_guest_form(wanted) && key != fold(&old) {
            return t.nick_reserved(wanted);
        }
        if *old == *wanted {
            return t.now_known_as(wanted);
        }
        let new: Arc<str> = wanted.into();
        let old_key = fold(&old);
        let same_key = key == old_key;
        if !same_key {
            if let Some(cluster) = &self.shared.cluster {
                if cluster.find_nick(&key).is_some() {
                    return t.nick_taken(wanted);
                }
            }
        }
        let (reach, old_claim) = {
            let nicks = lock(&self.shared.nicks);
            if nicks.get(&key).is_some_and(|r| r.id != self.id) {
                return t.nick_taken(wanted);
            }
            match nicks.get(&old_key) {
                Some(entry) if entry.id == self.id => (entry.reach.clone(), entry.claim),
                _ => (
                    self.reach
                        .clone()
                        .unwrap_or_else(|| Reach::Push(out.handle(), out.max_message())),
                    None,
                ),
            }
        };
        // The new nick is claimed in the cluster before the old one is given up.
        let mut claim = old_claim.filter(|_| same_key);
        if let (Some(cluster), false) = (self.shared.cluster.clone(), same_key) {
            match cluster.claim(&key, &new, self.id).await {
                ClaimResult::Claimed(rev) => claim = Some(rev),
                ClaimResult::Offline => {}
                ClaimResult::Taken => return t.nick_taken(wanted),
            }
        }
        {
            let mut nicks = lock(&self.shared.nicks);
            if nicks.get(&key).is_some_and(|r| r.id != self.id) {
                drop(nicks);
                if let (Some(cluster), Some(rev)) = (&self.shared.cluster, claim) {
                    cluster.release(&key, rev);
                }
                return t.nick_taken(wanted);
            }
            if nicks.get(&old_key).is_some_and(|r| r.id == self.id) {
                nicks.remove(&old_key);
            }
            nicks.insert(
                key.clone(),
                Registered {
                    nick: new.clone(),
                    id: self.id,
                    reach,
                    claim,
                    room: self.member.as_ref().map(|m| m.room.clone()),
                    forced: self.forced.clone(),
                },
            );
        }
        if let Some(cluster) = &self.shared.cluster {
            if let (Some(rev), false) = (old_claim, same_key) {
                cluster.release(&old_key, rev);
            }
            cluster.presence(Change::Rename {
                id: self.id,
                nick: new.to_string(),
            });
        }
        self.nick = Some(new.clone());
        if let Some(m) = &mut self.member {
            m.room.rename(self.id, new.clone());
            m.room.publish(
                self.id,
                &[t.renamed(&old, &new)],
                false,
                Some(&mut m.cursor),
                &self.shared.stats,
            );
        }
        t.now_known_as(&new)
    }

    async fn private(&mut self, arg: &str, out: &mut Outbox) -> String {
        let t = self.texts();
        let arg = arg.trim_start();
        let (to, text) = match arg.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => (to, text.trim_start()),
            _ => return t.usage("/msg NICK TEXT"),
        };
        let from = self.ensure_nick(out).await;
        let key = fold(to);
        let target = lock(&self.shared.nicks)
            .get(&key)
            .map(|r| (r.nick.clone(), r.reach.clone()));
        let Some((nick, reach)) = target else {
            let remote = self.shared.cluster.as_ref().and_then(|c| {
                let (node, nick) = c.find_nick(&key)?;
                Some((c.private(&node, &key, &from, text), nick))
            });
            return match remote {
                Some((true, nick)) => t.private_to(&nick, text),
                Some((false, nick)) => t.not_delivered(&nick),
                None => t.no_such_nick(truncate_for_error(to)),
            };
        };
        let line = t.private_from(&from, text);
        match reach {
            Reach::Push(handle, max) => match handle.try_send(Message::text(fit(line, max))) {
                Ok(()) => {}
                Err(PushError::Full) => return t.not_delivered(&nick),
                Err(PushError::Closed) => return t.no_such_nick(&nick),
            },
            Reach::Datagram(peer) => peer.send(&line, &self.shared.stats),
        }
        t.private_to(&nick, text)
    }

    fn who(&self) -> String {
        let t = self.texts();
        let Some(m) = &self.member else {
            return t.not_in_room(self.datagram.is_some());
        };
        let mut nicks = m.room.nicks();
        if let Some(cluster) = &self.shared.cluster {
            nicks.extend(cluster.members_in(m.room.key()).into_iter().map(Arc::from));
        }
        nicks.sort_by_cached_key(|n| fold(n));
        let mut reply = t.who(m.room.name(), nicks.len());
        list(
            &mut reply,
            nicks.iter().map(|n| n.to_string()),
            nicks.len(),
            t,
        );
        reply
    }

    fn rooms(&self) -> String {
        let t = self.texts();
        // Counted outside the registry lock, room by room.
        let all: Vec<Arc<Room>> = lock(&self.shared.rooms).values().cloned().collect();
        let mut rooms: Vec<(Arc<str>, usize)> =
            all.iter().map(|r| (r.name().clone(), r.len())).collect();
        if let Some(cluster) = &self.shared.cluster {
            let mut remote = cluster.rooms();
            for (room, entry) in all.iter().zip(rooms.iter_mut()) {
                if let Some((_, more)) = remote.remove(room.key()) {
                    entry.1 += more;
                }
            }
            rooms.extend(remote.into_values().map(|(name, n)| (Arc::from(name), n)));
        }
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| fold(&a.0).cmp(&fold(&b.0))));
        let mut reply = t.rooms(rooms.len());
        let total = rooms.len();
        list(
            &mut reply,
            rooms.into_iter().map(|(name, n)| format!("{name} ({n})")),
            total,
            t,
        );
        reply
    }

    /// Runs one command line (starting with `/`); returns the reply.
    async fn command(&mut self, line: &str, out: &mut Outbox) -> String {
        let t = self.texts();
        let (name, arg) = match line.split_once(char::is_whitespace) {
            Some((name, arg)) => (name, arg.trim()),
            None => (line, ""),
        };
        match name.to_ascii_lowercase().as_str() {
            "/nick" => self.rename(arg, out).await,
            "/join" => {
                let room = arg.split_whitespace().next().unwrap_or(DEFAULT_ROOM);
                if arg.split_whitespace().nth(1).is_some() {
                    return t.bad_name(true, truncate_for_error(arg), NameError::Space);
                }
                self.join(room, out).await
            }
            "/who" | "/names" => self.who(),
            "/msg" => self.private(arg, out).await,
            "/rooms" | "/list" => self.rooms(),
            "/help" => t.help(self.datagram.is_some()),
            "/quit" => {
                self.depart();
                if self.close_on_quit {
                    out.close();
                    t.bye().to_owned()
                } else {
                    t.left_chat().to_owned()
                }
            }
            _ => t.unknown_command(truncate_for_error(name)),
        }
    }
}

/// `base` with `-k` appended, shortened to stay within the nick length.
fn suffixed(base: &str, k: u64) -> String {
    let suffix = format!("-{k}");
    let keep = MAX_NAME_CHARS.saturating_sub(suffix.chars().count());
    format!("{}{suffix}", text::truncate_chars(base, keep))
}

/// `text` cut to at most `max` bytes, at the last line break that fits if there is one (a
/// reply's later lines go), else at a character boundary.
fn fit(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    if let Some(nl) = text[..cut.min(text.len())].rfind('\n').filter(|&nl| nl > 0) {
        cut = nl;
    }
    text.truncate(cut);
    text
}

/// An unknown command as quoted back: at most 40 characters of it.
fn truncate_for_error(name: &str) -> &str {
    text::truncate_chars(name, 40)
}

/// Appends ` a, b, c` (at most [`LIST_MAX`] items, then `… and N more`) to `reply`.
fn list(reply: &mut String, items: impl Iterator<Item = String>, total: usize, t: Texts) {
    for (i, item) in items.take(LIST_MAX).enumerate() {
        reply.push_str(if i == 0 { " " } else { ", " });
        reply.push_str(&item);
    }
    if total > LIST_MAX {
        reply.push_str(", ");
        reply.push_str(&t.and_more(total - LIST_MAX));
    }
}

/// Removes member `id` from `room` with the registry locked, dropping the room from the
/// registry if it is now empty; returns whether it was.
fn leave_locked(
    shared: &Shared,
    rooms: &mut HashMap<String, Arc<Room>>,
    room: &Arc<Room>,
    id: u64,
) -> bool {
    let empty = room.remove(id);
    if empty && rooms.get(room.key()).is_some_and(|r| Arc::ptr_eq(r, room)) {
        rooms.remove(room.key());
        if shared.cluster.is_some() {
            // Members elsewhere may go on talking in it: its history is kept for the next
            // member here.
            lock(&shared.shadow).put(room.key(), room.history());
        }
        debug!("chat: room {} is empty and closed", room.name());
    }
    empty
}

impl Session for ChatSession {
    async fn on_open(&mut self, out: &mut Outbox) {
        self.learn_reach(out);
        if let Some(room) = self.join_on_open.take() {
            let reply = self.join(&room, out).await;
            out.send(Message::text(fit(reply, out.max_message())));
        }
    }

    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        self.learn_reach(out);
        self.adopt_forced();
        let t = self.texts();
        let body = msg.body();
        if let Some(peer) = &self.datagram {
            peer.newline
                .store(body.last() == Some(&b'\n'), Ordering::Relaxed);
        }
        if body.len() > self.shared.max_message {
            let reply = t.too_long(body.len(), self.shared.max_message);
            out.send(Message::text(fit(reply, out.max_message())));
            return;
        }
        let mut replies: Vec<String> = Vec::new();
        let mut lines: Vec<String> = Vec::new();
        let mut not_in_room = false;
        for raw in body.split(|&b| b == b'\n') {
            let line = sanitize(raw);
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with('/') && !line.starts_with("//") {
                self.publish(&mut lines).await;
                let reply = self.command(&line, out).await;
                replies.push(reply);
                if self.left {
                    break;
                }
                continue;
            }
            let text = line.strip_prefix('/').filter(|_| line.starts_with("//"));
            let text = text.unwrap_or(&line);
            match &self.nick {
                Some(nick) if self.member.is_some() => lines.push(format!("<{nick}> {text}")),
                _ => not_in_room = true,
            }
        }
        self.publish(&mut lines).await;
        self.pace().await;
        if not_in_room {
            replies.push(t.not_in_room(self.datagram.is_some()));
        }
        if !replies.is_empty() {
            out.send(Message::text(fit(replies.join("\n"), out.max_message())));
        } else if !self.left {
            // A member that keeps talking has its input read before its feed is polled: take a
            // batch of the room's traffic now, so that talking never makes it fall behind.
            let _ = self.pull(None, out);
        }
    }

    fn on_close(&mut self) {
        self.depart();
    }

    fn poll_feed(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<()> {
        self.pull(Some(cx), out)
    }

    fn ends_on_quit_word(&self) -> bool {
        false
    }
}

impl ChatSession {
    /// Queues the next batch of room traffic into `out`; at the end of the log, arranges for
    /// `cx` (if given) to be woken by the next line.
    fn pull(&mut self, cx: Option<&Context<'_>>, out: &mut Outbox) -> Poll<()> {
        self.adopt_forced();
        // UDP members are sent their room's traffic directly; a member in no room has no feed
        // until it joins one, which happens in `on_message`, after which the driver polls again.
        if self.datagram.is_some() {
            return Poll::Pending;
        }
        let Some(m) = &mut self.member else {
            return Poll::Pending;
        };
        let max = FEED_BATCH.min(out.max_message());
        match m.room.feed(self.id, &mut m.cursor, cx, max) {
            Feed::Batch(mut batch) => {
                // Every line ends with `\n`; the framing ends the message itself.
                batch.pop();
                let text = String::from_utf8(batch)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                out.send(Message::text(text));
                Poll::Ready(())
            }
            Feed::Waiting => Poll::Pending,
            Feed::Behind => {
                let room = m.room.name().clone();
                let t = self.texts();
                info!(
                    "chat: {} fell behind in {room} and is disconnected",
                    self.nick.as_deref().unwrap_or("?"),
                );
                let notice = t.fell_behind(self.shared.settings.retention);
                out.send(Message::text(fit(notice, out.max_message())));
                out.close();
                self.depart();
                Poll::Ready(())
            }
        }
    }

    /// Sends the chat lines gathered so far to the room.
    async fn publish(&mut self, lines: &mut Vec<String>) {
        if lines.is_empty() {
            return;
        }
        if let Some(m) = &mut self.member {
            m.room.publish(
                self.id,
                lines,
                true,
                Some(&mut m.cursor),
                &self.shared.stats,
            );
            self.unyielded += lines.iter().map(|l| l.len() + 1).sum::<usize>();
            // The other servers get the lines in the order this member sent them; waiting for
            // room in the bus queue is this member's back-pressure.
            if let Some(cluster) = &self.shared.cluster {
                let room = m.room.name().clone();
                cluster.lines(&room, lines).await;
            }
        }
        lines.clear();
    }

    /// After every [`FEED_BATCH`] bytes a member publishes, lets other tasks run: the members
    /// it woke are queued behind it on its worker thread, and a member that floods the room
    /// must not keep them from reading until they fall behind.
    async fn pace(&mut self) {
        if self.unyielded >= FEED_BATCH {
            self.unyielded = 0;
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for ChatSession {
    /// A session dropped without `on_close` (its host gave up on it) still leaves.
    fn drop(&mut self) {
        self.depart();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PeerAddr;
    use crate::service::Transport;

    fn peer(id: u64, user: Option<&str>) -> PeerInfo {
        PeerInfo {
            id,
            addr: PeerAddr::Inet("127.0.0.1:1".parse().unwrap()),
            transport: Transport::Tcp,
            user: user.map(Arc::from),
        }
    }

    fn outbox() -> Outbox {
        Outbox::for_stream(PeerAddr::Inet("127.0.0.1:1".parse().unwrap()))
    }

    fn replies(out: &mut Outbox) -> Vec<String> {
        out.drain()
            .map(|m| String::from_utf8(m.body().to_vec()).unwrap())
            .collect()
    }

    async fn open(chat: &Chat, id: u64, room: &str) -> (ChatSession, Outbox, String) {
        let mut session = chat.session(&peer(id, None), Some(room));
        let mut out = outbox();
        session.on_open(&mut out).await;
        let reply = replies(&mut out).join("\n");
        (session, out, reply)
    }

    #[test]
    fn replies_are_cut_to_fit_at_a_line_break_or_a_character() {
        assert_eq!(fit("short".into(), 10), "short");
        assert_eq!(fit("one\ntwo\nthree".into(), 9), "one\ntwo");
        assert_eq!(fit("abcdef".into(), 4), "abcd");
        assert_eq!(fit("ab€cd".into(), 4), "ab");
        assert_eq!(fit("\nabc".into(), 2), "\na");
    }

    #[tokio::test]
    async fn rooms_and_members_are_bounded_and_empty_rooms_go_away() {
        let chat = Chat::new(ChatConfig {
            max_rooms: 2,
            max_members: 2,
            ..ChatConfig::default()
        });
        let (a, _, reply) = open(&chat, 1, "one").await;
        assert!(
            reply.starts_with("* you are guest1 in one (1 member)"),
            "{reply}"
        );
        let (mut b, mut b_out, _) = open(&chat, 2, "two").await;
        let (mut c, mut c_out, reply) = open(&chat, 3, "three").await;
        assert_eq!(
            reply,
            "error: too many rooms (2); join an existing one (/rooms)"
        );
        c.on_message(Message::new("/join one"), &mut c_out).await;
        assert!(replies(&mut c_out)[0].contains(" in one (2 members)"));
        let (mut d, mut d_out, reply) = open(&chat, 4, "ONE").await;
        assert_eq!(reply, "error: room one is full (2 members)");
        d.on_message(Message::new("hello?"), &mut d_out).await;
        assert_eq!(
            replies(&mut d_out),
            ["error: you are not in a room: /join ROOM"]
        );
        assert_eq!(chat.rooms(), 2);
        drop(a);
        drop(c);
        assert_eq!(chat.rooms(), 1, "room one is empty and gone");
        b.on_message(Message::new("/quit"), &mut b_out).await;
        assert_eq!(replies(&mut b_out), ["bye"]);
        assert!(b_out.is_closing());
        assert_eq!(chat.rooms(), 0);
    }

    #[tokio::test]
    async fn a_logged_in_user_is_known_by_name() {
        let chat = Chat::default();
        let mut first = chat.session(&peer(1, Some("alice")), None);
        let mut out = outbox();
        first.on_open(&mut out).await;
        assert!(replies(&mut out)[0].starts_with("* you are alice in lobby"));
        first.on_message(Message::new("/nick bob"), &mut out).await;
        assert_eq!(
            replies(&mut out),
            ["error: you are logged in as alice: your nick is your user name"]
        );
        // The same user twice, and a guest whose default nick is taken.
        let mut second = chat.session(&peer(2, Some("ALICE")), None);
        second.on_open(&mut out).await;
        assert!(replies(&mut out)[0].starts_with("* you are ALICE-2 in lobby"));
        let mut spaced = chat.session(&peer(5, Some("Ann Lee\u{1b}[1m")), None);
        spaced.on_open(&mut out).await;
        assert_eq!(spaced.nick(), Some("Ann_Lee"));
        replies(&mut out);
        let mut squatter = chat.session(&peer(3, Some("guest4")), None);
        squatter.on_open(&mut out).await;
        let mut guest = chat.session(&peer(4, None), None);
        guest.on_open(&mut out).await;
        let welcome = replies(&mut out);
        assert!(
            welcome[1].starts_with("* you are guest4-2 in lobby"),
            "{welcome:?}"
        );
        assert_eq!(guest.nick(), Some("guest4-2"));
        assert_eq!(guest.room(), Some("lobby"));
    }

    #[tokio::test]
    async fn a_hosted_session_can_stay_open_on_quit() {
        let chat = Chat::default();
        let mut session = chat
            .session(&peer(1, None), Some("den"))
            .stay_open_on_quit();
        let mut out = outbox();
        session.on_open(&mut out).await;
        replies(&mut out);
        assert!(!session.has_left());
        session
            .on_message(Message::new("hello\n/quit\nignored"), &mut out)
            .await;
        assert_eq!(replies(&mut out), ["* you left the chat"]);
        assert!(!out.is_closing());
        assert!(session.has_left());
        assert_eq!(chat.rooms(), 0);
        assert!(!session.ends_on_quit_word());
    }

    #[tokio::test]
    async fn the_feed_skips_own_lines_and_wakes_only_waiting_members() {
        use std::sync::atomic::AtomicUsize;
        use std::task::{Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let chat = Chat::default();
        let (mut a, mut a_out, _) = open(&chat, 1, "lobby").await;
        let (mut b, mut b_out, _) = open(&chat, 2, "lobby").await;
        // Blank lines, and lines that are blank once stripped, are not sent.
        b.on_message(Message::new(" \t\r\n\u{1b}[0m\n\n"), &mut b_out)
            .await;
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // a has b's join to read, then waits.
        assert!(a.poll_feed(&mut cx, &mut a_out).is_ready());
        assert_eq!(replies(&mut a_out), ["* guest2 joined"]);
        assert!(a.poll_feed(&mut cx, &mut a_out).is_pending());
        // Ten lines wake a once, not ten times.
        for n in 0..10 {
            b.on_message(Message::new(format!("line {n}")), &mut b_out)
                .await;
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(a.poll_feed(&mut cx, &mut a_out).is_ready());
        let got = replies(&mut a_out);
        assert_eq!(got.len(), 1, "one batch");
        assert_eq!(got[0].lines().count(), 10);
        assert!(got[0].starts_with("<guest2> line 0\n"));
        // b never sees its own lines.
        assert!(replies(&mut b_out).is_empty());
        assert!(b.poll_feed(&mut cx, &mut b_out).is_pending());
    }
}
