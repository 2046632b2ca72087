//! Chat across servers: several `sockit serve` processes connected to one NATS server share
//! their chat rooms.
//!
//! Every server publishes what its own members do (chat lines, joins, departures, nick changes)
//! on NATS subjects under `sockit.chat` (see [`wire`]) and subscribes to everything the others
//! publish, with one subscription, so that the messages of one server reach every other in the
//! order they were sent. NATS does not echo a server's messages back to itself, so each line
//! reaches the members of its own server once, from the room's log, and every other server once,
//! from the bus.
//!
//! Presence: each server keeps a table of the other servers' members (the *remote* members),
//! built from snapshots (asked for when a server connects) and kept current by the changes,
//! which carry a version number; a gap in the versions, or a heartbeat announcing a version the
//! table has not reached, asks that server for a new snapshot. Heartbeats go out every second;
//! a server not heard from for [`LEASE`] is taken as dead and its members are announced as gone.
//!
//! Nicks are unique across the cluster by an atomic create in the JetStream key-value bucket
//! [`NICK_BUCKET`] (Debian's nats-server 2.9 has no per-key TTL): a claim names the server and
//! process that made it, and a claim whose owner is dead (no heartbeat within the lease, or a
//! newer process under the same node name) may be taken over with a revision-checked update.
//! Departing members release their claims; a dead server's claims are deleted by one surviving
//! server.
//!
//! When the link to NATS is lost, the chat keeps working locally: members get one notice, nicks
//! taken meanwhile are provisional, and once the client has reconnected (by itself, with
//! backoff) the chat re-claims them and renames the members whose nick was taken elsewhere.

pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::logging::RateLimited;
use crate::service::chat::text::fold;
use wire::{Bus, Change, Claim, Member};

/// A server not heard from for this long is dead: its members are gone, its nicks free.
pub const LEASE: Duration = Duration::from_millis(3000);
/// How often a server says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// The key-value bucket of nick claims.
pub const NICK_BUCKET: &str = "sockit-chat-nicks";
/// Bus messages waiting to be published, at most; a member publishing chat lines waits for
/// room, so this is the only queue between the members and the NATS client.
pub const OUT_QUEUE: usize = 1024;
/// Messages the NATS client buffers for the subscription before dropping (a slow consumer).
pub const SUB_CAPACITY: usize = 4096;
/// How long a key-value operation may take before the link counts as down for it.
const KV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one publish may wait for the NATS client before the message is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a newcomer's server waits for another server to tell it a room's history.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes of bus messages handled between two yields of the receiving task.
const PACE_BYTES: usize = 64 * 1024;
/// Most members kept for a server whose snapshot parts are still arriving.
const MAX_PENDING: usize = 100 * wire::SNAPSHOT_PART;

/// Where the cluster is and who this server is in it.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The NATS server, `nats://HOST:PORT`.
    pub url: String,
    /// This server's name in the cluster (see [`wire::valid_node`]).
    pub node: String,
}

/// The default node name: the host name and the process id.
pub fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(20)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sockit".into());
    format!("{host}-{}", std::process::id())
}

/// What the chat does with what comes from the other servers. Room names are as their
/// creator wrote them; the chat folds them to find its own room.
pub trait Inbound: Send + Sync + 'static {
    /// Chat lines for `room` (each `<nick> text`).
    fn lines(&self, room: &str, lines: Vec<String>);
    /// `nick` (on another server) entered `room`.
    fn joined(&self, room: &str, nick: &str);
    /// `nick` (on another server) left `room`.
    fn left(&self, room: &str, nick: &str);
    /// A member of `room` on another server changed nick.
    fn renamed(&self, room: &str, old: &str, new: &str);
    /// A private message for the local member whose folded nick is `to`.
    fn private(&self, to: &str, from: &str, text: &str);
    /// The link to NATS was lost (`false`) or restored after a loss (`true`).
    fn link(&self, up: bool);
    /// The link is up (the first time, or again): claim every local nick in the cluster,
    /// renaming the members whose nick someone else got meanwhile.
    fn reclaim(&self);
    /// This server's members, for a snapshot.
    fn members(&self) -> Vec<Member>;
    /// The last chat lines of `room`, if this server knows the room (has members in it, or
    /// kept its history); asked by a server whose newcomer enters a room it does not know.
    fn history(&self, room: &str) -> Option<Vec<String>>;
}

/// The outcome of a nick claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimResult {
    /// The nick is this member's, at this revision of its key.
    Claimed(u64),
    /// A live member elsewhere has it.
    Taken,
    /// NATS cannot be reached: the nick is provisional.
    Offline,
}

/// Link state and counters, for the banner and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This server's node name.
    pub node: String,
    /// The NATS server.
    pub url: String,
    /// Whether the link is up.
    pub connected: bool,
    /// Other servers currently alive.
    pub peers: usize,
}

enum Out {
    Publish(String, Bytes),
    /// Chat lines for a room, merged with the next ones for the same room when published.
    Lines(String, Vec<String>),
    Release(String, u64),
}

/// Lines of consecutive [`Out::Lines`] for one room are merged into one bus message up to
/// about this many bytes: a burst crosses the bus in few messages.
const MERGE_BYTES: usize = 64 * 1024;

/// Another server, as this one knows it.
#[derive(Debug)]
struct Node {
    inst: u64,
    seen: Instant,
    pv: u64,
    members: HashMap<u64, Member>,
    /// Snapshot parts received so far.
    pending: Vec<Member>,
    /// Heartbeats in a row announcing a version the table has not reached.
    mismatch: u8,
}

impl Node {
    fn new(inst: u64) -> Node {
        Node {
            inst,
            seen: Instant::now(),
            pv: 0,
            members: HashMap::new(),
            pending: Vec::new(),
            mismatch: 0,
        }
    }
}

struct Inner {
    node: String,
    inst: u64,
    url: String,
    out: mpsc::Sender<Out>,
    out_rx: Mutex<Option<mpsc::Receiver<Out>>>,
    up: AtomicBool,
    /// Whether members were told the link is lost (and so must hear it is restored).
    told_lost: AtomicBool,
    ever_up: AtomicBool,
    nodes: Mutex<HashMap<String, Node>>,
    /// Until then, a server not heard from yet may still be alive.
    grace_until: Mutex<Instant>,
    /// This server's presence version.
    pv: Mutex<u64>,
    client: OnceLock<async_nats::Client>,
    kv: Mutex<Option<kv::Store>>,
    inbound: OnceLock<Arc<dyn Inbound>>,
    dropped_out: AtomicU64,
    bad_in: AtomicU64,
    bad_log: Mutex<RateLimited>,
}

/// One server's link to the cluster. Cloning shares it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .field("url", &self.inner.url)
            .field("up", &self.inner.up.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A number that differs between two starts of the same server.
fn instance_number() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Kept within JSON's exact integers.
    (nanos ^ (u64::from(std::process::id()) << 32)) & ((1 << 53) - 1)
}

/// Reconnect delays: 100 ms doubling to at most 2 s.
fn backoff(attempts: usize) -> Duration {
    let shift = attempts.min(5) as u32;
    Duration::from_millis((100u64 << shift).min(2000))
}

impl Cluster {
    /// A link not started yet; see [`Cluster::attach`] and [`Cluster::start`].
    pub fn new(config: ClusterConfig) -> Cluster {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        Cluster {
            inner: Arc::new(Inner {
                node: config.node,
                inst: instance_number(),
                url: config.url,
                out,
                out_rx: Mutex::new(Some(out_rx)),
                up: AtomicBool::new(false),
                told_lost: AtomicBool::new(false),
                ever_up: AtomicBool::new(false),
                nodes: Mutex::new(HashMap::new()),
                grace_until: Mutex::new(Instant::now() + LEASE),
                pv: Mutex::new(0),
                client: OnceLock::new(),
                kv: Mutex::new(None),
                inbound: OnceLock::new(),
                dropped_out: AtomicU64::new(0),
                bad_in: AtomicU64::new(0),
                bad_log: Mutex::new(RateLimited::new(Duration::from_secs(1))),
            }),
        }
    }

    /// Gives the link the chat that handles what arrives (the first call only counts).
    pub fn attach(&self, inbound: Arc<dyn Inbound>) {
        let _ = self.inner.inbound.set(inbound);
    }

    /// This server's node name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the link to NATS is up.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The link's state.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        Status {
            node: self.inner.node.clone(),
            url: self.inner.url.clone(),
            connected: self.is_up(),
            peers: lock(&self.inner.nodes)
                .values()
                .filter(|n| now.duration_since(n.seen) < LEASE)
                .count(),
        }
    }

    /// How long until a server not heard from since the link (last) came up counts as dead:
    /// a claim such a server holds may be stale, but cannot be taken over before then.
    pub fn settling(&self) -> Duration {
        lock(&self.inner.grace_until).saturating_duration_since(Instant::now())
    }

    /// Bus messages not published because the link was down, and bus messages received that
    /// were dropped as malformed or oversized.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.inner.dropped_out.load(Ordering::Relaxed),
            self.inner.bad_in.load(Ordering::Relaxed),
        )
    }

    /// Connects (in the background, retrying with backoff for ever) and starts the tasks that
    /// publish, receive and send heartbeats; waits at most `wait` for the first connection.
    /// Returns whether the link is up. Call it once, inside the runtime.
    pub async fn start(&self, wait: Duration) -> Result<bool, String> {
        let Some(out_rx) = lock(&self.inner.out_rx).take() else {
            return Ok(self.is_up());
        };
        let (events_tx, events_rx) = mpsc::channel::<async_nats::Event>(256);
        let options = async_nats::ConnectOptions::new()
            .name(format!("sockit-{}", self.inner.node))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(backoff)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(KV_TIMEOUT))
            .subscription_capacity(SUB_CAPACITY)
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.try_send(event);
                }
            });
        let client = async_nats::connect_with_options(self.inner.url.as_str(), options)
            .await
            .map_err(|e| format!("cannot use NATS at {}: {e}", self.inner.url))?;
        let subscriber = client
            .subscribe(wire::all_subjects())
            .await
            .map_err(|e| format!("cannot subscribe on NATS at {}: {e}", self.inner.url))?;
        let _ = self.inner.client.set(client.clone());
        tokio::spawn(self.clone().events(events_rx, client.clone()));
        tokio::spawn(self.clone().publisher(out_rx, client.clone()));
        tokio::spawn(self.clone().receiver(subscriber));
        tokio::spawn(self.clone().ticker());
        if client.connection_state() == async_nats::connection::State::Connected {
            self.connected(&client).await;
        }
        let deadline = Instant::now() + wait;
        while !self.is_up() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.is_up())
    }

    /// Handles the NATS client's connection events.
    async fn events(
        self,
        mut events: mpsc::Receiver<async_nats::Event>,
        client: async_nats::Client,
    ) {
        while let Some(event) = events.recv().await {
            match event {
                async_nats::Event::Connected => self.connected(&client).await,
                async_nats::Event::Disconnected => self.lost(),
                async_nats::Event::SlowConsumer(_) => {
                    warn!("cluster: the bus delivered faster than this server read: messages lost")
                }
                other => debug!("cluster: NATS {other}"),
            }
        }
    }

    /// The link is (again) up: open the key-value bucket, give the others time to be heard
    /// from, ask for everyone's presence and send ours.
    async fn connected(&self, client: &async_nats::Client) {
        if self.inner.up.load(Ordering::SeqCst) {
            return;
        }
        let js = async_nats::jetstream::new(client.clone());
        let store = match js.get_key_value(NICK_BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => create_bucket(&js).await,
        };
        match store {
            Ok(store) => *lock(&self.inner.kv) = Some(store),
            Err(e) => warn!(
                "cluster: no JetStream key-value bucket {NICK_BUCKET} ({e}): is nats-server \
                 running with -js? Nicks are only unique per server until it is"
            ),
        }
        let now = Instant::now();
        *lock(&self.inner.grace_until) = now + LEASE;
        for node in lock(&self.inner.nodes).values_mut() {
            node.seen = now;
        }
        self.inner.up.store(true, Ordering::SeqCst);
        let first = !self.inner.ever_up.swap(true, Ordering::SeqCst);
        info!(
            "cluster: node {} connected to {}",
            self.inner.node, self.inner.url
        );
        self.send(
            wire::sync_subject(),
            &Bus::Sync {
                node: self.inner.node.clone(),
                inst: self.inner.inst,
                want: None,
            },
        );
        self.send_snapshot();
        if let Some(inbound) = self.inner.inbound.get() {
            if !first && self.inner.told_lost.swap(false, Ordering::SeqCst) {
                inbound.link(true);
            }
            inbound.reclaim();
        }
    }

    fn lost(&self) {
        if !self.inner.up.swap(false, Ordering::SeqCst) {
            return;
        }
        warn!(
            "cluster: lost the link to {}: reconnecting; local rooms keep working",
            self.inner.url
        );
        if !self.inner.told_lost.swap(true, Ordering::SeqCst) {
            if let Some(inbound) = self.inner.inbound.get() {
                inbound.link(false);
            }
        }
    }

    /// Queues `bus` for publishing without waiting; dropped (and counted) if the queue is full.
    fn send(&self, subject: String, bus: &Bus) {
        let bytes = Bytes::from(bus.encode());
        if self
            .inner
            .out
            .try_send(Out::Publish(subject, bytes))
            .is_err()
        {
            self.inner.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_snapshot(&self) {
        let Some(inbound) = self.inner.inbound.get() else {
            return;
        };
        let pv = *lock(&self.inner.pv);
        let members = inbound.members();
        let parts = members.chunks(wire::SNAPSHOT_PART).count().max(1);
        let mut chunks = members.chunks(wire::SNAPSHOT_PART);
        for part in 0..parts {
            let members = chunks.next().map(<[Member]>::to_vec).unwrap_or_default();
            self.send(
                wire::presence_subject(),
                &Bus::Snapshot {
                    node: self.inner.node.clone(),
                    inst: self.inner.inst,
                    pv,
                    part: part as u32,
                    last: part + 1 == parts,
                    members,
                },
            );
        }
    }

    /// Publishes what is queued (the departures and released nicks of a server shutting
    /// down), waiting at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        if !self.is_up() {
            return;
        }
        let deadline = Instant::now() + limit;
        while self.inner.out.capacity() < self.inner.out.max_capacity() && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(client) = self.inner.client.get() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, client.flush()).await;
        }
    }

    /// Publishes chat lines said in `room`, waiting for room in the queue (the speaker's
    /// back-pressure). Nothing is sent while the link is down.
    pub async fn lines(&self, room: &str, lines: &[String]) {
        if !self.is_up() || lines.is_empty() {
            return;
        }
        // One bus message stays well within the limit: lines are cut into several if needed.
        let mut start = 0;
        while start < lines.len() {
            let mut bytes = 0;
            let mut end = start;
            while end < lines.len() && (end == start || bytes + lines[end].len() < 128 * 1024) {
                bytes += lines[end].len() + 8;
                end += 1;
            }
            let out = Out::Lines(room.to_owned(), lines[start..end].to_vec());
            if self.inner.out.send(out).await.is_err() {
                return;
            }
            start = end;
        }
    }

    /// Announces a change of this server's presence (a member joined, left, was renamed).
    pub fn presence(&self, change: Change) {
        let pv = {
            let mut pv = lock(&self.inner.pv);
            *pv += 1;
            *pv
        };
        if !self.is_up() {
            // Sent in the snapshot when the link comes back.
            return;
        }
        self.send(
            wire::presence_subject(),
            &Bus::Presence {
                node: self.inner.node.clone(),
                inst: self.inner.inst,
                pv,
                change,
            },
        );
    }

    /// Sends a private message to the member called `to` (folded) on `node`.
    pub fn private(&self, node: &str, to: &str, from: &str, text: &str) -> bool {
        if !self.is_up() {
            return false;
        }
        self.send(
            wire::private_subject(node),
            &Bus::Private {
                node: self.inner.node.clone(),
                inst: self.inner.inst,
                to: to.to_owned(),
                from: from.to_owned(),
                text: text.to_owned(),
            },
        );
        true
    }

    /// Asks the other servers for the last chat lines of `room` (the first answer counts);
    /// `None` if none answers within half a second or the link is down.
    pub async fn history(&self, room: &str) -> Option<Vec<String>> {
        if !self.is_up() {
            return None;
        }
        let client = self.inner.client.get()?;
        let ask = Bus::Ask {
            node: self.inner.node.clone(),
            inst: self.inner.inst,
            room: room.to_owned(),
        };
        let subject = wire::ask_subject(&fold(room));
        debug!("bus out: {subject} (asking for history)");
        let request = client.request(subject, Bytes::from(ask.encode()));
        let reply = tokio::time::timeout(ASK_TIMEOUT, request)
            .await
            .ok()?
            .ok()?;
        match Bus::decode(&reply.payload) {
            Ok(Bus::History { lines, .. }) => Some(lines),
            Ok(_) => None,
            Err(why) => {
                self.inner.bad_in.fetch_add(1, Ordering::Relaxed);
                warn!("cluster: dropped an answer about {room}'s history: {why}");
                None
            }
        }
    }

    /// The nicks of the members of room `key` (folded) on the other servers.
    pub fn members_in(&self, key: &str) -> Vec<String> {
        lock(&self.inner.nodes)
            .values()
            .flat_map(|n| n.members.values())
            .filter(|m| m.room.as_deref().is_some_and(|r| fold(r) == key))
            .map(|m| m.nick.clone())
            .collect()
    }

    /// The rooms with members on other servers, by folded name: (name, members).
    pub fn rooms(&self) -> HashMap<String, (String, usize)> {
        let mut rooms: HashMap<String, (String, usize)> = HashMap::new();
        for member in lock(&self.inner.nodes)
            .values()
            .flat_map(|n| n.members.values())
        {
            if let Some(room) = &member.room {
                rooms
                    .entry(fold(room))
                    .or_insert_with(|| (room.clone(), 0))
                    .1 += 1;
            }
        }
        rooms
    }

    /// The node and nick of the member of another server whose folded nick is `key`.
    pub fn find_nick(&self, key: &str) -> Option<(String, String)> {
        lock(&self.inner.nodes).iter().find_map(|(name, node)| {
            node.members
                .values()
                .find(|m| fold(&m.nick) == key)
                .map(|m| (name.clone(), m.nick.clone()))
        })
    }

    /// Claims the nick `nick` (folded: `key`) for member `id` of this server.
    pub async fn claim(&self, key: &str, nick: &str, id: u64) -> ClaimResult {
        if !self.is_up() {
            return ClaimResult::Offline;
        }
        let Some(store) = lock(&self.inner.kv).clone() else {
            return ClaimResult::Offline;
        };
        let claim = Claim {
            node: self.inner.node.clone(),
            inst: self.inner.inst,
            id,
            nick: nick.to_owned(),
        };
        let value = Bytes::from(serde_json::to_vec(&claim).unwrap_or_default());
        let kv_key = wire::nick_key(key);
        // A claim that changes between reading it and replacing it (its owner released it,
        // or a sweep deleted it) is read again: a few times, as each try is a change seen.
        let attempt = async {
            for _ in 0..3 {
                match self.try_claim(&store, &kv_key, &value, &claim).await {
                    Some(result) => return result,
                    None => continue,
                }
            }
            ClaimResult::Taken
        };
        tokio::time::timeout(KV_TIMEOUT * 2, attempt)
            .await
            .unwrap_or(ClaimResult::Offline)
    }

    /// One try of [`Cluster::claim`]; `None` if the claim changed under it.
    async fn try_claim(
        &self,
        store: &kv::Store,
        kv_key: &str,
        value: &Bytes,
        claim: &Claim,
    ) -> Option<ClaimResult> {
        let nick = &claim.nick;
        let id = claim.id;
        {
            if let Ok(rev) = store.update(kv_key, value.clone(), 0).await {
                return Some(ClaimResult::Claimed(rev));
            }
            let entry = match store.entry(kv_key).await {
                Ok(Some(entry)) => entry,
                // Deleted between the two steps, or not readable yet.
                Ok(None) => return None,
                Err(e) => {
                    debug!("cluster: reading claim {kv_key}: {e}");
                    return Some(ClaimResult::Offline);
                }
            };
            let free = match entry.operation {
                kv::Operation::Delete | kv::Operation::Purge => true,
                kv::Operation::Put => match serde_json::from_slice::<Claim>(&entry.value) {
                    Ok(owner) if owner.node == claim.node && owner.inst == claim.inst => {
                        if owner.id == id {
                            return Some(ClaimResult::Claimed(entry.revision));
                        }
                        false
                    }
                    Ok(owner) => self.owner_dead(&owner),
                    Err(_) => true,
                },
            };
            if !free {
                return Some(ClaimResult::Taken);
            }
            match store.update(kv_key, value.clone(), entry.revision).await {
                Ok(rev) => {
                    debug!("cluster: took over the stale claim of {nick}");
                    Some(ClaimResult::Claimed(rev))
                }
                Err(_) => None,
            }
        }
    }

    /// Releases the claim on the nick folded as `key`, made at `revision` (queued: departures
    /// happen where nothing can wait).
    pub fn release(&self, key: &str, revision: u64) {
        if self
            .inner
            .out
            .try_send(Out::Release(wire::nick_key(key), revision))
            .is_err()
        {
            debug!("cluster: release queue full; the claim goes when this server does");
        }
    }

    /// Whether the server that made `claim` is dead.
    fn owner_dead(&self, claim: &Claim) -> bool {
        if claim.node == self.inner.node {
            return claim.inst != self.inner.inst;
        }
        let grace = Instant::now() < *lock(&self.inner.grace_until);
        match lock(&self.inner.nodes).get(&claim.node) {
            Some(node) => node.inst != claim.inst,
            None => !grace,
        }
    }

    /// Publishes the queued bus messages in order, while the link is up.
    async fn publisher(self, mut out: mpsc::Receiver<Out>, client: async_nats::Client) {
        let mut next: Option<Out> = None;
        loop {
            let item = match next.take() {
                Some(item) => item,
                None => match out.recv().await {
                    Some(item) => item,
                    None => break,
                },
            };
            let item = match item {
                Out::Lines(room, mut lines) => {
                    // Whatever else is already queued for the same room goes along.
                    let mut bytes: usize = lines.iter().map(|l| l.len() + 8).sum();
                    while bytes < MERGE_BYTES {
                        match out.try_recv() {
                            Ok(Out::Lines(same, more)) if same == room => {
                                bytes += more.iter().map(|l| l.len() + 8).sum::<usize>();
                                lines.extend(more);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let bus = Bus::Lines {
                        node: self.inner.node.clone(),
                        inst: self.inner.inst,
                        room: room.clone(),
                        lines,
                    };
                    Out::Publish(wire::room_subject(&fold(&room)), Bytes::from(bus.encode()))
                }
                other => other,
            };
            match item {
                Out::Publish(subject, bytes) => {
                    if !self.is_up() {
                        self.inner.dropped_out.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    debug!("bus out: {subject} ({} bytes)", bytes.len());
                    let publish = client.publish(subject, bytes);
                    match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                        Ok(Ok(())) => {}
                        _ => {
                            self.inner.dropped_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Out::Lines(..) => {}
                Out::Release(key, revision) => {
                    let Some(store) = lock(&self.inner.kv).clone() else {
                        continue;
                    };
                    let delete = store.delete_expect_revision(&key, Some(revision));
                    match tokio::time::timeout(KV_TIMEOUT, delete).await {
                        Ok(Ok(())) => debug!("cluster: released {key}"),
                        Ok(Err(e)) => debug!("cluster: releasing {key}: {e}"),
                        Err(_) => debug!("cluster: releasing {key} timed out"),
                    }
                }
            }
        }
    }

    /// Handles everything that arrives on the bus.
    async fn receiver(self, mut subscriber: async_nats::Subscriber) {
        let private_prefix = wire::private_subject("");
        let mine = wire::private_subject(&self.inner.node);
        let mut unyielded = 0usize;
        while let Some(message) = subscriber.next().await {
            let subject = message.subject.as_str();
            if subject.starts_with(&private_prefix) && subject != mine {
                continue;
            }
            debug!("bus in: {subject} ({} bytes)", message.payload.len());
            // Like a local member who talks a lot: after every 64 KiB put into the rooms, the
            // members it woke get to run, so that a burst from the bus does not outrun members
            // that keep reading.
            unyielded += message.payload.len();
            if unyielded >= PACE_BYTES {
                unyielded = 0;
                tokio::task::yield_now().await;
            }
            match Bus::decode(&message.payload) {
                Ok(Bus::Ask { room, .. }) => {
                    if let Some(reply) = message.reply.as_ref() {
                        self.answer(reply.to_string(), &room);
                    }
                }
                Ok(bus) => self.handle(bus),
                Err(why) => {
                    self.inner.bad_in.fetch_add(1, Ordering::Relaxed);
                    if let Some(n) = lock(&self.inner.bad_log).hit() {
                        warn!("cluster: dropped {n} bus message(s); the last on {subject}: {why}");
                    }
                }
            }
        }
    }

    fn handle(&self, bus: Bus) {
        let Some(inbound) = self.inner.inbound.get().cloned() else {
            return;
        };
        let (node, inst) = bus.origin();
        if node == self.inner.node {
            if inst != self.inner.inst {
                if let Some(n) = lock(&self.inner.bad_log).hit() {
                    warn!(
                        "cluster: another server also calls itself {node} ({n} message(s) \
                         ignored): give each server its own --node"
                    );
                }
            }
            return;
        }
        let node = node.to_owned();
        let mut want_sync = false;
        // Notices are collected under the lock and delivered after it.
        let mut notices: Vec<Notice> = Vec::new();
        {
            let mut nodes = lock(&self.inner.nodes);
            let entry = nodes.entry(node.clone()).or_insert_with(|| {
                want_sync = !matches!(bus, Bus::Snapshot { .. });
                Node::new(inst)
            });
            if entry.inst != inst {
                // The server restarted: its old members are gone.
                for m in entry.members.values() {
                    if let Some(room) = &m.room {
                        notices.push(Notice::Left(room.clone(), m.nick.clone()));
                    }
                }
                *entry = Node::new(inst);
                want_sync = !matches!(bus, Bus::Snapshot { .. });
            }
            entry.seen = Instant::now();
            match bus {
                Bus::Lines { room, lines, .. } => {
                    drop(nodes);
                    deliver(&*inbound, notices);
                    inbound.lines(&room, lines);
                    if want_sync {
                        self.ask_sync(&node);
                    }
                    return;
                }
                Bus::Presence { pv, change, .. } => {
                    if pv != entry.pv + 1 {
                        want_sync = true;
                    }
                    entry.pv = entry.pv.max(pv);
                    apply(entry, change, &mut notices);
                }
                Bus::Snapshot {
                    pv,
                    part,
                    last,
                    members,
                    ..
                } => {
                    if part == 0 {
                        entry.pending.clear();
                    }
                    if entry.pending.len() + members.len() <= MAX_PENDING {
                        entry.pending.extend(members);
                    }
                    if last {
                        let new: HashMap<u64, Member> = std::mem::take(&mut entry.pending)
                            .into_iter()
                            .map(|m| (m.id, m))
                            .collect();
                        diff(&entry.members, &new, &mut notices);
                        entry.members = new;
                        entry.pv = pv;
                        entry.mismatch = 0;
                    }
                }
                Bus::Heartbeat { pv, .. } => {
                    if pv != entry.pv {
                        entry.mismatch += 1;
                        if entry.mismatch >= 2 {
                            entry.mismatch = 0;
                            want_sync = true;
                        }
                    } else {
                        entry.mismatch = 0;
                    }
                }
                Bus::Sync { want, .. } => {
                    if want.is_none() || want.as_deref() == Some(self.inner.node.as_str()) {
                        drop(nodes);
                        self.send_snapshot();
                        deliver(&*inbound, notices);
                        return;
                    }
                }
                // Answers travel to the asker's inbox, not here; asks are answered before.
                Bus::Ask { .. } | Bus::History { .. } => {}
                Bus::Private { to, from, text, .. } => {
                    drop(nodes);
                    inbound.private(&to, &from, &text);
                    deliver(&*inbound, notices);
                    return;
                }
            }
        }
        deliver(&*inbound, notices);
        if want_sync {
            self.ask_sync(&node);
        }
    }

    /// Answers a request for `room`'s history, if this server knows the room.
    fn answer(&self, reply: String, room: &str) {
        let Some(lines) = self.inner.inbound.get().and_then(|i| i.history(room)) else {
            return;
        };
        self.send(
            reply,
            &Bus::History {
                node: self.inner.node.clone(),
                inst: self.inner.inst,
                room: room.to_owned(),
                lines,
            },
        );
    }

    fn ask_sync(&self, node: &str) {
        debug!("cluster: asking {node} for its presence");
        self.send(
            wire::sync_subject(),
            &Bus::Sync {
                node: self.inner.node.clone(),
                inst: self.inner.inst,
                want: Some(node.to_owned()),
            },
        );
    }

    /// Heartbeats, and the expiry of servers not heard from.
    async fn ticker(self) {
        let mut tick = tokio::time::interval(HEARTBEAT / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = Instant::now() - HEARTBEAT;
        loop {
            tick.tick().await;
            if !self.is_up() {
                continue;
            }
            let now = Instant::now();
            if now.duration_since(last_beat) >= HEARTBEAT {
                last_beat = now;
                let pv = *lock(&self.inner.pv);
                self.send(
                    wire::heartbeat_subject(),
                    &Bus::Heartbeat {
                        node: self.inner.node.clone(),
                        inst: self.inner.inst,
                        pv,
                    },
                );
            }
            if now < *lock(&self.inner.grace_until) {
                continue;
            }
            self.expire(now);
        }
    }

    /// Forgets the servers not heard from for [`LEASE`]: their members are announced as gone,
    /// and one surviving server (the first by name) deletes their nick claims.
    fn expire(&self, now: Instant) {
        let (dead, janitor) = {
            let mut nodes = lock(&self.inner.nodes);
            let gone: Vec<String> = nodes
                .iter()
                .filter(|(_, n)| now.duration_since(n.seen) >= LEASE)
                .map(|(name, _)| name.clone())
                .collect();
            if gone.is_empty() {
                return;
            }
            let dead: Vec<(String, Node)> = gone
                .into_iter()
                .filter_map(|name| nodes.remove(&name).map(|n| (name, n)))
                .collect();
            let janitor = nodes.keys().all(|name| *name > self.inner.node);
            (dead, janitor)
        };
        let Some(inbound) = self.inner.inbound.get().cloned() else {
            return;
        };
        for (name, node) in dead {
            warn!(
                "cluster: no heartbeat from {name} for {} s: its {} member(s) are gone",
                LEASE.as_secs(),
                node.members.len()
            );
            let notices = node
                .members
                .values()
                .filter_map(|m| {
                    m.room
                        .as_ref()
                        .map(|r| Notice::Left(r.clone(), m.nick.clone()))
                })
                .collect();
            deliver(&*inbound, notices);
            if janitor {
                tokio::spawn(self.clone().sweep(name, node));
            }
        }
    }

    /// Deletes the nick claims of a dead server.
    async fn sweep(self, name: String, node: Node) {
        let Some(store) = lock(&self.inner.kv).clone() else {
            return;
        };
        for member in node.members.values() {
            let key = wire::nick_key(&fold(&member.nick));
            let Ok(Ok(Some(entry))) =
                tokio::time::timeout(KV_TIMEOUT, store.entry(key.clone())).await
            else {
                continue;
            };
            let owned = entry.operation == kv::Operation::Put
                && serde_json::from_slice::<Claim>(&entry.value)
                    .is_ok_and(|c| c.node == name && c.inst == node.inst);
            if owned {
                let delete = store.delete_expect_revision(&key, Some(entry.revision));
                let _ = tokio::time::timeout(KV_TIMEOUT, delete).await;
            }
        }
    }
}

/// Creates the nick bucket. The stream is made by hand, with the settings of a key-value
/// bucket (one value per key, rollups, direct gets): the client's own `create_key_value` first
/// reads the account information, which it cannot parse from nats-server 2.9.
async fn create_bucket(js: &async_nats::jetstream::Context) -> Result<kv::Store, String> {
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: format!("KV_{NICK_BUCKET}"),
        description: Some("sockit chat: nick claims".into()),
        subjects: vec![format!("$KV.{NICK_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1024,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another server may have created it just now.
        debug!("cluster: creating the nick bucket: {e}");
    }
    js.get_key_value(NICK_BUCKET)
        .await
        .map_err(|e| e.to_string())
}

/// Something to tell the local members, produced under the nodes lock.
enum Notice {
    Joined(String, String),
    Left(String, String),
    Renamed(String, String, String),
}

fn deliver(inbound: &dyn Inbound, notices: Vec<Notice>) {
    for notice in notices {
        match notice {
            Notice::Joined(room, nick) => inbound.joined(&room, &nick),
            Notice::Left(room, nick) => inbound.left(&room, &nick),
            Notice::Renamed(room, old, new) => inbound.renamed(&room, &old, &new),
        }
    }
}

/// Applies one presence change to a server's member table.
fn apply(node: &mut Node, change: Change, notices: &mut Vec<Notice>) {
    match change {
        Change::Join { member } => {
            let same_room = |a: &Option<String>, b: &Option<String>| {
                a.as_deref().map(fold) == b.as_deref().map(fold)
            };
            if let Some(old) = node.members.get(&member.id) {
                // Already known there (a snapshot taken just after the join said so).
                if old.nick == member.nick && same_room(&old.room, &member.room) {
                    return;
                }
                if let Some(room) = &old.room {
                    if !same_room(&old.room, &member.room) {
                        notices.push(Notice::Left(room.clone(), old.nick.clone()));
                    }
                }
            }
            if let Some(room) = &member.room {
                notices.push(Notice::Joined(room.clone(), member.nick.clone()));
            }
            node.members.insert(member.id, member);
        }
        Change::Leave { id, gone } => {
            let left = if gone {
                node.members.remove(&id)
            } else {
                node.members.get_mut(&id).map(|m| {
                    let copy = m.clone();
                    m.room = None;
                    copy
                })
            };
            if let Some(Member {
                nick,
                room: Some(room),
                ..
            }) = left
            {
                notices.push(Notice::Left(room, nick));
            }
        }
        Change::Rename { id, nick } => {
            if let Some(m) = node.members.get_mut(&id) {
                if let Some(room) = &m.room {
                    notices.push(Notice::Renamed(room.clone(), m.nick.clone(), nick.clone()));
                }
                m.nick = nick;
            }
        }
    }
}

/// The notices that turn member table `old` into `new`.
fn diff(old: &HashMap<u64, Member>, new: &HashMap<u64, Member>, notices: &mut Vec<Notice>) {
    for (id, m) in old {
        let same_room = new.get(id).is_some_and(|n| {
            n.nick == m.nick && n.room.as_deref().map(fold) == m.room.as_deref().map(fold)
        });
        if !same_room {
            if let Some(room) = &m.room {
                notices.push(Notice::Left(room.clone(), m.nick.clone()));
            }
        }
    }
    for (id, m) in new {
        let same_room = old.get(id).is_some_and(|o| {
            o.nick == m.nick && o.room.as_deref().map(fold) == m.room.as_deref().map(fold)
        });
        if !same_room {
            if let Some(room) = &m.room {
                notices.push(Notice::Joined(room.clone(), m.nick.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, nick: &str, room: Option<&str>) -> Member {
        Member {
            id,
            nick: nick.into(),
            room: room.map(Into::into),
        }
    }

    fn texts(notices: &[Notice]) -> Vec<String> {
        notices
            .iter()
            .map(|n| match n {
                Notice::Joined(r, n) => format!("{n} joined {r}"),
                Notice::Left(r, n) => format!("{n} left {r}"),
                Notice::Renamed(r, o, n) => format!("{o}>{n} in {r}"),
            })
            .collect()
    }

    #[test]
    fn presence_changes_produce_the_notices() {
        let mut node = Node::new(1);
        let mut notices = Vec::new();
        apply(
            &mut node,
            Change::Join {
                member: member(1, "ann", Some("lobby")),
            },
            &mut notices,
        );
        apply(
            &mut node,
            Change::Join {
                member: member(1, "ann", Some("LOBBY")),
            },
            &mut notices,
        );
        apply(
            &mut node,
            Change::Join {
                member: member(1, "ann", Some("den")),
            },
            &mut notices,
        );
        apply(
            &mut node,
            Change::Rename {
                id: 1,
                nick: "bea".into(),
            },
            &mut notices,
        );
        apply(&mut node, Change::Leave { id: 1, gone: true }, &mut notices);
        apply(&mut node, Change::Leave { id: 9, gone: true }, &mut notices);
        assert_eq!(
            texts(&notices),
            [
                "ann joined lobby",
                "ann left lobby",
                "ann joined den",
                "ann>bea in den",
                "bea left den"
            ]
        );
        assert!(node.members.is_empty());
    }

    #[test]
    fn a_snapshot_diff_announces_only_the_differences() {
        let old: HashMap<u64, Member> = [member(1, "a", Some("x")), member(2, "b", Some("x"))]
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let new: HashMap<u64, Member> = [member(1, "a", Some("X")), member(3, "c", Some("y"))]
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let mut notices = Vec::new();
        diff(&old, &new, &mut notices);
        assert_eq!(texts(&notices), ["b left x", "c joined y"]);
    }

    #[test]
    fn reconnect_delays_grow_to_two_seconds() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(50), Duration::from_millis(2000));
        assert!(wire::valid_node(&default_node()));
    }
}
