//! One rudp connection: a sans-IO state machine (see the module docs of [`rudp`](super)).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::packet::{self, FLAG_CLOSE, FLAG_END, Frame, Packet, RunWriter, TOKEN_LEN};
use super::rng::Rng;
use super::{AbortCode, CloseReason, Config, Event, SendError};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Started the handshake ([`Connection::connect`]).
    Client,
    /// Created by an [`Endpoint`](super::Endpoint) after a valid cookie.
    Server,
}

/// Counters of one connection (everything dropped is counted here, never acted on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Datagrams produced by `poll_transmit`.
    pub packets_sent: u64,
    /// Bytes of those datagrams.
    pub bytes_sent: u64,
    /// Valid datagrams accepted.
    pub packets_received: u64,
    /// Bytes of all datagrams handed in.
    pub bytes_received: u64,
    /// Messages accepted by `send`.
    pub messages_sent: u64,
    /// Messages delivered.
    pub messages_received: u64,
    /// First transmissions of fragments.
    pub fragments_sent: u64,
    /// Retransmissions of fragments judged lost (gap or timeout).
    pub retransmissions: u64,
    /// Extra copies sent as redundancy.
    pub redundant_copies: u64,
    /// Fragments judged lost because a later one was acknowledged (fast retransmit).
    pub fast_losses: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Fragments received again (redundancy or retransmission).
    pub duplicate_fragments: u64,
    /// Fragments beyond the receive window, dropped.
    pub dropped_beyond_window: u64,
    /// Datagrams that failed to parse.
    pub dropped_malformed: u64,
    /// Valid datagrams not meant for this connection or this state (wrong id, stray).
    pub dropped_unexpected: u64,
    /// ACK frames acknowledging sequence numbers never sent (ignored).
    pub invalid_acks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Established,
    Draining { until: Instant },
    Closed,
}

#[derive(Debug)]
struct SentFrag {
    data: Bytes,
    flags: u8,
    first_sent: Instant,
    last_sent: Instant,
    sends: u32,
    last_pkt: u64,
    acked: bool,
    lost: bool,
    in_flight: bool,
    /// Retransmitted because it was judged lost.
    retransmitted: bool,
}

/// Bytes a fragment counts for in flight (payload plus a nominal per-fragment overhead).
fn flight_size(len: usize) -> usize {
    len + 8
}

/// Expands a 32-bit wire sequence number to the 64-bit one closest to `reference`.
fn expand(reference: u64, v: u32) -> u64 {
    const SPAN: u64 = 1 << 32;
    let candidate = (reference & !(SPAN - 1)) | u64::from(v);
    if candidate + SPAN / 2 < reference {
        candidate.saturating_add(SPAN)
    } else if candidate > reference + SPAN / 2 && candidate >= SPAN {
        candidate - SPAN
    } else {
        candidate
    }
}

/// A reliable, ordered message connection. Feed it datagrams and timeouts; poll it for
/// datagrams, its next timer and events. See the module docs for the protocol.
#[derive(Debug)]
pub struct Connection {
    cfg: Config,
    side: Side,
    state: State,
    local_cid: u64,
    remote_cid: u64,
    epoch: Instant,
    last_now: Instant,
    last_recv: Instant,
    last_send: Instant,
    last_eliciting_sent: Instant,
    frag_payload: usize,
    events: VecDeque<Event>,
    closed_emitted: bool,
    abort_pending: Option<u8>,
    ping_pending: bool,
    // Handshake (client).
    token: Option<[u8; TOKEN_LEN]>,
    hs_send_pending: bool,
    hs_next: Instant,
    hs_interval: Duration,
    hs_last_sent: Instant,
    hs_token_sends: u32,
    // Handshake (server).
    accept_pending: bool,
    // Sending.
    unsent: VecDeque<(Bytes, u8)>,
    sent: VecDeque<SentFrag>,
    snd_una: u64,
    snd_nxt: u64,
    unacked: usize,
    buffered: usize,
    lost_queue: VecDeque<u64>,
    peer_limit: u64,
    peer_cum_max: u64,
    close_queued: bool,
    next_pkt: u64,
    tail_copied: bool,
    tail_pending: bool,
    // Congestion and RTT.
    bytes_in_flight: usize,
    cwnd: usize,
    ssthresh: usize,
    recovery_start: Option<Instant>,
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    /// Reordering window in quarters of the minimum RTT; grows on spurious retransmissions.
    reo_quarters: u32,
    pto_count: u32,
    // Receiving.
    rcv_nxt: u64,
    ooo: BTreeMap<u64, (u8, Bytes)>,
    ooo_bytes: usize,
    /// The message being reassembled: its fragments so far, copied straight from the
    /// datagrams (no per-fragment buffer for in-order data).
    partial: BytesMut,
    /// Fragments in `partial` (a message may have empty ones).
    partial_frags: usize,
    events_bytes: usize,
    ack_pending: bool,
    ack_immediate: bool,
    /// The window in the last ACK sent.
    advertised: u64,
    ack_deadline: Option<Instant>,
    unacked_eliciting: u32,
    echo: Option<(u16, Instant)>,
    stats: ConnectionStats,
}

/// Window assumed for the peer before its first acknowledgement, in fragments.
const INITIAL_PEER_WINDOW: u64 = 64;
/// SACK ranges in an ACK that shares its datagram with fragments.
const ACK_RANGES_WITH_DATA: usize = 4;

impl Connection {
    fn new(cfg: Config, side: Side, now: Instant, local_cid: u64, remote_cid: u64) -> Self {
        let cfg = cfg.normalized();
        let frag_payload = cfg.mtu
            - packet::DATA_HEADER_LEN
            - packet::ACK_BASE_LEN
            - ACK_RANGES_WITH_DATA * packet::ACK_RANGE_LEN
            - packet::FRAGS_HEADER_LEN
            - packet::MAX_VARINT_LEN;
        let mss = frag_payload + 8;
        Connection {
            side,
            state: if side == Side::Client {
                State::Handshake
            } else {
                State::Established
            },
            local_cid,
            remote_cid,
            epoch: now,
            last_now: now,
            last_recv: now,
            last_send: now,
            last_eliciting_sent: now,
            frag_payload,
            events: VecDeque::new(),
            closed_emitted: false,
            abort_pending: None,
            ping_pending: false,
            token: None,
            hs_send_pending: side == Side::Client,
            hs_next: now + 2 * cfg.initial_rtt,
            hs_interval: 2 * cfg.initial_rtt,
            hs_last_sent: now,
            hs_token_sends: 0,
            accept_pending: side == Side::Server,
            unsent: VecDeque::new(),
            sent: VecDeque::new(),
            snd_una: 0,
            snd_nxt: 0,
            unacked: 0,
            buffered: 0,
            lost_queue: VecDeque::new(),
            peer_limit: INITIAL_PEER_WINDOW,
            peer_cum_max: 0,
            close_queued: false,
            next_pkt: 0,
            tail_copied: false,
            tail_pending: false,
            bytes_in_flight: 0,
            cwnd: 10 * mss,
            ssthresh: usize::MAX,
            recovery_start: None,
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
            reo_quarters: 1,
            pto_count: 0,
            rcv_nxt: 0,
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            partial: BytesMut::new(),
            partial_frags: 0,
            events_bytes: 0,
            ack_pending: false,
            ack_immediate: false,
            advertised: u64::MAX,
            ack_deadline: None,
            unacked_eliciting: 0,
            echo: None,
            stats: ConnectionStats::default(),
            cfg,
        }
    }

    /// Starts a client connection: its first `poll_transmit` yields the `INITIAL`. `seed`
    /// chooses the random connection id (pass OS randomness in production).
    pub fn connect(cfg: Config, now: Instant, seed: u64) -> Self {
        let cid = Rng::new(seed).nonzero_u64();
        Connection::new(cfg, Side::Client, now, cid, 0)
    }

    /// A server connection created by the endpoint once the client proved its address.
    pub(crate) fn accept(cfg: Config, now: Instant, local_cid: u64, remote_cid: u64) -> Self {
        let mut c = Connection::new(cfg, Side::Server, now, local_cid, remote_cid);
        c.events.push_back(Event::Connected);
        c
    }

    /// The client repeated a valid `INITIAL` (our `ACCEPT` was lost): send it again.
    pub(crate) fn resend_accept(&mut self, now: Instant) {
        if self.side == Side::Server && self.state == State::Established {
            self.accept_pending = true;
            self.last_recv = now;
        }
    }

    /// Client or server.
    pub fn side(&self) -> Side {
        self.side
    }

    /// This side's connection id (the peer addresses datagrams to it).
    pub fn local_cid(&self) -> u64 {
        self.local_cid
    }

    /// The peer's connection id (0 until a client's handshake completes).
    pub fn remote_cid(&self) -> u64 {
        self.remote_cid
    }

    /// Counters.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// Smoothed RTT, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Current congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// Bytes of fragments sent and neither acknowledged nor judged lost.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    /// Bytes of messages queued or unacknowledged (bounded by `send_buffer`).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The handshake completed and the connection is not closing.
    pub fn is_established(&self) -> bool {
        self.state == State::Established && !self.close_queued
    }

    /// Nothing more will be sent or delivered (events may still wait to be polled).
    pub fn is_drained(&self) -> bool {
        self.state == State::Closed && self.abort_pending.is_none()
    }

    /// Queues a message (any size up to `max_message`, fragmented to the MTU).
    pub fn send(&mut self, msg: Bytes) -> Result<(), SendError> {
        if self.close_queued || matches!(self.state, State::Draining { .. } | State::Closed) {
            return Err(SendError::Closed);
        }
        if msg.len() > self.cfg.max_message {
            return Err(SendError::TooLarge(msg.len()));
        }
        if self.buffered > 0 && self.buffered + msg.len() > self.cfg.send_buffer {
            return Err(SendError::Blocked);
        }
        self.buffered += msg.len();
        self.stats.messages_sent += 1;
        if msg.is_empty() {
            self.unsent.push_back((msg, FLAG_END));
            return Ok(());
        }
        let mut at = 0;
        while at < msg.len() {
            let end = (at + self.frag_payload).min(msg.len());
            let flags = if end == msg.len() { FLAG_END } else { 0 };
            self.unsent.push_back((msg.slice(at..end), flags));
            at = end;
        }
        Ok(())
    }

    /// Closes gracefully: queued messages are delivered first, then a close marker; the
    /// connection reports `Closed(Local)` once the peer acknowledged everything (or
    /// `Closed(TimedOut)` if it never does). Before the handshake completes it closes at once.
    pub fn close(&mut self) {
        match self.state {
            State::Handshake => self.finish(CloseReason::Local),
            State::Established if !self.close_queued => {
                self.close_queued = true;
                self.unsent.push_back((Bytes::new(), FLAG_CLOSE));
            }
            _ => {}
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let Event::Message(m) = &ev {
            self.events_bytes -= m.len();
            let after = self.available_window();
            let full = self.window_frags();
            if self.advertised < full / 4 && after >= full / 2 && self.state == State::Established {
                // The window reopened: tell the sender now rather than on its next probe.
                self.ack_pending = true;
                self.ack_immediate = true;
            }
        }
        Some(ev)
    }

    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn window_frags(&self) -> u64 {
        (self.cfg.recv_window / self.frag_payload).max(2) as u64
    }

    /// Fragments beyond the cumulative point this side will accept.
    fn available_window(&self) -> u64 {
        let held = self.events_bytes.div_ceil(self.frag_payload) as u64;
        self.window_frags().saturating_sub(held)
    }

    fn ts(&self, now: Instant) -> u16 {
        (now.saturating_duration_since(self.epoch).as_millis() as u64 & 0xffff) as u16
    }

    fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => 2 * self.cfg.initial_rtt,
            Some(s) => s + (4 * self.rttvar).max(Duration::from_millis(1)) + self.cfg.max_ack_delay,
        };
        base.clamp(self.cfg.min_rto, self.cfg.max_rto)
    }

    fn pto(&self) -> Duration {
        let mut d = self.rto();
        for _ in 0..self.pto_count.min(16) {
            d = d * 3 / 2;
        }
        d.min(self.cfg.max_rto)
    }

    fn rtt_sample(&mut self, s: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(s, |m| m.min(s)));
        match self.srtt {
            None => {
                self.srtt = Some(s);
                self.rttvar = s / 2;
            }
            Some(srtt) => {
                let d = srtt.abs_diff(s);
                self.rttvar = (self.rttvar * 3 + d) / 4;
                self.srtt = Some((srtt * 7 + s) / 8);
            }
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if !self.closed_emitted {
            self.closed_emitted = true;
            self.events.push_back(Event::Closed(reason));
        }
        self.state = State::Closed;
        self.drop_send_state();
        self.ack_pending = false;
        self.accept_pending = false;
        self.ping_pending = false;
        self.ooo.clear();
        self.ooo_bytes = 0;
        self.partial = BytesMut::new();
        self.partial_frags = 0;
    }

    fn drop_send_state(&mut self) {
        self.unsent.clear();
        self.sent.clear();
        self.lost_queue.clear();
        self.unacked = 0;
        self.bytes_in_flight = 0;
        self.buffered = 0;
        self.snd_una = self.snd_nxt;
    }

    fn abort(&mut self, code: AbortCode) {
        if self.remote_cid != 0 {
            self.abort_pending = Some(code.to_byte());
        }
        self.finish(CloseReason::ProtocolViolation(code));
    }

    /// Handles one datagram from the peer. Anything invalid is counted and ignored.
    pub fn handle_datagram(&mut self, now: Instant, buf: &[u8]) {
        self.last_now = self.last_now.max(now);
        self.stats.bytes_received += buf.len() as u64;
        if self.state == State::Closed {
            return;
        }
        let pkt = match packet::parse(buf) {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match pkt {
            Packet::Retry { cid, token }
                if self.state == State::Handshake && cid == self.local_cid =>
            {
                self.stats.packets_received += 1;
                self.token = Some(token);
                self.hs_send_pending = true;
                self.hs_interval = 2 * self.cfg.initial_rtt;
                self.hs_next = now + self.hs_interval;
                self.hs_token_sends = 0;
                self.last_recv = now;
            }
            Packet::Accept {
                client_cid,
                server_cid,
            } if self.state == State::Handshake && client_cid == self.local_cid => {
                self.stats.packets_received += 1;
                self.remote_cid = server_cid;
                self.state = State::Established;
                self.last_recv = now;
                self.last_send = now;
                if self.hs_token_sends == 1 {
                    self.rtt_sample(now.saturating_duration_since(self.hs_last_sent));
                }
                self.events.push_back(Event::Connected);
            }
            Packet::Data { dst, ts, frames }
                if dst == self.local_cid && self.state != State::Handshake =>
            {
                self.stats.packets_received += 1;
                self.last_recv = now;
                self.handle_frames(now, ts, frames);
            }
            _ => self.stats.dropped_unexpected += 1,
        }
    }

    fn handle_frames(&mut self, now: Instant, ts: u16, frames: &[u8]) {
        let draining = matches!(self.state, State::Draining { .. });
        let mut eliciting = false;
        let mut urgent = false;
        for f in packet::frames(frames) {
            match f {
                Frame::Ack(a) => {
                    if !draining {
                        self.on_ack(now, &a);
                    }
                }
                Frame::Frag { seq, flags, data } => {
                    eliciting = true;
                    if !draining && self.on_frag(now, seq, flags, data) {
                        urgent = true;
                    }
                }
                Frame::Ping => eliciting = true,
                Frame::Abort { code } => {
                    self.finish(CloseReason::PeerAborted(AbortCode::from_byte(code)));
                }
            }
            if self.state == State::Closed {
                return;
            }
        }
        if eliciting {
            self.echo = Some((ts, now));
            self.ack_pending = true;
            self.unacked_eliciting += 1;
            if urgent || draining || self.unacked_eliciting >= 2 {
                self.ack_immediate = true;
            }
            let d = now + self.cfg.max_ack_delay;
            self.ack_deadline = Some(self.ack_deadline.map_or(d, |x| x.min(d)));
        }
    }

    /// Returns true when the ACK should go out at once (a gap, or out-of-window data).
    fn on_frag(&mut self, now: Instant, seq32: u32, flags: u8, data: &[u8]) -> bool {
        let seq = expand(self.rcv_nxt, seq32);
        if seq < self.rcv_nxt {
            self.stats.duplicate_fragments += 1;
            return false;
        }
        let offset = seq - self.rcv_nxt;
        if offset >= self.available_window() {
            self.stats.dropped_beyond_window += 1;
            return true;
        }
        if offset > 0 {
            if self.ooo.contains_key(&seq) {
                self.stats.duplicate_fragments += 1;
            } else if self.ooo_bytes + data.len() > self.cfg.recv_window {
                self.stats.dropped_beyond_window += 1;
            } else {
                self.ooo_bytes += data.len();
                self.ooo.insert(seq, (flags, Bytes::copy_from_slice(data)));
            }
            return true;
        }
        self.deliver(now, flags, data);
        self.rcv_nxt += 1;
        while self.state == State::Established {
            let Some((f, d)) = self.ooo.remove(&self.rcv_nxt) else {
                break;
            };
            self.ooo_bytes -= d.len();
            self.deliver(now, f, &d);
            self.rcv_nxt += 1;
        }
        !self.ooo.is_empty()
    }

    fn deliver(&mut self, now: Instant, flags: u8, data: &[u8]) {
        if flags & FLAG_CLOSE != 0 {
            if self.partial_frags > 0 {
                self.abort(AbortCode::BadClose);
                return;
            }
            if !self.closed_emitted {
                self.closed_emitted = true;
                self.events.push_back(Event::Closed(CloseReason::Peer));
            }
            self.drop_send_state();
            self.ooo.clear();
            self.ooo_bytes = 0;
            self.state = State::Draining {
                until: now + (3 * self.rto()).max(Duration::from_secs(1)),
            };
            // Acknowledge the marker at once: the closer is waiting for exactly this.
            self.ack_immediate = true;
            return;
        }
        if self.partial.len() + data.len() > self.cfg.max_message {
            self.abort(AbortCode::MessageTooLarge);
            return;
        }
        let msg = if flags & FLAG_END == 0 {
            // Capacity grows by doubling (at most twice the message, and never beyond the
            // largest message allowed).
            if self.partial.capacity() - self.partial.len() < data.len() {
                let want = (2 * (self.partial.len() + data.len())).min(self.cfg.max_message);
                self.partial.reserve(want - self.partial.len());
            }
            self.partial.extend_from_slice(data);
            self.partial_frags += 1;
            None
        } else if self.partial_frags == 0 {
            Some(Bytes::copy_from_slice(data))
        } else {
            self.partial.extend_from_slice(data);
            self.partial_frags = 0;
            Some(std::mem::take(&mut self.partial).freeze())
        };
        if let Some(msg) = msg {
            self.events_bytes += msg.len();
            self.stats.messages_received += 1;
            self.events.push_back(Event::Message(msg));
        }
    }

    fn on_ack(&mut self, now: Instant, a: &packet::AckFrame<'_>) {
        let cum = expand(self.snd_una, a.cumulative);
        if cum > self.snd_nxt {
            self.stats.invalid_acks += 1;
            return;
        }
        let fresh = cum >= self.peer_cum_max;
        if fresh {
            self.peer_cum_max = cum;
            self.peer_limit = cum + u64::from(a.window);
            if a.delay_ms != u8::MAX {
                let elapsed = u64::from(self.ts(now).wrapping_sub(a.echo_ts));
                let elapsed = Duration::from_millis(elapsed);
                if elapsed <= self.cfg.idle_timeout && self.next_pkt > 0 {
                    let delay = Duration::from_millis(u64::from(a.delay_ms))
                        .min(self.cfg.max_ack_delay + Duration::from_millis(1));
                    self.rtt_sample(elapsed.saturating_sub(delay));
                }
            }
        }
        let mut newest: Option<Instant> = None;
        let mut newly = 0usize;
        while self.snd_una < cum {
            let Some(f) = self.sent.pop_front() else {
                break;
            };
            self.snd_una += 1;
            if !f.acked {
                newly += 1;
                newest = newest.max(Some(f.first_sent));
                self.on_acked_frag(&f, now);
            }
        }
        self.snd_una = self.snd_una.max(cum);
        let mut prev_end = self.snd_una;
        let mut sacked = false;
        for (s32, e32) in a.ranges() {
            let s = expand(self.snd_una, s32);
            let e = expand(self.snd_una, e32);
            if s >= e || e > self.snd_nxt {
                self.stats.invalid_acks += 1;
                break;
            }
            // Ranges must ascend; below the cumulative point they are merely stale (an ACK
            // overtaken by a newer one).
            let s = s.max(prev_end);
            if s >= e {
                continue;
            }
            for seq in s..e {
                let i = (seq - self.snd_una) as usize;
                if !self.sent[i].acked {
                    self.sent[i].acked = true;
                    newly += 1;
                    newest = newest.max(Some(self.sent[i].first_sent));
                    let (len, in_flight, sent_at, retx) = {
                        let f = &self.sent[i];
                        (f.data.len(), f.in_flight, f.last_sent, f.retransmitted)
                    };
                    self.sent[i].in_flight = false;
                    self.check_spurious(retx, sent_at, now);
                    self.account_acked(len, in_flight, sent_at);
                }
            }
            prev_end = e;
            sacked = true;
        }
        while self.sent.front().is_some_and(|f| f.acked) {
            self.sent.pop_front();
            self.snd_una += 1;
        }
        if newly > 0 {
            self.pto_count = 0;
        }
        if let (true, Some(newest)) = (sacked, newest) {
            // Anything sent (last) before a fragment that already got through is lost.
            let reo = self.reorder_window();
            for i in 0..self.sent.len() {
                let f = &self.sent[i];
                if !f.acked && !f.lost && f.last_sent + reo < newest {
                    self.stats.fast_losses += 1;
                    self.mark_lost(i, now);
                }
            }
        }
        if self.close_queued && self.unsent.is_empty() && self.unacked == 0 {
            self.finish(CloseReason::Local);
        }
    }

    /// How much later than a delivered fragment another may still arrive before it counts as
    /// lost: a quarter of the minimum RTT at first (RACK), widened each time a retransmission
    /// turns out to have been unnecessary, never more than the smoothed RTT.
    fn reorder_window(&self) -> Duration {
        let srtt = self.srtt.unwrap_or(self.cfg.initial_rtt);
        let base = self.min_rtt.unwrap_or(srtt) / 4;
        (base * self.reo_quarters)
            .min(srtt)
            .max(Duration::from_millis(1))
    }

    /// A retransmitted fragment acknowledged sooner than any round trip could have taken:
    /// the original got through, it was only reordered.
    fn check_spurious(&mut self, retransmitted: bool, last_sent: Instant, now: Instant) {
        if retransmitted
            && self
                .min_rtt
                .is_some_and(|m| now.saturating_duration_since(last_sent) < m / 2)
        {
            self.reo_quarters = (self.reo_quarters + 1).min(16);
        }
    }

    fn on_acked_frag(&mut self, f: &SentFrag, now: Instant) {
        self.check_spurious(f.retransmitted, f.last_sent, now);
        self.account_acked(f.data.len(), f.in_flight, f.last_sent);
    }

    fn account_acked(&mut self, len: usize, in_flight: bool, sent_at: Instant) {
        self.unacked -= 1;
        self.buffered = self.buffered.saturating_sub(len);
        let size = flight_size(len);
        if in_flight {
            self.bytes_in_flight -= size;
        }
        if !self.cfg.congestion_control {
            return;
        }
        if self.recovery_start.is_some_and(|r| sent_at <= r) {
            return;
        }
        // Grow only when the window is actually used (an application-limited sender, such as
        // one sending small messages, keeps its window).
        if self.bytes_in_flight * 2 < self.cwnd {
            return;
        }
        let mss = self.frag_payload + 8;
        if self.cwnd < self.ssthresh {
            self.cwnd += size;
        } else {
            self.cwnd += (mss * size / self.cwnd).max(1);
        }
        self.cwnd = self.cwnd.min(2 * self.cfg.send_buffer);
    }

    fn mark_lost(&mut self, i: usize, now: Instant) {
        let seq = self.snd_una + i as u64;
        let f = &mut self.sent[i];
        f.lost = true;
        let sent_at = f.last_sent;
        if f.in_flight {
            f.in_flight = false;
            self.bytes_in_flight -= flight_size(f.data.len());
        }
        self.lost_queue.push_back(seq);
        if self.cfg.congestion_control && self.recovery_start.is_none_or(|r| sent_at > r) {
            let min = 2 * (self.frag_payload + 8);
            self.ssthresh = (self.cwnd / 2).max(min);
            self.cwnd = self.ssthresh;
            self.recovery_start = Some(now);
        }
    }

    /// Advances timers: handshake retransmission, retransmission timeout, keepalive, idle
    /// timeout, end of draining. Call when `poll_timeout`'s instant has passed (calling it
    /// early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        match self.state {
            State::Closed => return,
            State::Draining { until } => {
                if now >= until {
                    self.state = State::Closed;
                    self.ack_pending = false;
                }
                return;
            }
            _ => {}
        }
        if now >= self.last_recv + self.cfg.idle_timeout {
            self.finish(CloseReason::TimedOut);
            return;
        }
        if self.state == State::Handshake {
            if now >= self.hs_next {
                self.hs_send_pending = true;
                self.hs_interval =
                    (self.hs_interval * 2).min(self.cfg.max_rto.max(self.cfg.initial_rtt));
                self.hs_next = now + self.hs_interval;
            }
            return;
        }
        if self.unacked > 0 && now >= self.last_eliciting_sent + self.pto() {
            self.on_pto(now);
        } else if self.unacked == 0
            && !self.unsent.is_empty()
            && self.snd_nxt >= self.peer_limit
            && now >= self.last_send + self.rto()
        {
            // Zero window: probe so the peer's next ACK carries its window.
            self.ping_pending = true;
        }
        if self.tail_deadline().is_some_and(|t| now >= t) {
            self.tail_pending = true;
            self.tail_copied = true;
        }
        if now >= self.last_send + self.cfg.keepalive {
            self.ping_pending = true;
        }
    }

    /// Tail copy: when the last data sent is still unacknowledged and nothing newer followed to
    /// carry copies of it, one datagram of copies goes out after a quarter RTT, so a lost tail
    /// costs that instead of an RTO. Light traffic only, like all redundancy.
    fn tail_deadline(&self) -> Option<Instant> {
        if self.cfg.redundancy_bytes == 0
            || self.tail_copied
            || self.unacked == 0
            || self.bytes_in_flight > self.cfg.redundancy_max_in_flight
        {
            return None;
        }
        let d = (self.srtt.unwrap_or(self.cfg.initial_rtt) / 2)
            .max(Duration::from_millis(2))
            .min(self.pto());
        Some(self.last_eliciting_sent + d)
    }

    fn on_pto(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        let rto = self.rto();
        let mut any = false;
        for i in 0..self.sent.len() {
            let f = &self.sent[i];
            if !f.acked && !f.lost && f.last_sent + rto <= now {
                self.mark_lost(i, now);
                any = true;
            }
        }
        if !any {
            if let Some(i) = self.sent.iter().position(|f| !f.acked && !f.lost) {
                self.mark_lost(i, now);
            }
        }
        self.pto_count += 1;
        if self.cfg.congestion_control && self.pto_count >= 2 {
            self.cwnd = 2 * (self.frag_payload + 8);
        }
        // Restart the timer from now; the retransmission itself restarts it again.
        self.last_eliciting_sent = now;
    }

    /// When `handle_timeout` next needs to run, or `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_recv + self.cfg.idle_timeout;
        match self.state {
            State::Closed => None,
            State::Handshake => Some(idle.min(self.hs_next)),
            State::Draining { until } if !self.ack_pending => Some(until),
            State::Draining { .. } | State::Established => {
                let mut t = idle;
                if self.ack_pending {
                    let d = if self.ack_immediate {
                        self.last_now
                    } else {
                        self.ack_deadline.unwrap_or(self.last_now)
                    };
                    t = t.min(d);
                }
                if self.unacked > 0 {
                    t = t.min(self.last_eliciting_sent + self.pto());
                }
                if let Some(tail) = self.tail_deadline() {
                    t = t.min(tail);
                } else if !self.unsent.is_empty() && self.snd_nxt >= self.peer_limit {
                    t = t.min(self.last_send + self.rto());
                }
                if !self.ping_pending {
                    t = t.min(self.last_send + self.cfg.keepalive);
                }
                Some(t)
            }
        }
    }

    fn prune_lost_queue(&mut self) {
        while let Some(&seq) = self.lost_queue.front() {
            let valid = seq >= self.snd_una
                && self
                    .sent
                    .get((seq - self.snd_una) as usize)
                    .is_some_and(|f| f.lost && !f.acked);
            if valid {
                break;
            }
            self.lost_queue.pop_front();
        }
    }

    fn cwnd_allows(&self, len: usize) -> bool {
        !self.cfg.congestion_control
            || self.bytes_in_flight == 0
            || self.bytes_in_flight + flight_size(len) <= self.cwnd
    }

    fn can_send_new(&self) -> bool {
        self.unsent
            .front()
            .is_some_and(|(d, _)| self.snd_nxt < self.peer_limit && self.cwnd_allows(d.len()))
    }

    fn ack_ranges(&self, max: usize) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut cur: Option<(u64, u64)> = None;
        for &k in self.ooo.keys() {
            match cur {
                Some((s, e)) if e == k => cur = Some((s, e + 1)),
                Some((s, e)) => {
                    out.push((s as u32, e as u32));
                    if out.len() == max {
                        return out;
                    }
                    cur = Some((k, k + 1));
                }
                None => cur = Some((k, k + 1)),
            }
        }
        if let Some((s, e)) = cur {
            if out.len() < max {
                out.push((s as u32, e as u32));
            }
        }
        out
    }

    /// Writes the next datagram to send into `buf` (cleared first) and returns its length, or
    /// `None` when there is nothing to send now. Call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        self.last_now = self.last_now.max(now);
        buf.clear();
        if let Some(code) = self.abort_pending.take() {
            packet::write_data_header(buf, self.remote_cid, self.ts(now));
            packet::write_abort(buf, code);
            return Some(self.sent_datagram(now, buf.len()));
        }
        match self.state {
            State::Closed => return None,
            State::Handshake => {
                if !self.hs_send_pending {
                    return None;
                }
                self.hs_send_pending = false;
                packet::write_initial(buf, self.local_cid, self.token.as_ref());
                self.hs_last_sent = now;
                if self.token.is_some() {
                    self.hs_token_sends += 1;
                }
                return Some(self.sent_datagram(now, buf.len()));
            }
            _ => {}
        }
        if self.accept_pending {
            self.accept_pending = false;
            packet::write_accept(buf, self.remote_cid, self.local_cid);
            return Some(self.sent_datagram(now, buf.len()));
        }
        let draining = matches!(self.state, State::Draining { .. });
        let ack_due =
            self.ack_pending && (self.ack_immediate || self.ack_deadline.is_none_or(|d| d <= now));
        if !draining {
            self.prune_lost_queue();
        }
        let has_retx = !draining
            && self.lost_queue.front().is_some_and(|&s| {
                let f = &self.sent[(s - self.snd_una) as usize];
                self.cwnd_allows(f.data.len())
            });
        let can_new = !draining && self.can_send_new();
        let tail = self.tail_pending && !draining;
        self.tail_pending = false;
        if !(ack_due || has_retx || can_new || self.ping_pending || tail) {
            return None;
        }
        let limit = self.cfg.mtu;
        packet::write_data_header(buf, self.remote_cid, self.ts(now));
        if self.ack_pending {
            let room = (limit - buf.len() - packet::ACK_BASE_LEN) / packet::ACK_RANGE_LEN;
            let max = if has_retx || can_new {
                ACK_RANGES_WITH_DATA
            } else {
                packet::MAX_ACK_RANGES.min(room)
            };
            let ranges = self.ack_ranges(max);
            let (echo_ts, delay) = match self.echo {
                Some((ts, at)) => {
                    let d = now.saturating_duration_since(at).as_millis().min(254) as u8;
                    (ts, d)
                }
                None => (0, u8::MAX),
            };
            let window = self.available_window().min(u64::from(u16::MAX)) as u16;
            self.advertised = u64::from(window);
            packet::write_ack(buf, self.rcv_nxt as u32, echo_ts, delay, window, &ranges);
            self.ack_pending = false;
            self.ack_immediate = false;
            self.ack_deadline = None;
            self.unacked_eliciting = 0;
        }
        let pkt = self.next_pkt;
        self.next_pkt += 1;
        let mut runs = RunWriter::default();
        let mut carried = false;
        let mut copied = false;
        if !draining {
            // 1. Retransmissions of fragments judged lost.
            while let Some(&seq) = self.lost_queue.front() {
                let i = (seq - self.snd_una) as usize;
                let len = self.sent[i].data.len();
                if buf.len() + runs.cost(buf, seq as u32, len) > limit || !self.cwnd_allows(len) {
                    break;
                }
                self.lost_queue.pop_front();
                let f = &mut self.sent[i];
                runs.push(buf, seq as u32, f.flags, &f.data);
                f.lost = false;
                f.retransmitted = true;
                f.in_flight = true;
                f.last_sent = now;
                f.sends += 1;
                f.last_pkt = pkt;
                self.bytes_in_flight += flight_size(len);
                self.stats.retransmissions += 1;
                carried = true;
                self.prune_lost_queue();
            }
            // 2. New fragments, within the peer's window and the congestion window.
            while let Some((data, flags)) = self.unsent.front() {
                let len = data.len();
                if self.snd_nxt >= self.peer_limit
                    || !self.cwnd_allows(len)
                    || buf.len() + runs.cost(buf, self.snd_nxt as u32, len) > limit
                {
                    break;
                }
                let flags = *flags;
                let Some((data, _)) = self.unsent.pop_front() else {
                    break;
                };
                runs.push(buf, self.snd_nxt as u32, flags, &data);
                self.sent.push_back(SentFrag {
                    data,
                    flags,
                    first_sent: now,
                    last_sent: now,
                    sends: 1,
                    last_pkt: pkt,
                    acked: false,
                    lost: false,
                    in_flight: true,
                    retransmitted: false,
                });
                self.snd_nxt += 1;
                self.unacked += 1;
                self.bytes_in_flight += flight_size(len);
                self.stats.fragments_sent += 1;
                self.tail_copied = false;
                carried = true;
            }
            // 3. Redundancy: spare room re-carries recent unacknowledged fragments.
            if (carried || tail)
                && self.cfg.redundancy_bytes > 0
                && self.bytes_in_flight <= self.cfg.redundancy_max_in_flight
            {
                let end = limit.min(buf.len() + self.cfg.redundancy_bytes);
                let min_gap = Duration::from_millis(1);
                for i in 0..self.sent.len() {
                    let seq = self.snd_una + i as u64;
                    let f = &self.sent[i];
                    if f.acked
                        || f.lost
                        || f.last_pkt == pkt
                        || f.sends >= self.cfg.redundancy_max_sends
                        || now.saturating_duration_since(f.last_sent) < min_gap
                    {
                        continue;
                    }
                    if buf.len() + runs.cost(buf, seq as u32, f.data.len()) > end {
                        continue;
                    }
                    let f = &mut self.sent[i];
                    runs.push(buf, seq as u32, f.flags, &f.data);
                    f.sends += 1;
                    f.last_sent = now;
                    f.last_pkt = pkt;
                    self.stats.redundant_copies += 1;
                    copied = true;
                }
            }
        }
        if carried || copied {
            self.ping_pending = false;
            self.last_eliciting_sent = now;
        } else if self.ping_pending || tail {
            self.ping_pending = false;
            packet::write_ping(buf);
            self.last_eliciting_sent = now;
        }
        Some(self.sent_datagram(now, buf.len()))
    }

    fn sent_datagram(&mut self, now: Instant, len: usize) -> usize {
        self.last_send = now;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_picks_the_nearest_value() {
        assert_eq!(expand(0, 5), 5);
        assert_eq!(expand(100, 99), 99);
        assert_eq!(expand((1 << 32) - 2, 3), (1 << 32) + 3);
        assert_eq!(expand((1 << 32) + 3, u32::MAX), (1 << 32) - 1);
        assert_eq!(expand(3, u32::MAX), u64::from(u32::MAX));
    }

    fn pair(cfg: Config) -> (Connection, Connection, Instant) {
        let t = Instant::now();
        let mut c = Connection::new(cfg.clone(), Side::Client, t, 11, 22);
        c.state = State::Established;
        let s = Connection::new(cfg, Side::Server, t, 22, 11);
        (c, s, t)
    }

    fn pump(a: &mut Connection, b: &mut Connection, now: Instant) -> usize {
        let mut buf = Vec::new();
        let mut n = 0;
        while let Some(len) = a.poll_transmit(now, &mut buf) {
            b.handle_datagram(now, &buf[..len]);
            n += 1;
            assert!(n < 10_000);
        }
        n
    }

    #[test]
    fn fragments_reassemble_and_acks_free_the_buffer() {
        let (mut c, mut s, t) = pair(Config::default());
        s.accept_pending = false;
        let msg: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        c.send(Bytes::from(msg.clone())).unwrap();
        c.send(Bytes::new()).unwrap();
        assert!(pump(&mut c, &mut s, t) >= 5);
        assert_eq!(s.poll_event(), Some(Event::Message(Bytes::from(msg))));
        assert_eq!(s.poll_event(), Some(Event::Message(Bytes::new())));
        let later = t + Duration::from_millis(20);
        pump(&mut s, &mut c, later);
        assert_eq!(c.buffered(), 0);
        assert_eq!(c.bytes_in_flight(), 0);
    }

    #[test]
    fn oversized_message_is_refused_and_peer_over_limit_is_aborted() {
        let cfg = Config {
            max_message: 1000,
            ..Config::default()
        };
        let (mut c, mut s, t) = pair(Config::default());
        s.cfg.max_message = 1000;
        s.accept_pending = false;
        let mut small = Connection::new(cfg, Side::Client, t, 1, 2);
        assert_eq!(
            small.send(Bytes::from(vec![0; 1001])),
            Err(SendError::TooLarge(1001))
        );
        c.send(Bytes::from(vec![1; 3000])).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(
            s.poll_event(),
            Some(Event::Closed(CloseReason::ProtocolViolation(
                AbortCode::MessageTooLarge
            )))
        );
        pump(&mut s, &mut c, t);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(CloseReason::PeerAborted(
                AbortCode::MessageTooLarge
            )))
        );
        assert!(c.is_drained() && s.is_drained());
    }

    #[test]
    fn the_close_marker_is_acknowledged_at_once() {
        let (mut c, mut s, t) = pair(Config::default());
        s.accept_pending = false;
        c.close();
        pump(&mut c, &mut s, t);
        assert_eq!(s.poll_event(), Some(Event::Closed(CloseReason::Peer)));
        // Draining, but the ACK is due now, not at the end of draining.
        assert!(s.poll_timeout().is_some_and(|x| x <= t));
        pump(&mut s, &mut c, t);
        assert_eq!(c.poll_event(), Some(Event::Closed(CloseReason::Local)));
        assert!(c.is_drained());
        assert!(
            s.poll_timeout()
                .is_some_and(|x| x >= t + Duration::from_secs(1))
        );
    }

    #[test]
    fn a_slow_reader_closes_the_window_and_reopens_it() {
        let small = Config {
            recv_window: 10 * 1137,
            ..Config::default()
        };
        let (mut c, _, t) = pair(Config::default());
        let mut s = Connection::new(small, Side::Server, t, 22, 11);
        s.accept_pending = false;
        let msgs: Vec<Bytes> = (0..60u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        for m in &msgs {
            c.send(m.clone()).unwrap();
        }
        let mut got = Vec::new();
        let mut now = t;
        let mut max_held = 0;
        let mut reopened = 0;
        for round in 0..2000 {
            now += Duration::from_millis(5);
            c.handle_timeout(now);
            s.handle_timeout(now);
            pump(&mut c, &mut s, now);
            pump(&mut s, &mut c, now);
            max_held = max_held.max(s.events.len());
            // The application reads only every 20th round.
            if round % 20 == 19 {
                let was_closed = s.advertised < s.window_frags() / 4;
                while let Some(ev) = s.poll_event() {
                    if let Event::Message(m) = ev {
                        got.push(m);
                    }
                }
                // The reopened window is announced at once, not on the sender's next probe.
                let sent = pump(&mut s, &mut c, now);
                if was_closed {
                    reopened += 1;
                    assert!(sent >= 1, "window update not sent in round {round}");
                }
            }
            if got.len() == msgs.len() {
                break;
            }
        }
        assert_eq!(got, msgs);
        // Never more held than the window allows.
        assert!(max_held <= 12, "held {max_held}");
        // ... and the window was really filled (the slow reader held the sender back).
        assert!(max_held >= 8, "held {max_held}");
        assert!(reopened >= 2, "the window closed only {reopened} times");
    }
}
