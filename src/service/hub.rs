//! `hub`: what `sockit serve` runs by default — one port, line commands that reach every other
//! service, friendly to `nc`, `telnet` and `sockit connect`.
//!
//! `help` lists the commands; `echo TEXT`; `time`; `lookup WORD`; `login` (when the server has
//! a users file); `chat [ROOM]` enters the chat service until `/quit`;
//! `bye`/`quit` close. Any other line gets an `ack` receipt. Every request gets exactly one
//! reply message; the help text is one message whose lines are joined with `\n`. Over TCP the
//! help text is also sent as a greeting; UDP has no connection to greet, so a UDP peer gets
//! replies only.

use std::task::{Context, Poll};

use chrono::{Local, SecondsFormat};

use crate::message::Message;
use crate::service::ack::receipt;
use crate::service::chat::{Chat, ChatSession};
use crate::service::login::{FlowStep, LoginFlow, Users};
use crate::service::lookup::Knowledge;
use crate::service::{Lang, Outbox, PeerInfo, Service, Session};

/// The hub service: the other services behind one set of line commands.
#[derive(Clone)]
pub struct Hub {
    knowledge: Knowledge,
    chat: Chat,
    users: Option<Users>,
    lang: Lang,
}

impl Hub {
    /// A hub answering `lookup` from `knowledge`, entering rooms of `chat`, and offering `login`
    /// when `users` is given.
    pub fn new(knowledge: Knowledge, chat: Chat, users: Option<Users>, lang: Lang) -> Hub {
        Hub {
            knowledge,
            chat,
            users,
            lang,
        }
    }

    /// The help text: one line per command, sent as one message.
    pub fn help(&self) -> String {
        let mut lines = vec![
            "sockit hub: commands (one per line)",
            "  help          this list",
            "  echo TEXT     TEXT back",
            "  time          the server's local time",
            "  lookup WORD   look WORD up in the knowledge base",
        ];
        if self.users.is_some() {
            lines.push("  login         log in with a user name and password");
        }
        lines.extend([
            "  chat [ROOM]   enter a chat room (default lobby; /help there)",
            "  bye, quit     close the connection",
            "  anything else gets an ack receipt",
        ]);
        lines.join("\n")
    }
}

impl Service for Hub {
    type Session = HubSession;

    fn open(&self, peer: &PeerInfo) -> HubSession {
        HubSession {
            hub: self.clone(),
            peer: peer.clone(),
            mode: Mode::Commands,
        }
    }

    fn reload(&self) {
        self.knowledge.reload();
        if let Some(users) = &self.users {
            users.reload();
        }
    }
}

/// What a hub connection is doing.
enum Mode {
    /// Taking line commands.
    Commands,
    /// In the middle of a `login` exchange.
    Login(Box<LoginFlow>),
    /// Inside a chat room, until `/quit` brings the member back.
    Chat(Box<ChatSession>),
}

/// One hub connection (or UDP peer).
pub struct HubSession {
    hub: Hub,
    peer: PeerInfo,
    mode: Mode,
}

/// A hub command line, split into its lowercased verb and the rest. Blanks and control
/// characters around both are ignored (telnet may end a line with `\r\0`).
fn split_command(line: &str) -> (String, &str) {
    let blank = |c: char| c.is_whitespace() || c.is_control();
    let line = line.trim_matches(blank);
    match line.split_once(blank) {
        Some((verb, rest)) => (verb.to_lowercase(), rest.trim_matches(blank)),
        None => (line.to_lowercase(), ""),
    }
}

impl HubSession {
    async fn command(&mut self, msg: Message, out: &mut Outbox) {
        let text = String::from_utf8_lossy(msg.body());
        let (verb, rest) = split_command(&text);
        let reply = match verb.as_str() {
            "help" | "?" => self.hub.help(),
            "echo" => rest.to_owned(),
            "time" => Local::now().to_rfc3339_opts(SecondsFormat::Millis, false),
            "lookup" if rest.is_empty() => "usage: lookup WORD".to_owned(),
            "lookup" => self.hub.knowledge.answer(rest, self.hub.lang),
            "login" => match &self.hub.users {
                Some(users) if self.peer.transport.is_connection() => {
                    let flow = LoginFlow::start(users.clone(), self.hub.lang, out);
                    self.mode = Mode::Login(Box::new(flow));
                    return;
                }
                Some(_) => "error: login needs a connection (use TCP or rudp)".to_owned(),
                None => "error: login is not available: this server has no users file \
                         (serve --users FILE)"
                    .to_owned(),
            },
            "chat" => {
                let room = (!rest.is_empty()).then_some(rest);
                // `/quit` leaves the room and comes back to the hub's commands.
                let mut session = self.hub.chat.session(&self.peer, room).stay_open_on_quit();
                session.on_open(out).await;
                self.mode = Mode::Chat(Box::new(session));
                return;
            }
            _ => receipt(msg.len()),
        };
        out.send(Message::text(reply));
    }
}

impl Session for HubSession {
    async fn on_open(&mut self, out: &mut Outbox) {
        if self.peer.transport.is_connection() {
            out.send(Message::text(self.hub.help()));
        }
    }

    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        match &mut self.mode {
            Mode::Commands => self.command(msg, out).await,
            Mode::Login(flow) => match flow.on_message(msg, out).await {
                FlowStep::Continue => {}
                FlowStep::LoggedIn(name) => {
                    self.peer.user = Some(name);
                    self.mode = Mode::Commands;
                }
                FlowStep::Failed => self.mode = Mode::Commands,
            },
            Mode::Chat(chat) => {
                chat.on_message(msg, out).await;
                if chat.has_left() {
                    chat.on_close();
                    self.mode = Mode::Commands;
                }
            }
        }
    }

    fn on_close(&mut self) {
        if let Mode::Chat(chat) = &mut self.mode {
            chat.on_close();
        }
    }

    fn poll_feed(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<()> {
        let Mode::Chat(chat) = &mut self.mode else {
            return Poll::Pending;
        };
        let fed = chat.poll_feed(cx, out);
        // Dropped for falling behind: back to the hub's commands.
        if chat.has_left() {
            chat.on_close();
            self.mode = Mode::Commands;
            return Poll::Ready(());
        }
        fed
    }

    fn ends_on_quit_word(&self) -> bool {
        match &self.mode {
            Mode::Chat(chat) => chat.ends_on_quit_word(),
            // At the password prompt, `bye` is a password.
            Mode::Login(flow) => !flow.awaiting_password(),
            Mode::Commands => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_into_a_lowercase_verb_and_the_rest() {
        assert_eq!(
            split_command("  ECHO  hello world \r"),
            ("echo".into(), "hello world")
        );
        assert_eq!(split_command("time"), ("time".into(), ""));
        assert_eq!(split_command(""), ("".into(), ""));
        assert_eq!(
            split_command("lookup\t三次握手"),
            ("lookup".into(), "三次握手")
        );
        assert_eq!(split_command("time\r\0"), ("time".into(), ""));
    }
}
