//! `--login`: a user name and password exchange in front of any service.
//!
//! The server sends `username:`, then `password:`; a correct pair is answered `welcome NAME` and
//! the connection continues in the wrapped service, whose session is opened only then, with
//! [`PeerInfo::user`] set (a hub's greeting therefore follows `welcome`). A wrong pair is
//! answered `login failed` and the prompt starts over; the third failure closes the connection.
//! With `--lang zh` the texts are the tutorial's own: `请输入用户名:`, `请输入密码:`, `登录成功`,
//! `用户名或密码输入错误`.
//!
//! Guessing is made slow and uninformative:
//! - every attempt costs one Argon2id verification, an unknown name included (it is checked
//!   against a dummy hash of the same cost), so a failure looks and takes the same either way;
//! - more than [`MAX_FAILURES`] failures from one IP address (an IPv6 /64) within [`WINDOW`]
//!   and further attempts are answered `too many attempts, retry in N s` at once, without
//!   hashing, until the oldest of those failures is a minute old;
//! - hashing runs on blocking threads, at most a few at a time (a semaphore), so a login storm
//!   queues for the hasher instead of stalling other connections or piling up threads and
//!   their 19 MiB of Argon2 memory each (half the cores, 1 to 4 at once).
//!
//! The exchange itself is [`LoginFlow`], a small state machine that any session can drive
//! (the hub's `login` command does); [`Login`] is a [`Service`] built on it.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::message::Message;
use crate::service::{Lang, Outbox, PeerInfo, Service, Session};
use crate::users::{MAX_NAME_CHARS, UserTable, UsersError, validate_name};

/// Failed logins one IP address may have within [`WINDOW`]; attempts beyond are refused.
pub const MAX_FAILURES: usize = 10;
/// The sliding window over which failures are counted.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Failed logins a connection may have before it is closed.
pub const FAILURES_PER_CONNECTION: u8 = 3;
/// How many addresses the failure table remembers (least recently seen forgotten first). Each
/// costs about 250 bytes, so the table stays under 4 MiB.
pub const TRACKED_ADDRESSES: usize = 16_384;

/// The texts of the exchange in one language.
struct Texts {
    username: &'static str,
    password: &'static str,
    failed: &'static str,
}

impl Texts {
    fn of(lang: Lang) -> &'static Texts {
        match lang {
            Lang::En => &Texts {
                username: "username:",
                password: "password:",
                failed: "login failed",
            },
            Lang::Zh => &Texts {
                username: "请输入用户名:",
                password: "请输入密码:",
                failed: "用户名或密码输入错误",
            },
        }
    }
}

fn welcome(lang: Lang, name: &str) -> String {
    match lang {
        Lang::En => format!("welcome {name}"),
        Lang::Zh => "登录成功".to_owned(),
    }
}

fn too_many(lang: Lang, retry: Duration) -> String {
    // Whole seconds, rounded up: "retry in 0 s" would be a lie.
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    let secs = secs.max(1);
    match lang {
        Lang::En => format!("too many attempts, retry in {secs} s"),
        Lang::Zh => format!("尝试次数过多,请 {secs} 秒后重试"),
    }
}

/// The failed logins of one address within the window, oldest first; at most
/// `MAX_FAILURES + 1` are kept, which is all the decision needs.
#[derive(Debug, Default)]
struct Failures(VecDeque<Instant>);

/// Failed logins per address: a bounded LRU table.
#[derive(Debug)]
struct Limiter {
    table: LruCache<IpAddr, Failures>,
}

impl Limiter {
    fn new() -> Limiter {
        Limiter {
            table: LruCache::new(NonZeroUsize::new(TRACKED_ADDRESSES).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// Starts an attempt from `key` at `now`: refused with the time until the next one may be
    /// made, or counted as a failure until [`Limiter::succeeded`] says otherwise (so that many
    /// attempts at once from one address cannot all slip in before the first one fails).
    fn begin(&mut self, key: IpAddr, now: Instant) -> Result<(), Duration> {
        let failures = self.table.get_or_insert_mut(key, Failures::default);
        let times = &mut failures.0;
        while times
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() > MAX_FAILURES {
            let oldest = times.front().copied().unwrap_or(now);
            return Err((oldest + WINDOW).saturating_duration_since(now));
        }
        times.push_back(now);
        Ok(())
    }

    /// The attempt begun at `at` succeeded: it is not a failure after all.
    fn succeeded(&mut self, key: IpAddr, at: Instant) {
        if let Some(failures) = self.table.peek_mut(&key) {
            if let Some(i) = failures.0.iter().rposition(|&t| t == at) {
                failures.0.remove(i);
            }
        }
    }

    /// Failures of `key` within the window.
    fn count(&mut self, key: IpAddr) -> usize {
        self.table.peek(&key).map_or(0, |f| f.0.len())
    }
}

/// The address failures are counted against: an IPv4 address (IPv4-mapped IPv6 included), or
/// the /64 network of an IPv6 address, since one host usually has a whole /64 to pick from.
fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How many password verifications may run at once: half the cores (at least one, at most
/// four), so that a login storm leaves the other half to the connections already logged in;
/// each verification also holds the hash's memory cost (19 MiB by default) while it runs.
fn hashing_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    (cores / 2).clamp(1, 4)
}

struct Shared {
    path: PathBuf,
    table: RwLock<Arc<UserTable>>,
    limiter: Mutex<Limiter>,
    hashing: Arc<Semaphore>,
}

/// The users file as the server sees it: the parsed table (swapped whole by
/// [`Users::reload`]), the per-address failure counts and the hashing slots. Cheap to clone;
/// clones share everything, so a hub's `login` command and `--login` count failures together.
#[derive(Clone)]
pub struct Users {
    shared: Arc<Shared>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("path", &self.shared.path)
            .field("users", &self.table().len())
            .finish_non_exhaustive()
    }
}

/// The outcome of one login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The name and password match: the user's name.
    Accepted(Arc<str>),
    /// They do not (or the name is unknown).
    Rejected,
    /// Too many failures from this address: refused without checking, retry after this long.
    Locked(Duration),
}

impl Users {
    /// Reads and checks the users file (an error names `FILE:LINE` and what is wrong there).
    pub fn load(path: impl Into<PathBuf>) -> Result<Users, UsersError> {
        let path = path.into();
        let table = UserTable::load(&path)?;
        table.prepare_dummy();
        Ok(Users {
            shared: Arc::new(Shared {
                path,
                table: RwLock::new(Arc::new(table)),
                limiter: Mutex::new(Limiter::new()),
                hashing: Arc::new(Semaphore::new(hashing_slots())),
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The users as last loaded.
    pub fn table(&self) -> Arc<UserTable> {
        self.shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the file. A file that cannot be read or has a malformed line keeps the previous
    /// users, and the log says why. Blocking (it reads a file and hashes once): call it off the
    /// async threads, as the server's SIGHUP handler does.
    pub fn reload(&self) {
        match UserTable::load(&self.shared.path) {
            Ok(table) => {
                table.prepare_dummy();
                let n = table.len();
                *self
                    .shared
                    .table
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
                info!("reloaded {}: {n} user(s)", self.shared.path.display());
            }
            Err(e) => warn!("keeping the previous users: cannot reload {e}"),
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.shared
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks one name and password from `ip`. Unless the address is locked out, this spends
    /// exactly one Argon2 verification on a blocking thread (waiting for a free hashing slot
    /// first), whether or not the name exists.
    pub async fn attempt(
        &self,
        name: Option<&str>,
        password: Bytes,
        ip: Option<IpAddr>,
    ) -> Attempt {
        let key = ip.map(limiter_key);
        let begun = Instant::now();
        if let Some(key) = key {
            if let Err(retry) = self.limiter().begin(key, begun) {
                return Attempt::Locked(retry);
            }
        }
        let table = self.table();
        let name: Option<Box<str>> = name.map(Box::from);
        let verified = match self.shared.hashing.clone().acquire_owned().await {
            Ok(permit) => tokio::task::spawn_blocking(move || {
                // Held until the hash is done, even if the connection goes away meanwhile.
                let _permit = permit;
                table.verify(name.as_deref(), &password)
            })
            .await
            .ok()
            .flatten(),
            Err(_) => None,
        };
        match (verified, key) {
            (Some(user), key) => {
                if let Some(key) = key {
                    self.limiter().succeeded(key, begun);
                }
                Attempt::Accepted(user)
            }
            (None, Some(key)) => {
                if self.limiter().count(key) == MAX_FAILURES + 1 {
                    warn!(
                        "more than {MAX_FAILURES} failed logins from {key} within {}s: \
                         refusing its attempts for a while",
                        WINDOW.as_secs()
                    );
                }
                Attempt::Rejected
            }
            (None, None) => Attempt::Rejected,
        }
    }
}

/// What a [`LoginFlow`] step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowStep {
    /// Still asking; the next message goes to [`LoginFlow::on_message`] too.
    Continue,
    /// Logged in as this user; `welcome NAME` is queued.
    LoggedIn(Arc<str>),
    /// The last allowed attempt failed: the notice is queued and the outbox is closing.
    Failed,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the user name.
    Name,
    /// Waiting for the password of this name (`None`: a name no user can have).
    Password(Option<Box<str>>),
    /// Finished, for better or worse.
    Done(FlowStep),
}

/// The login exchange as a state machine over messages: [`LoginFlow::start`] queues the first
/// prompt, then every message from the peer goes to [`LoginFlow::on_message`] until it returns
/// [`FlowStep::LoggedIn`] or [`FlowStep::Failed`]. Messages are the name and the password, each
/// with one trailing line ending (`\n` or `\r\n`, as `nc` and telnet send in raw framing)
/// removed.
#[derive(Debug)]
pub struct LoginFlow {
    users: Users,
    lang: Lang,
    stage: Stage,
    failures: u8,
}

/// `body` without one trailing `\n` or `\r\n`.
fn strip_line_end(body: &Bytes) -> Bytes {
    let mut end = body.len();
    if body.ends_with(b"\n") {
        end -= 1;
        if body[..end].ends_with(b"\r") {
            end -= 1;
        }
    }
    body.slice(..end)
}

impl LoginFlow {
    /// Starts a login: queues the `username:` prompt.
    pub fn start(users: Users, lang: Lang, out: &mut Outbox) -> LoginFlow {
        out.send(Message::text(Texts::of(lang).username));
        LoginFlow {
            users,
            lang,
            stage: Stage::Name,
            failures: 0,
        }
    }

    /// Whether the next message is taken as a password (so a session should not treat `quit`
    /// as a quit word: it may be someone's password).
    pub fn awaiting_password(&self) -> bool {
        matches!(self.stage, Stage::Password(_))
    }

    /// Handles one message from the peer. After [`FlowStep::LoggedIn`] or [`FlowStep::Failed`]
    /// further calls change nothing and return the same step.
    pub async fn on_message(&mut self, msg: Message, out: &mut Outbox) -> FlowStep {
        let texts = Texts::of(self.lang);
        match std::mem::replace(&mut self.stage, Stage::Name) {
            Stage::Name => {
                let body = strip_line_end(msg.body());
                // Anything longer than 32 four-byte characters cannot be a name.
                let name = (body.len() <= 4 * MAX_NAME_CHARS)
                    .then(|| std::str::from_utf8(&body).ok())
                    .flatten()
                    .filter(|n| validate_name(n).is_ok())
                    .map(Box::from);
                self.stage = Stage::Password(name);
                out.send(Message::text(texts.password));
                FlowStep::Continue
            }
            Stage::Password(name) => {
                let password = strip_line_end(msg.body());
                let ip = out.peer().socket_addr().map(|a| a.ip());
                let attempt = self.users.attempt(name.as_deref(), password, ip).await;
                let who = out.peer().to_string();
                let notice = match attempt {
                    Attempt::Accepted(user) => {
                        info!("{who}: logged in as {user}");
                        out.send(Message::text(welcome(self.lang, &user)));
                        let step = FlowStep::LoggedIn(user);
                        self.stage = Stage::Done(step.clone());
                        return step;
                    }
                    Attempt::Rejected => {
                        let known = name
                            .as_deref()
                            .is_some_and(|n| self.users.table().contains(n));
                        info!(
                            "{who}: login failed ({})",
                            if known {
                                "wrong password"
                            } else {
                                "unknown user"
                            }
                        );
                        texts.failed.to_owned()
                    }
                    Attempt::Locked(retry) => too_many(self.lang, retry),
                };
                out.send(Message::text(notice));
                self.failures += 1;
                if self.failures >= FAILURES_PER_CONNECTION {
                    out.close();
                    self.stage = Stage::Done(FlowStep::Failed);
                    FlowStep::Failed
                } else {
                    out.send(Message::text(texts.username));
                    self.stage = Stage::Name;
                    FlowStep::Continue
                }
            }
            Stage::Done(step) => {
                if step == FlowStep::Failed {
                    out.close();
                }
                self.stage = Stage::Done(step.clone());
                step
            }
        }
    }
}

/// A service behind a login: see the module documentation.
pub struct Login<S: Service> {
    users: Users,
    inner: Arc<S>,
    lang: Lang,
}

impl<S: Service> Login<S> {
    /// Puts `inner` behind a login against `users`, with prompts in `lang`.
    pub fn new(users: Users, inner: S, lang: Lang) -> Login<S> {
        Login {
            users,
            inner: Arc::new(inner),
            lang,
        }
    }

    /// The users file.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

enum State<T> {
    /// Opened; the prompt goes out in `on_open`.
    Opening,
    /// Asking for the name and password.
    Asking(LoginFlow),
    /// Logged in: everything goes to the wrapped service's session.
    Inner(T),
    /// The login failed; the connection is closing.
    Closed,
}

/// One connection of a [`Login`] service.
pub struct LoginSession<S: Service> {
    inner: Arc<S>,
    users: Users,
    lang: Lang,
    peer: PeerInfo,
    state: State<S::Session>,
}

impl<S: Service> Service for Login<S> {
    type Session = LoginSession<S>;

    fn open(&self, peer: &PeerInfo) -> LoginSession<S> {
        LoginSession {
            inner: self.inner.clone(),
            users: self.users.clone(),
            lang: self.lang,
            peer: peer.clone(),
            state: State::Opening,
        }
    }

    fn quit_words(&self) -> bool {
        self.inner.quit_words()
    }

    fn reload(&self) {
        self.users.reload();
        self.inner.reload();
    }

    fn start(&self) {
        self.inner.start();
    }
}

impl<S: Service> Session for LoginSession<S> {
    async fn on_open(&mut self, out: &mut Outbox) {
        if matches!(self.state, State::Opening) {
            self.state = State::Asking(LoginFlow::start(self.users.clone(), self.lang, out));
        }
    }

    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        match &mut self.state {
            State::Inner(session) => session.on_message(msg, out).await,
            State::Asking(flow) => match flow.on_message(msg, out).await {
                FlowStep::Continue => {}
                FlowStep::LoggedIn(user) => {
                    let peer = PeerInfo {
                        user: Some(user),
                        ..self.peer.clone()
                    };
                    let mut session = self.inner.open(&peer);
                    session.on_open(out).await;
                    self.state = State::Inner(session);
                }
                FlowStep::Failed => self.state = State::Closed,
            },
            State::Opening | State::Closed => out.close(),
        }
    }

    fn on_close(&mut self) {
        if let State::Inner(session) = &mut self.state {
            session.on_close();
        }
    }

    fn poll_feed(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<()> {
        match &mut self.state {
            State::Inner(session) => session.poll_feed(cx, out),
            _ => Poll::Pending,
        }
    }

    fn ends_on_quit_word(&self) -> bool {
        match &self.state {
            State::Inner(session) => session.ends_on_quit_word(),
            State::Asking(flow) => !flow.awaiting_password(),
            State::Opening | State::Closed => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PeerAddr;
    use crate::service::Transport;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A service that greets its user by name on open and records its close.
    struct Greeter(Arc<AtomicBool>);

    struct GreeterSession {
        user: Option<Arc<str>>,
        closed: Arc<AtomicBool>,
    }

    impl Service for Greeter {
        type Session = GreeterSession;

        fn open(&self, peer: &PeerInfo) -> GreeterSession {
            GreeterSession {
                user: peer.user.clone(),
                closed: self.0.clone(),
            }
        }
    }

    impl Session for GreeterSession {
        async fn on_open(&mut self, out: &mut Outbox) {
            let user = self.user.as_deref().unwrap_or("nobody");
            out.send(Message::text(format!("hello {user}")));
        }

        async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
            out.send(msg);
        }

        fn on_close(&mut self) {
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    fn bodies(out: &mut Outbox) -> Vec<String> {
        out.drain()
            .map(|m| String::from_utf8(m.into_body().to_vec()).unwrap())
            .collect()
    }

    /// A users file with `alice` / `pw`, hashed cheaply.
    fn users() -> (tempfile::TempDir, Users) {
        use argon2::password_hash::PasswordHasher;
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let hash = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"pw")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let users = Users::load(&path).unwrap();
        (dir, users)
    }

    #[tokio::test]
    async fn the_inner_session_opens_after_welcome_with_the_user_and_gets_everything_after() {
        let (_dir, users) = users();
        let closed = Arc::new(AtomicBool::new(false));
        let login = Login::new(users, Greeter(closed.clone()), Lang::En);
        let addr: std::net::SocketAddr = "192.0.2.9:1234".parse().unwrap();
        let peer = PeerInfo {
            id: 1,
            addr: PeerAddr::Inet(addr),
            transport: Transport::Tcp,
            user: None,
        };
        let mut out = Outbox::for_stream(PeerAddr::Inet(addr));
        let mut session = login.open(&peer);
        session.on_open(&mut out).await;
        assert_eq!(bodies(&mut out), ["username:"]);
        assert!(session.ends_on_quit_word());
        session
            .on_message(Message::new("alice\r\n"), &mut out)
            .await;
        assert_eq!(bodies(&mut out), ["password:"]);
        assert!(!session.ends_on_quit_word(), "a password may be 'quit'");
        session.on_message(Message::new("nope"), &mut out).await;
        assert_eq!(bodies(&mut out), ["login failed", "username:"]);
        session.on_message(Message::new("alice"), &mut out).await;
        session.on_message(Message::new("pw"), &mut out).await;
        assert_eq!(
            bodies(&mut out),
            ["password:", "welcome alice", "hello alice"]
        );
        session.on_message(Message::new("echo me"), &mut out).await;
        assert_eq!(bodies(&mut out), ["echo me"]);
        assert!(!out.is_closing());
        session.on_close();
        assert!(closed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn the_third_failure_closes_without_opening_the_inner_session() {
        let (_dir, users) = users();
        let closed = Arc::new(AtomicBool::new(false));
        let login = Login::new(users.clone(), Greeter(closed.clone()), Lang::Zh);
        let addr: std::net::SocketAddr = "192.0.2.10:1234".parse().unwrap();
        let peer = PeerInfo {
            id: 2,
            addr: PeerAddr::Inet(addr),
            transport: Transport::Tcp,
            user: None,
        };
        let mut out = Outbox::for_stream(PeerAddr::Inet(addr));
        let mut session = login.open(&peer);
        session.on_open(&mut out).await;
        for name in ["alice", "bob", "alice"] {
            session.on_message(Message::new(name), &mut out).await;
            session.on_message(Message::new("wrong"), &mut out).await;
        }
        assert_eq!(
            bodies(&mut out),
            [
                "请输入用户名:",
                "请输入密码:",
                "用户名或密码输入错误",
                "请输入用户名:",
                "请输入密码:",
                "用户名或密码输入错误",
                "请输入用户名:",
                "请输入密码:",
                "用户名或密码输入错误",
            ]
        );
        assert!(out.is_closing());
        session.on_close();
        assert!(
            !closed.load(Ordering::SeqCst),
            "the inner session never opened"
        );
        // The flow on its own, driven as the hub would: a success from the same address.
        let mut out = Outbox::for_stream(PeerAddr::Inet(addr));
        let mut flow = LoginFlow::start(users, Lang::En, &mut out);
        assert_eq!(
            flow.on_message(Message::new("alice"), &mut out).await,
            FlowStep::Continue
        );
        let step = flow.on_message(Message::new("pw\n"), &mut out).await;
        assert_eq!(step, FlowStep::LoggedIn(Arc::from("alice")));
        assert_eq!(
            bodies(&mut out),
            ["username:", "password:", "welcome alice"]
        );
        assert_eq!(flow.on_message(Message::new("more"), &mut out).await, step);
        assert!(out.is_empty());
    }

    #[test]
    fn more_than_ten_failures_in_a_minute_lock_the_address_until_the_oldest_expires() {
        let mut limiter = Limiter::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..=MAX_FAILURES as u64 {
            assert!(
                limiter.begin(ip, t0 + Duration::from_secs(i)).is_ok(),
                "{i}"
            );
        }
        let at = t0 + Duration::from_secs(20);
        assert_eq!(limiter.begin(ip, at), Err(Duration::from_secs(40)));
        // Another address is not affected.
        assert!(limiter.begin("192.0.2.2".parse().unwrap(), at).is_ok());
        // Once the oldest failure is a minute old, one more attempt may be made.
        assert!(limiter.begin(ip, t0 + WINDOW).is_ok());
        assert!(limiter.begin(ip, t0 + WINDOW).is_err());
    }

    #[test]
    fn a_success_is_not_counted_as_a_failure() {
        let mut limiter = Limiter::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(i);
            limiter.begin(ip, at).unwrap();
            limiter.succeeded(ip, at);
        }
        assert_eq!(limiter.count(ip), 0);
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(limiter_key(a), limiter_key(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(limiter_key(a), limiter_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limiter_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn retry_times_round_up_to_whole_seconds() {
        assert_eq!(
            too_many(Lang::En, Duration::from_millis(40_001)),
            "too many attempts, retry in 41 s"
        );
        assert_eq!(
            too_many(Lang::En, Duration::ZERO),
            "too many attempts, retry in 1 s"
        );
    }

    #[test]
    fn one_line_ending_is_stripped() {
        let s = |b: &'static [u8]| strip_line_end(&Bytes::from_static(b));
        assert_eq!(s(b"pw\r\n"), &b"pw"[..]);
        assert_eq!(s(b"pw\n"), &b"pw"[..]);
        assert_eq!(s(b"pw\n\n"), &b"pw\n"[..]);
        assert_eq!(s(b"pw"), &b"pw"[..]);
        assert_eq!(s(b""), &b""[..]);
    }
}
