//! Text hygiene for the chat: stripping terminal escape sequences and control characters from
//! what members send, validating nicks and room names, and the texts the chat writes (English
//! or Chinese).

use crate::service::Lang;

/// Longest nick or room name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Appends `input` to `out` as text a terminal shows literally: invalid UTF-8 becomes U+FFFD,
/// and every escape sequence (CSI `ESC [ … final`, OSC `ESC ] … BEL/ST`, DCS/SOS/PM/APC
/// strings, two-character `ESC x` sequences and their 8-bit C1 forms) and every other control
/// character (C0, DEL, C1), plus the bidirectional overrides that reorder what follows them,
/// is removed. A sequence left unterminated at the end of `input` removes the rest of it.
pub fn sanitize_into(input: &[u8], out: &mut String) {
    // The common case: printable ASCII only.
    if input.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        if let Ok(plain) = std::str::from_utf8(input) {
            out.push_str(plain);
            return;
        }
    }
    let decoded = String::from_utf8_lossy(input);
    let mut state = State::Normal;
    for c in decoded.chars() {
        state = step(state, c, out);
    }
}

/// `input` as displayable text; see [`sanitize_into`].
pub fn sanitize(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len());
    sanitize_into(input, &mut out);
    out
}

/// Where the escape-sequence scanner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Normal,
    /// After ESC.
    Escape,
    /// After ESC and one or more intermediate bytes (0x20–0x2F).
    Intermediate,
    /// Inside a control sequence (CSI): parameters and intermediates until a final byte.
    Csi,
    /// Inside a control string (OSC, DCS, SOS, PM, APC): until BEL or ST.
    String,
    /// ESC seen inside a control string: `\` ends it (ST).
    StringEscape,
}

/// Feeds one character through the scanner, keeping it in `out` if it is plain text.
fn step(state: State, c: char, out: &mut String) -> State {
    const ESC: char = '\u{1b}';
    match state {
        State::Normal => match c {
            ESC => State::Escape,
            '\u{9b}' => State::Csi,
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => State::String,
            c if c.is_control() || is_bidi_control(c) => State::Normal,
            c => {
                out.push(c);
                State::Normal
            }
        },
        State::Escape => match c {
            '[' => State::Csi,
            ']' | 'P' | 'X' | '^' | '_' => State::String,
            ESC => State::Escape,
            '\u{20}'..='\u{2f}' => State::Intermediate,
            '\u{30}'..='\u{7e}' => State::Normal,
            // Not a sequence after all: the ESC is dropped, the character judged on its own.
            c => step(State::Normal, c, out),
        },
        State::Intermediate => match c {
            '\u{20}'..='\u{2f}' => State::Intermediate,
            '\u{30}'..='\u{7e}' => State::Normal,
            ESC => State::Escape,
            c => step(State::Normal, c, out),
        },
        State::Csi => match c {
            '\u{20}'..='\u{3f}' => State::Csi,
            '\u{40}'..='\u{7e}' => State::Normal,
            ESC => State::Escape,
            // Controls inside a sequence are dropped; anything else ends a malformed one.
            c if c.is_control() => State::Csi,
            c => step(State::Normal, c, out),
        },
        State::String => match c {
            '\u{07}' | '\u{9c}' => State::Normal,
            ESC => State::StringEscape,
            _ => State::String,
        },
        State::StringEscape => match c {
            '\\' => State::Normal,
            // xterm: an ESC inside a string ends it and starts a new sequence.
            c => step(State::Escape, c, out),
        },
    }
}

/// The explicit bidirectional embeddings, overrides and isolates: they make the text after
/// them display in another order, so a line could appear to say something else.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Why a nick or room name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Empty once control characters were removed.
    Empty,
    /// Over [`MAX_NAME_CHARS`].
    TooLong,
    /// Contains whitespace.
    Space,
}

/// Checks a sanitized nick or room name: 1–32 characters, none of them whitespace.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().any(char::is_whitespace) {
        return Err(NameError::Space);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// The key a name is unique under: names differing only in case are the same name.
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

/// Whether `name` looks like a default guest nick (`guest` and a digit, any case), which only
/// the server hands out.
pub fn is_guest_form(name: &str) -> bool {
    let lower = fold(name);
    lower
        .strip_prefix("guest")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// `name` cut to at most `max` characters.
pub fn truncate_chars(name: &str, max: usize) -> &str {
    match name.char_indices().nth(max) {
        Some((at, _)) => &name[..at],
        None => name,
    }
}

/// The texts the chat writes, in one language.
#[derive(Clone, Copy, Debug)]
pub struct Texts(pub Lang);

impl Texts {
    fn zh(self) -> bool {
        self.0 == Lang::Zh
    }

    /// Announced when `nick` enters a room.
    pub fn joined(self, nick: &str) -> String {
        if self.zh() {
            format!("* {nick} 进入了聊天室")
        } else {
            format!("* {nick} joined")
        }
    }

    /// Announced when `nick` leaves a room.
    pub fn left(self, nick: &str) -> String {
        if self.zh() {
            format!("* {nick} 离开了聊天室")
        } else {
            format!("* {nick} left")
        }
    }

    /// Announced when a member changes nick.
    pub fn renamed(self, old: &str, new: &str) -> String {
        if self.zh() {
            format!("* {old} 改名为 {new}")
        } else {
            format!("* {old} is now known as {new}")
        }
    }

    /// The mark in front of a history line.
    pub fn history(self) -> &'static str {
        if self.zh() { "[历史] " } else { "[history] " }
    }

    /// The first line a member gets in a room.
    pub fn welcome(self, nick: &str, room: &str, members: usize) -> String {
        if self.zh() {
            format!("* 你是 {nick},在聊天室 {room}(共 {members} 人);/help 查看命令")
        } else {
            let s = if members == 1 { "" } else { "s" };
            format!("* you are {nick} in {room} ({members} member{s}); /help lists the commands")
        }
    }

    /// The reply to a successful `/nick`.
    pub fn now_known_as(self, nick: &str) -> String {
        if self.zh() {
            format!("* 你现在叫 {nick}")
        } else {
            format!("* you are now known as {nick}")
        }
    }

    /// The first line of the reply to `/who`.
    pub fn who(self, room: &str, members: usize) -> String {
        if self.zh() {
            format!("* {room} 中有 {members} 人:")
        } else {
            let s = if members == 1 { "" } else { "s" };
            format!("* {members} member{s} in {room}:")
        }
    }

    /// The first line of the reply to `/rooms`.
    pub fn rooms(self, rooms: usize) -> String {
        if self.zh() {
            format!("* 共 {rooms} 个聊天室:")
        } else {
            let s = if rooms == 1 { "" } else { "s" };
            format!("* {rooms} room{s}:")
        }
    }

    /// Closes a list cut short.
    pub fn and_more(self, more: usize) -> String {
        if self.zh() {
            format!("… 还有 {more} 个")
        } else {
            format!("… and {more} more")
        }
    }

    /// What the recipient of `/msg` sees.
    pub fn private_from(self, from: &str, text: &str) -> String {
        if self.zh() {
            format!("[私聊] <{from}> {text}")
        } else {
            format!("[private] <{from}> {text}")
        }
    }

    /// The sender's copy of a `/msg`.
    pub fn private_to(self, to: &str, text: &str) -> String {
        if self.zh() {
            format!("[私聊给 {to}] {text}")
        } else {
            format!("[private to {to}] {text}")
        }
    }

    /// The reply to `/quit`.
    pub fn bye(self) -> &'static str {
        if self.zh() { "再见" } else { "bye" }
    }

    /// The reply to `/quit` when the connection stays open (the hub takes over again).
    pub fn left_chat(self) -> &'static str {
        if self.zh() {
            "* 你已离开聊天"
        } else {
            "* you left the chat"
        }
    }

    /// The reply to `/help`.
    pub fn help(self, datagrams: bool) -> String {
        let mut text = if self.zh() {
            String::from(
                "命令:\n\
                 /nick 名字      改名(1-32 个可打印字符,不含空格)\n\
                 /join 聊天室    换到另一个聊天室(不存在则新建)\n\
                 /who            列出本聊天室的成员\n\
                 /msg 名字 内容  只发给这个人\n\
                 /rooms          列出所有聊天室\n\
                 /quit           离开聊天\n\
                 /help           显示本列表\n\
                 其他每一行都发给本聊天室的所有人(以 / 开头的内容请写成 //)",
            )
        } else {
            String::from(
                "commands:\n\
                 /nick NAME      change your nick (1-32 printable characters, no spaces)\n\
                 /join ROOM      move to another room (made if it does not exist)\n\
                 /who            list the members of your room\n\
                 /msg NICK TEXT  send TEXT to NICK alone\n\
                 /rooms          list the rooms\n\
                 /quit           leave the chat\n\
                 /help           this list\n\
                 every other line goes to everyone in your room (write // for a line that \
                 starts with /)",
            )
        };
        if datagrams {
            text.push('\n');
            text.push_str(if self.zh() {
                "UDP: 先发 /join [聊天室] 才能收发消息;长时间不发任何内容会被移出(空行即可保持在线)"
            } else {
                "UDP: send /join [ROOM] to become a member; a member silent for the server's idle \
                 time is dropped (an empty datagram keeps you in)"
            });
        }
        text
    }

    /// A line sent by a member who is not in a room.
    pub fn not_in_room(self, datagrams: bool) -> String {
        match (self.zh(), datagrams) {
            (true, true) => "错误: 请先发送 /join [聊天室] 加入聊天".into(),
            (true, false) => "错误: 你不在任何聊天室中,请用 /join 聊天室 加入".into(),
            (false, true) => "error: send /join [ROOM] first to chat over UDP".into(),
            (false, false) => "error: you are not in a room: /join ROOM".into(),
        }
    }

    /// An unknown command.
    pub fn unknown_command(self, command: &str) -> String {
        if self.zh() {
            format!("错误: 未知命令 {command}(输入 /help 查看命令)")
        } else {
            format!("error: unknown command {command} (try /help)")
        }
    }

    /// A command without the argument it needs.
    pub fn usage(self, usage: &str) -> String {
        if self.zh() {
            format!("错误: 用法: {usage}")
        } else {
            format!("error: usage: {usage}")
        }
    }

    /// A nick or room name that breaks the rules.
    pub fn bad_name(self, room: bool, name: &str, why: NameError) -> String {
        let reason = match (self.zh(), why) {
            (true, NameError::Empty) => "不能为空".to_owned(),
            (true, NameError::TooLong) => format!("最多 {MAX_NAME_CHARS} 个字符"),
            (true, NameError::Space) => "不能含空格".to_owned(),
            (false, NameError::Empty) => "it is empty".to_owned(),
            (false, NameError::TooLong) => format!("it is over {MAX_NAME_CHARS} characters"),
            (false, NameError::Space) => "it contains a space".to_owned(),
        };
        match (self.zh(), room) {
            (true, true) => format!("错误: 聊天室名 '{name}' 无效: {reason}"),
            (true, false) => format!("错误: 昵称 '{name}' 无效: {reason}"),
            (false, true) => format!(
                "error: invalid room name '{name}': {reason} \
                 (1-{MAX_NAME_CHARS} printable characters, no spaces)"
            ),
            (false, false) => format!(
                "error: invalid nick '{name}': {reason} \
                 (1-{MAX_NAME_CHARS} printable characters, no spaces)"
            ),
        }
    }

    /// Told to every room when the link to the cluster is lost.
    pub fn link_lost(self) -> &'static str {
        if self.zh() {
            "* 与集群的连接已断开(本服务器上的聊天照常进行)"
        } else {
            "* cluster link lost (chat on this server goes on)"
        }
    }

    /// Told to every room when the link to the cluster is back.
    pub fn link_restored(self) -> &'static str {
        if self.zh() {
            "* 与集群的连接已恢复"
        } else {
            "* cluster link restored"
        }
    }

    /// Told to a member whose provisional nick was taken on another server during an outage.
    pub fn nick_lost(self, old: &str, new: &str) -> String {
        if self.zh() {
            format!("* 昵称 {old} 在断线期间已被其他服务器上的人占用,你现在叫 {new}")
        } else {
            format!(
                "* your nick {old} was taken on another server while the cluster link was \
                 down: you are now known as {new}"
            )
        }
    }

    /// A nick someone else has.
    pub fn nick_taken(self, nick: &str) -> String {
        if self.zh() {
            format!("错误: 昵称 '{nick}' 已被占用")
        } else {
            format!("error: nick '{nick}' is already taken")
        }
    }

    /// A nick of the form the server gives guests.
    pub fn nick_reserved(self, nick: &str) -> String {
        if self.zh() {
            format!("错误: 昵称 '{nick}' 保留给访客")
        } else {
            format!("error: nick '{nick}' is reserved for guests")
        }
    }

    /// `/nick` from a logged-in member.
    pub fn nick_is_login(self, user: &str) -> String {
        if self.zh() {
            format!("错误: 你以 {user} 登录,昵称就是用户名")
        } else {
            format!("error: you are logged in as {user}: your nick is your user name")
        }
    }

    /// Too many nicks in use.
    pub fn too_many_nicks(self, max: usize) -> String {
        if self.zh() {
            format!("错误: 在线人数已达上限({max})")
        } else {
            format!("error: the chat is full ({max} members)")
        }
    }

    /// `/join` of the room the member is in.
    pub fn already_in(self, room: &str) -> String {
        if self.zh() {
            format!("错误: 你已经在 {room} 中")
        } else {
            format!("error: you are already in {room}")
        }
    }

    /// `/join` of a new room when there are as many rooms as allowed.
    pub fn too_many_rooms(self, max: usize) -> String {
        if self.zh() {
            format!("错误: 聊天室数量已达上限({max}),请加入已有的聊天室(/rooms)")
        } else {
            format!("error: too many rooms ({max}); join an existing one (/rooms)")
        }
    }

    /// `/join` of a full room.
    pub fn room_full(self, room: &str, max: usize) -> String {
        if self.zh() {
            format!("错误: 聊天室 {room} 已满({max} 人)")
        } else {
            format!("error: room {room} is full ({max} members)")
        }
    }

    /// `/msg` to a nick nobody has.
    pub fn no_such_nick(self, nick: &str) -> String {
        if self.zh() {
            format!("错误: 没有人叫 '{nick}'")
        } else {
            format!("error: no one is called '{nick}'")
        }
    }

    /// `/msg` to someone whose queue is full.
    pub fn not_delivered(self, nick: &str) -> String {
        if self.zh() {
            format!("错误: {nick} 没有在读取消息,私聊未送达")
        } else {
            format!("error: {nick} is not reading; message not delivered")
        }
    }

    /// A message over the size limit.
    pub fn too_long(self, len: usize, max: usize) -> String {
        if self.zh() {
            format!("错误: 消息过长({len} 字节,最多 {max} 字节),未发送")
        } else {
            format!("error: message too long ({len} bytes, at most {max}); not sent")
        }
    }

    /// The last line to a member who fell behind the room's retention.
    pub fn fell_behind(self, retention: usize) -> String {
        if self.zh() {
            format!(
                "错误: 你落后太多(超过 {} KiB 的聊天内容未读),连接已断开",
                retention / 1024
            )
        } else {
            format!(
                "error: you fell too far behind (over {} KiB of room traffic unread); \
                 disconnecting",
                retention / 1024
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_unchanged() {
        assert_eq!(sanitize(b"hello, world"), "hello, world");
        assert_eq!(sanitize("三次握手 ok".as_bytes()), "三次握手 ok");
    }

    #[test]
    fn escape_sequences_and_controls_are_removed() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x1b[2J\x1b[Hcleared", "cleared"),
            (b"red \x1b[31;1mtext\x1b[0m", "red text"),
            (b"\x1b]0;new title\x07after", "after"),
            (b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
            (b"\x1bPdevice\x1b\\ok", "ok"),
            (b"a\x1b7b\x1b8c", "abc"),
            (b"a\x1b(0b", "ab"),
            (b"tab\there\r\x00\x7f!", "tabhere!"),
            (b"bell\x07", "bell"),
            (b"\x1b[unterminated", "nterminated"),
            (b"\x1b]2;never ends", ""),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), *want, "{input:?}");
        }
    }

    #[test]
    fn c1_controls_and_8_bit_sequences_are_removed() {
        assert_eq!(sanitize("a\u{9b}31mb".as_bytes()), "ab");
        assert_eq!(sanitize("a\u{9d}0;t\u{9c}b".as_bytes()), "ab");
        assert_eq!(sanitize("x\u{85}y".as_bytes()), "xy");
        assert_eq!(sanitize("\u{202e}evil".as_bytes()), "evil");
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(sanitize(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("alice"), Ok(()));
        assert_eq!(check_name("李雷"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("a b"), Err(NameError::Space));
        assert_eq!(check_name(&"x".repeat(32)), Ok(()));
        assert_eq!(check_name(&"x".repeat(33)), Err(NameError::TooLong));
        assert_eq!(check_name(&"字".repeat(32)), Ok(()));
    }

    #[test]
    fn guest_forms_and_folding() {
        assert!(is_guest_form("guest12"));
        assert!(is_guest_form("Guest1-2"));
        assert!(!is_guest_form("guest"));
        assert!(!is_guest_form("guesthouse"));
        assert_eq!(fold("AlIcE"), "alice");
        assert_eq!(truncate_chars("abcdef", 3), "abc");
        assert_eq!(truncate_chars("ab", 3), "ab");
    }
}
