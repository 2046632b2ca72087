//! `console`: the tutorials' two-person chat, with the operator at the server's terminal.
//!
//! Every client line is printed on the server's stdout as `[ADDR] text`; every line the operator
//! types on stdin goes to the clients. Over TCP an operator line goes to every connected client,
//! or to one chosen with `/to ADDR`; over UDP it goes to the address heard from last, or to the
//! one chosen with `/to ADDR`. `bye` or `quit` from either side (and `q` over UDP, as the
//! tutorial's UDP chat does) ends that conversation with a `disconnected` notice to the other
//! side; when the operator says it, the word itself is relayed first, because the tutorial's TCP
//! client stops when it reads `quit`.
//!
//! The terminal is process-wide, so it is owned by the service rather than by a session: one
//! thread reads stdin into a small bounded channel, one task turns those lines into pushes
//! through each client's [`ConnHandle`], and one thread writes stdout from a bounded queue. A
//! stdout that is closed or stuck loses lines (with a warning) and never blocks or stops the
//! server; the end of stdin stops operator input, not the server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self as std_mpsc, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::message::Message;
use crate::net::PeerAddr;
use crate::service::{ConnHandle, Lang, Outbox, PeerInfo, PushError, Service, Session, Transport};
use crate::transport::tcp::RAW_GAP;

/// Longest operator line; the rest of a longer one is discarded (with a warning).
pub const MAX_OPERATOR_LINE: usize = 64 * 1024;
/// Operator lines read ahead of the task that sends them.
const INPUT_QUEUE: usize = 64;
/// Lines waiting for stdout before new ones are dropped.
const OUTPUT_QUEUE: usize = 4096;
/// Bytes waiting for stdout before new lines are dropped.
const OUTPUT_BYTES: usize = 4 << 20;
/// Longest client line printed whole; the rest is replaced by a note of its size.
pub const MAX_PRINTED_LINE: usize = 64 * 1024;
/// How long the operator's quit word keeps trying to close a client that does not read.
const CLOSE_RETRY: Duration = Duration::from_secs(60);
/// How often a console started in the background checks whether it owns the terminal yet.
const FOREGROUND_POLL: Duration = Duration::from_millis(500);

/// The notice that ends a conversation, sent to the side that did not end it.
pub fn disconnected_notice(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "disconnected",
        Lang::Zh => "您已断开连接!",
    }
}

/// The console service. Cheap to create; the terminal machinery starts with the server (see
/// [`Service::start`]) or, failing that, when the first client arrives.
#[derive(Debug)]
pub struct Console {
    shared: Arc<Shared>,
    started: Mutex<bool>,
}

impl Console {
    /// A console whose notices to clients are in `lang`. The operator's own lines on stdout are
    /// always in English.
    pub fn new(lang: Lang) -> Console {
        Console {
            shared: Arc::new(Shared {
                lang,
                printer: OnceLock::new(),
                registry: Mutex::new(Registry::default()),
            }),
            started: Mutex::new(false),
        }
    }

    /// Starts the stdin reader, the operator task and the stdout writer, once.
    fn ensure_started(&self) {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if *started {
            return;
        }
        *started = true;
        if let Err(e) = self.spawn_terminal() {
            error!("console: cannot start the operator terminal: {e}");
        }
    }

    fn spawn_terminal(&self) -> io::Result<()> {
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        let printer = Printer::spawn(stdout)?;
        let _ = self.shared.printer.set(printer);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("no async runtime: {e}")))?;
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        std::thread::Builder::new()
            .name("sockit-stdin".into())
            .spawn(move || read_operator(tx))?;
        runtime.spawn(run_operator(self.shared.clone(), rx));
        Ok(())
    }
}

impl Service for Console {
    type Session = ConsoleSession;

    fn open(&self, peer: &PeerInfo) -> ConsoleSession {
        self.ensure_started();
        let mut label = peer.addr.to_string();
        if peer.addr.socket_addr().is_none() {
            // Unnamed local peers share one address text; the id tells them apart.
            let _ = write!(label, "#{}", peer.id);
        }
        ConsoleSession {
            shared: self.shared.clone(),
            id: peer.id,
            label: label.into(),
            transport: peer.transport,
            joined: false,
        }
    }

    fn start(&self) {
        self.ensure_started();
    }
}

/// One client's side of the conversation.
#[derive(Debug)]
pub struct ConsoleSession {
    shared: Arc<Shared>,
    id: u64,
    label: Arc<str>,
    transport: Transport,
    /// Whether the operator can reach this client (TCP: from the start; UDP: from its first
    /// line, so that a farewell from a forgotten peer does not open a conversation).
    joined: bool,
}

impl ConsoleSession {
    fn join(&mut self, out: &mut Outbox) {
        let handle = out.handle();
        self.shared.join(Client {
            id: self.id,
            label: self.label.clone(),
            addr: out.peer().clone(),
            transport: self.transport,
            handle,
            heard: 0,
        });
        self.joined = true;
    }
}

impl Session for ConsoleSession {
    async fn on_open(&mut self, out: &mut Outbox) {
        if self.transport.is_connection() {
            self.join(out);
        }
    }

    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        let text = String::from_utf8_lossy(msg.body());
        if self.transport == Transport::Udp && is_farewell(&text) {
            // The tutorial's UDP client answers our quit word with this: the conversation is
            // over, and replying would only start another.
            if self.joined {
                self.shared.leave(self.id);
            }
            debug!("console: {} said goodbye", self.label);
            out.close();
            return;
        }
        if !self.joined {
            self.join(out);
        }
        self.shared.heard_from(self.id);
        let mut printed = String::new();
        for line in lines(&text) {
            if is_quit_word(line, self.transport) {
                self.shared.print_block(printed);
                self.shared.leave(self.id);
                out.send(Message::text(disconnected_notice(self.shared.lang)));
                out.close();
                return;
            }
            let _ = writeln!(printed, "[{}] {}", self.label, printable(&shorten(line)));
        }
        self.shared.print_block(printed);
    }

    fn on_close(&mut self) {
        if self.joined {
            self.shared.leave(self.id);
        }
    }

    fn ends_on_quit_word(&self) -> bool {
        false
    }
}

/// State shared by the sessions and the operator task.
#[derive(Debug)]
struct Shared {
    lang: Lang,
    printer: OnceLock<Printer>,
    registry: Mutex<Registry>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Prints one line on stdout (never waits).
    fn print(&self, line: &str) {
        if let Some(printer) = self.printer.get() {
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            printer.write(bytes);
        }
    }

    /// Prints lines that already end with `\n`, in one piece.
    fn print_block(&self, block: String) {
        if block.is_empty() {
            return;
        }
        if let Some(printer) = self.printer.get() {
            printer.write(block.into_bytes());
        }
    }

    fn join(&self, client: Client) {
        let mut registry = self.registry();
        registry.transport.get_or_insert(client.transport);
        self.print(&format!("[{}] connected", client.label));
        registry.clients.insert(client.id, client);
    }

    fn heard_from(&self, id: u64) {
        let mut registry = self.registry();
        registry.clock += 1;
        let now = registry.clock;
        if let Some(client) = registry.clients.get_mut(&id) {
            client.heard = now;
        }
    }

    /// Ends the operator's side of a conversation; the first call for a client prints
    /// `[ADDR] disconnected`, later ones do nothing.
    fn leave(&self, id: u64) {
        let mut registry = self.registry();
        let Some(client) = registry.clients.remove(&id) else {
            return;
        };
        self.print(&format!("[{}] disconnected", client.label));
        if registry.target == Target::One(id) {
            registry.target = Target::Default;
            self.print(&format!(
                "* {} was the target; lines now go to {}",
                client.label,
                registry.describe_target()
            ));
        }
    }

    /// Handles one line typed by the operator.
    async fn operator_line(&self, line: &str, pacer: &mut Pacer) {
        match parse_command(line) {
            Command::Empty => {}
            Command::Help => {
                for help in HELP {
                    self.print(help);
                }
            }
            Command::Who => {
                let text = self.registry().who();
                self.print_block(text);
            }
            Command::ShowTarget => {
                let target = self.registry().describe_target();
                self.print(&format!("* lines go to {target}"));
            }
            Command::SetTarget(key) => {
                let mut registry = self.registry();
                let target = if key.eq_ignore_ascii_case("all") {
                    Ok(Target::Default)
                } else {
                    registry.find(key).map(Target::One)
                };
                match target {
                    Ok(target) => {
                        registry.target = target;
                        self.print(&format!("* lines go to {}", registry.describe_target()));
                    }
                    Err(why) => self.print(&why),
                }
            }
            Command::SendTo { to, text } => {
                let recipients = {
                    let registry = self.registry();
                    if to.eq_ignore_ascii_case("all") {
                        Ok(registry.recipients(Target::Default))
                    } else {
                        registry
                            .find(to)
                            .map(|id| registry.recipients(Target::One(id)))
                    }
                };
                match recipients {
                    Ok(recipients) => self.deliver(recipients, text, pacer).await,
                    Err(why) => self.print(&why),
                }
            }
            Command::Send(text) => {
                let recipients = {
                    let registry = self.registry();
                    registry.recipients(registry.target)
                };
                self.deliver(recipients, text, pacer).await;
            }
            Command::Unknown(name) => self.print(&format!(
                "* unknown command /{name}: /help lists the commands; start a line with // \
                 to send one that begins with /"
            )),
        }
    }

    /// Sends an operator line; a quit word also ends those conversations.
    async fn deliver(&self, recipients: Vec<Recipient>, text: &str, pacer: &mut Pacer) {
        if recipients.is_empty() {
            let none = match self.registry().transport {
                Some(Transport::Udp) => "* no client has written yet; line not sent",
                _ => "* no client connected; line not sent",
            };
            self.print(none);
            return;
        }
        let word = text.trim();
        let quitting: Vec<&Recipient> = recipients
            .iter()
            .filter(|r| is_quit_word(word, r.transport))
            .collect();
        let stream = recipients.iter().any(|r| r.transport.is_connection());
        if stream {
            pacer.wait().await;
        }
        for r in &recipients {
            let line = if quitting.iter().any(|q| q.id == r.id) {
                word
            } else {
                text
            };
            push(r, Message::text(line));
        }
        pacer.mark();
        if quitting.is_empty() {
            return;
        }
        for r in &quitting {
            self.leave(r.id);
        }
        // Over a stream, the word and the notice must not arrive in one read: the tutorial's
        // client compares what it reads with `quit`.
        if stream {
            pacer.wait().await;
        }
        let notice = Message::text(disconnected_notice(self.lang));
        for r in &quitting {
            push(r, notice.clone());
            close(r);
        }
        pacer.mark();
    }
}

/// Queues `msg` for one client without waiting.
fn push(to: &Recipient, msg: Message) {
    match to.handle.try_send(msg) {
        Ok(()) => {}
        Err(PushError::Full) => warn!(
            "console: {} is not reading (its queue is full): operator line dropped",
            to.label
        ),
        Err(PushError::Closed) => debug!("console: {} already gone", to.label),
    }
}

/// Asks a client's connection to close after what is queued for it. A client whose queue is
/// full (it stopped reading) is asked again until there is room, for a while: the server's
/// write stall timeout ends such a connection in the meantime anyway.
fn close(to: &Recipient) {
    match to.handle.close() {
        Ok(()) => {}
        Err(PushError::Closed) => debug!("console: {} already gone", to.label),
        Err(PushError::Full) => {
            let (handle, label) = (to.handle.clone(), to.label.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + CLOSE_RETRY;
                loop {
                    tokio::time::sleep(RAW_GAP).await;
                    match handle.close() {
                        Err(PushError::Full) if Instant::now() < deadline => {}
                        Err(PushError::Full) => {
                            warn!(
                                "console: {label} has not read anything for {}s: cannot ask \
                                 its connection to close",
                                CLOSE_RETRY.as_secs()
                            );
                            return;
                        }
                        Ok(()) | Err(PushError::Closed) => return,
                    }
                }
            });
        }
    }
}

const HELP: &[&str] = &[
    "* TEXT            send TEXT (TCP: to every client; UDP: to the last one heard from)",
    "* /to ADDR TEXT   send one line to ADDR (a whole address, or a port if unique)",
    "* /to ADDR        send the following lines to ADDR",
    "* /to all         back to the default (TCP: every client; UDP: the last one heard from)",
    "* /to             show where lines go",
    "* /who            list the connected clients",
    "* bye, quit       end the conversation with the target(s); over UDP also q",
    "* //TEXT          send /TEXT",
];

/// Where the operator's lines go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Target {
    /// TCP: every client; UDP: the one heard from last.
    #[default]
    Default,
    /// One client, by session id.
    One(u64),
}

/// A client the operator can reach.
#[derive(Debug)]
struct Client {
    id: u64,
    label: Arc<str>,
    addr: PeerAddr,
    transport: Transport,
    handle: ConnHandle,
    /// When it last spoke, on the registry's clock (0: not yet).
    heard: u64,
}

/// What the operator task needs to push to one client, taken out of the lock.
#[derive(Debug)]
struct Recipient {
    id: u64,
    label: Arc<str>,
    transport: Transport,
    handle: ConnHandle,
}

/// The operator's view of the clients; bounded by the server's connection (peer) limit.
#[derive(Debug, Default)]
struct Registry {
    /// By session id, which is also order of arrival.
    clients: BTreeMap<u64, Client>,
    target: Target,
    /// The server's transport, known once a client has arrived.
    transport: Option<Transport>,
    clock: u64,
}

impl Registry {
    fn recipients(&self, target: Target) -> Vec<Recipient> {
        let pick = |c: &Client| Recipient {
            id: c.id,
            label: c.label.clone(),
            transport: c.transport,
            handle: c.handle.clone(),
        };
        match target {
            Target::One(id) => self.clients.get(&id).map(pick).into_iter().collect(),
            Target::Default if self.transport == Some(Transport::Udp) => self
                .clients
                .values()
                .filter(|c| c.heard > 0)
                .max_by_key(|c| c.heard)
                .map(pick)
                .into_iter()
                .collect(),
            Target::Default => self.clients.values().map(pick).collect(),
        }
    }

    fn describe_target(&self) -> String {
        match (self.target, self.transport) {
            (Target::One(id), _) => match self.clients.get(&id) {
                Some(c) => c.label.to_string(),
                None => "nobody".to_owned(),
            },
            (Target::Default, Some(Transport::Udp)) => {
                match self.recipients(Target::Default).first() {
                    Some(last) => format!("the last address heard from ({})", last.label),
                    None => "the last address heard from (nobody yet)".to_owned(),
                }
            }
            (Target::Default, Some(Transport::Tcp | Transport::Rudp)) => "every client".to_owned(),
            (Target::Default, None) => {
                "every client (over UDP: the last address heard from)".to_owned()
            }
        }
    }

    fn who(&self) -> String {
        let mut text = String::new();
        match self.clients.len() {
            0 => text.push_str("* no client connected\n"),
            n => {
                let _ = writeln!(
                    text,
                    "* {n} client{} connected; lines go to {}",
                    if n == 1 { "" } else { "s" },
                    self.describe_target()
                );
            }
        }
        for client in self.clients.values() {
            let _ = writeln!(text, "*   {}", client.label);
        }
        text
    }

    /// The client `key` names: its whole address, or a port that only one client has.
    fn find(&self, key: &str) -> Result<u64, String> {
        let addr = key.parse::<SocketAddr>().ok();
        if let Some(c) = self
            .clients
            .values()
            .find(|c| &*c.label == key || (addr.is_some() && c.addr.socket_addr() == addr))
        {
            return Ok(c.id);
        }
        if let Ok(port) = key.strip_prefix(':').unwrap_or(key).parse::<u16>() {
            let mut found = self
                .clients
                .values()
                .filter(|c| c.addr.socket_addr().map(|a| a.port()) == Some(port));
            match (found.next(), found.next()) {
                (Some(c), None) => return Ok(c.id),
                (Some(a), Some(b)) => {
                    return Err(format!(
                        "* port {port} is used by several clients ({}, {}, ...): give the whole \
                         address",
                        a.label, b.label
                    ));
                }
                (None, _) => {}
            }
        }
        Err(format!("* no client at {key} (/who lists them)"))
    }
}

/// One line typed by the operator, understood.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    /// A blank line: nothing to send.
    Empty,
    /// Text for the current target.
    Send(&'a str),
    /// `/to ADDR TEXT`.
    SendTo { to: &'a str, text: &'a str },
    /// `/to ADDR` or `/to all`.
    SetTarget(&'a str),
    /// `/to`.
    ShowTarget,
    /// `/who`.
    Who,
    /// `/help`.
    Help,
    /// Any other `/word`.
    Unknown(&'a str),
}

fn parse_command(line: &str) -> Command<'_> {
    if line.trim().is_empty() {
        return Command::Empty;
    }
    if line.starts_with("//") {
        return Command::Send(&line[1..]);
    }
    let Some(command) = line.strip_prefix('/') else {
        return Command::Send(line);
    };
    let (name, rest) = split_word(command);
    if name.eq_ignore_ascii_case("to") {
        let (to, text) = split_word(rest);
        match (to.is_empty(), text.is_empty()) {
            (true, _) => Command::ShowTarget,
            (false, true) => Command::SetTarget(to),
            (false, false) => Command::SendTo { to, text },
        }
    } else if name.eq_ignore_ascii_case("who") {
        Command::Who
    } else if name.eq_ignore_ascii_case("help") || name == "?" {
        Command::Help
    } else {
        Command::Unknown(name)
    }
}

/// The first whitespace-separated word of `s`, and what follows it (leading space removed).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Whether `line` ends a conversation: `bye` or `quit` in any case, and over UDP also `q`
/// (the tutorial's UDP chat compares `upper() == 'Q'`).
fn is_quit_word(line: &str, transport: Transport) -> bool {
    let word = line.trim();
    word.eq_ignore_ascii_case("bye")
        || word.eq_ignore_ascii_case("quit")
        || (transport == Transport::Udp && word.eq_ignore_ascii_case("q"))
}

/// Whether a UDP peer's datagram is the farewell its side sends after reading our quit word.
fn is_farewell(text: &str) -> bool {
    let text = text.trim();
    [Lang::En, Lang::Zh]
        .into_iter()
        .any(|lang| text == disconnected_notice(lang))
}

/// The lines of a message: one final line ending is not an extra empty line, and `\r\n` counts
/// as one ending.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
}

/// `line`, or its first [`MAX_PRINTED_LINE`] bytes and a note of how much was left out.
fn shorten(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_PRINTED_LINE {
        return line.into();
    }
    let mut end = MAX_PRINTED_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [{} more bytes not shown]",
        &line[..end],
        line.len() - end
    )
    .into()
}

/// `line` with control characters (escape sequences included) removed, so that a client cannot
/// move the operator's cursor, recolour or clear the screen. Tabs stay.
fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if line.contains(unsafe_char) {
        line.chars().filter(|&c| !unsafe_char(c)).collect()
    } else {
        line.into()
    }
}

/// Spaces consecutive pushes to stream clients by [`RAW_GAP`], so that a client reading with
/// one `recv(1024)` per message reads them apart.
#[derive(Debug, Default)]
struct Pacer {
    last: Option<Instant>,
}

impl Pacer {
    async fn wait(&self) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + RAW_GAP).await;
        }
    }

    fn mark(&mut self) {
        self.last = Some(Instant::now());
    }
}

/// The operator task: sends what the stdin thread reads, until stdin ends.
async fn run_operator(shared: Arc<Shared>, mut lines: mpsc::Receiver<String>) {
    let mut pacer = Pacer::default();
    while let Some(line) = lines.recv().await {
        shared.operator_line(&line, &mut pacer).await;
    }
}

/// The stdin thread: reads operator lines (bounded) into `tx` until stdin ends or fails.
fn read_operator(tx: mpsc::Sender<String>) {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    let mut waited = false;
    loop {
        if in_background() {
            if !waited {
                warn!(
                    "console: started in the background: operator input waits until sockit is \
                     brought to the foreground (fg)"
                );
                waited = true;
            }
            std::thread::sleep(FOREGROUND_POLL);
            continue;
        }
        match read_bounded_line(&mut input, MAX_OPERATOR_LINE, &mut buf) {
            Ok(Some(cut)) => {
                if cut {
                    warn!(
                        "console: operator line longer than {MAX_OPERATOR_LINE} bytes: the rest \
                         was discarded"
                    );
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
            Ok(None) => {
                info!(
                    "console: operator input (stdin) ended; still serving, and client lines \
                     are still printed"
                );
                return;
            }
            Err(e) => {
                warn!("console: cannot read operator input (stdin): {e}; still serving");
                return;
            }
        }
    }
}

/// Whether stdin is a terminal that belongs to another job: reading it would stop the whole
/// server with SIGTTIN.
fn in_background() -> bool {
    let fd = libc::STDIN_FILENO;
    // SAFETY: isatty, tcgetpgrp and getpgrp only inspect the process and a descriptor number.
    unsafe {
        if libc::isatty(fd) != 1 {
            return false;
        }
        let owner = libc::tcgetpgrp(fd);
        owner > 0 && owner != libc::getpgrp()
    }
}

/// Reads one line (without its `\n` or `\r\n`) into `buf`, keeping at most `max` bytes of it.
/// Returns `None` at the end of input, else whether the line was cut.
fn read_bounded_line(
    input: &mut impl BufRead,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<Option<bool>> {
    buf.clear();
    let mut cut = false;
    let mut any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(cut));
        }
        any = true;
        let end = memchr::memchr(b'\n', available);
        let chunk = &available[..end.unwrap_or(available.len())];
        let room = max.saturating_sub(buf.len());
        if chunk.len() > room {
            cut = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.map_or(available.len(), |i| i + 1);
        input.consume(used);
        if end.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(cut));
        }
    }
}

/// Writes lines to stdout from a thread of its own, so the server never waits for the terminal.
#[derive(Debug)]
struct Printer {
    tx: SyncSender<Vec<u8>>,
    /// Lines not written (queue full or stdout failing) since the writer last said so.
    dropped: Arc<AtomicU64>,
    /// Set on the first line dropped for a full queue; cleared when a write succeeds.
    stalled: Arc<AtomicBool>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
}

impl Printer {
    fn spawn<W: Write + Send + 'static>(out: W) -> io::Result<Printer> {
        let (tx, rx) = std_mpsc::sync_channel(OUTPUT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let counters = Counters {
            dropped: dropped.clone(),
            stalled: stalled.clone(),
            queued: queued.clone(),
        };
        std::thread::Builder::new()
            .name("sockit-stdout".into())
            .spawn(move || print_loop(rx, out, &counters))?;
        Ok(Printer {
            tx,
            dropped,
            stalled,
            queued,
        })
    }

    /// Queues bytes for stdout without waiting; drops them if the queue is full.
    fn write(&self, bytes: Vec<u8>) {
        let len = bytes.len();
        let room = self.queued.fetch_add(len, Ordering::Relaxed) + len <= OUTPUT_BYTES;
        let sent = room && self.tx.try_send(bytes).is_ok();
        if !sent {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.stalled.swap(true, Ordering::Relaxed) {
                warn!("console: stdout is not keeping up: lines for it are being dropped");
            }
        }
    }
}

/// The printer's counters, shared with its writer thread.
struct Counters {
    dropped: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
}

fn print_loop<W: Write>(rx: std_mpsc::Receiver<Vec<u8>>, mut out: W, counters: &Counters) {
    let Counters {
        dropped,
        stalled,
        queued,
    } = counters;
    let mut failing = false;
    for bytes in rx {
        let written = out.write_all(&bytes).and_then(|()| out.flush());
        queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        match written {
            Ok(()) => {
                stalled.store(false, Ordering::Relaxed);
                failing = false;
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    warn!("console: {lost} write(s) to stdout were dropped");
                }
            }
            Err(e) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    failing = true;
                    warn!(
                        "console: cannot write to stdout ({e}): client lines are dropped until \
                         it works again; the server carries on"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse_command(""), Command::Empty);
        assert_eq!(parse_command("  "), Command::Empty);
        assert_eq!(parse_command("hello there"), Command::Send("hello there"));
        assert_eq!(parse_command("//to x"), Command::Send("/to x"));
        assert_eq!(parse_command("/to"), Command::ShowTarget);
        assert_eq!(parse_command("/to  all "), Command::SetTarget("all"));
        assert_eq!(
            parse_command("/to 127.0.0.1:5 hi  there"),
            Command::SendTo {
                to: "127.0.0.1:5",
                text: "hi  there"
            }
        );
        assert_eq!(parse_command("/WHO"), Command::Who);
        assert_eq!(parse_command("/help"), Command::Help);
        assert_eq!(parse_command("/nick x"), Command::Unknown("nick"));
    }

    #[test]
    fn quit_words_include_q_only_over_udp() {
        for word in ["bye", "QUIT", " quit "] {
            assert!(is_quit_word(word, Transport::Tcp), "{word}");
            assert!(is_quit_word(word, Transport::Udp), "{word}");
        }
        assert!(!is_quit_word("q", Transport::Tcp));
        assert!(is_quit_word("Q", Transport::Udp));
        assert!(is_quit_word("q", Transport::Udp));
        assert!(!is_quit_word("quite", Transport::Udp));
    }

    #[test]
    fn farewells_in_either_language_are_recognised() {
        assert!(is_farewell("您已断开连接!"));
        assert!(is_farewell("disconnected\n"));
        assert!(!is_farewell("disconnected now"));
    }

    #[test]
    fn a_message_splits_into_lines_without_a_trailing_empty_one() {
        assert_eq!(lines("a\r\nb\n").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(lines("a\n\nb").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(lines("").collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn long_lines_are_shortened_on_a_character_boundary() {
        let line = "é".repeat(MAX_PRINTED_LINE);
        let short = shorten(&line);
        assert!(short.starts_with(&"é".repeat(MAX_PRINTED_LINE / 2)));
        assert!(short.ends_with(&format!(" [{} more bytes not shown]", MAX_PRINTED_LINE)));
        assert!(matches!(shorten("short"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn queued_bytes_are_bounded_whatever_the_line_count() {
        let printer = Printer::spawn(Stuck).unwrap();
        let big = vec![b'x'; OUTPUT_BYTES / 4];
        for _ in 0..10 {
            printer.write(big.clone());
        }
        // The first is taken by the stuck writer; three more fit in the budget.
        assert!(printer.queued.load(Ordering::Relaxed) <= OUTPUT_BYTES);
        assert!(printer.dropped.load(Ordering::Relaxed) >= 5);
    }

    #[test]
    fn control_characters_are_removed_from_printed_text() {
        assert_eq!(printable("\u{1b}[2Jboom\u{7}\tok"), "[2Jboom\tok");
        assert_eq!(printable("\u{9b}31mred"), "31mred");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn bounded_lines_are_cut_and_the_rest_skipped() {
        let mut input = io::Cursor::new(b"short\r\nthis one is long\nlast".to_vec());
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut input, 8, &mut buf).unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_bounded_line(&mut input, 8, &mut buf).unwrap(),
            Some(true)
        );
        assert_eq!(buf, b"this one");
        assert_eq!(
            read_bounded_line(&mut input, 8, &mut buf).unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"last");
        assert_eq!(read_bounded_line(&mut input, 8, &mut buf).unwrap(), None);
    }

    /// A writer that never returns.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            std::thread::park();
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_the_printer() {
        let printer = Printer::spawn(Stuck).unwrap();
        for _ in 0..(OUTPUT_QUEUE * 2) {
            printer.write(b"line\n".to_vec());
        }
        assert!(printer.dropped.load(Ordering::Relaxed) >= OUTPUT_QUEUE as u64 - 1);
        assert!(printer.stalled.load(Ordering::Relaxed));
    }

    /// A writer that always fails, like a pipe whose reader is gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_drops_lines_without_stopping_the_printer() {
        let printer = Printer::spawn(Closed).unwrap();
        for _ in 0..10 {
            printer.write(b"line\n".to_vec());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while printer.dropped.load(Ordering::Relaxed) < 10 {
            assert!(std::time::Instant::now() < deadline, "lines not handled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
