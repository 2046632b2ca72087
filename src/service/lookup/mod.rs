//! `lookup`: keyword search in a knowledge base — the tutorial's "search the table, else
//! answer 未搜索到" server, made real.
//!
//! Every message is a query: its body (invalid UTF-8 replaced by U+FFFD), trimmed of
//! surrounding whitespace. The reply is one line:
//!
//! - the best entry's answer, followed by `(see also: k1, k2, k3)` when other keywords match
//!   (up to three, distinct, in rank order);
//! - `not found: QUERY` (with [`Lang::Zh`]: `未搜索到`, the tutorial server's own text);
//! - [`EMPTY_EN`] / [`EMPTY_ZH`] for an empty query;
//! - `query too long: N bytes (at most 65536)` for a query over [`MAX_QUERY`] bytes, which is
//!   refused without being searched.
//!
//! Matching is case-insensitive (Unicode simple case folding, see [`fold`]). An entry matches
//! when the query contains its keyword or its keyword contains the query; a one-character
//! query matches only a one-character keyword. The ranking and the index are described in
//! [`index`]. The file format is described in [`parse`].
//!
//! A [`Knowledge`] is a cheap, cloneable handle: every clone sees the same contents, and
//! [`Knowledge::reload`] (SIGHUP) swaps new contents in atomically while queries go on.

pub mod fold;
pub mod grams;
pub mod index;
pub mod inside;
pub mod parse;
pub mod within;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::message::Message;
use crate::service::{Lang, Outbox, PeerInfo, Service, Session};

use self::index::Index;
use self::parse::{Parsed, line_of, parse};

/// The built-in knowledge base: networking terms in English and Chinese.
const BUILTIN_TSV: &str = include_str!("builtin.tsv");

/// What the built-in knowledge base is called in messages.
pub const BUILTIN_NAME: &str = "built-in knowledge base";

/// The longest query searched, in bytes after trimming. Longer ones get a refusal, so no
/// single message costs more than a bounded amount of work and memory.
pub const MAX_QUERY: usize = 64 * 1024;

/// How many characters of an unmatched query a `not found:` reply repeats.
pub const ECHO_CHARS: usize = 100;

/// The reply to an empty query.
pub const EMPTY_EN: &str = "empty query: send a keyword to look up";
/// The reply to an empty query, in Chinese.
pub const EMPTY_ZH: &str = "请输入要查询的关键词";
/// The reply when nothing matches, in Chinese (the tutorial server's text).
pub const NOT_FOUND_ZH: &str = "未搜索到";

/// Why a knowledge-base file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("{}: cannot read the knowledge base: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{}:{line}: not valid UTF-8 (the knowledge base must be UTF-8 text)", path.display())]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// The 1-based line holding the first invalid byte.
        line: usize,
    },
}

/// A knowledge base: a cheap handle to shared, hot-swappable contents.
///
/// Clones share the contents: a [`Knowledge::reload`] through any of them is seen by all.
#[derive(Clone)]
pub struct Knowledge {
    shared: Arc<Shared>,
}

struct Shared {
    /// The file it was loaded from; `None` for the built-in one.
    source: Option<PathBuf>,
    index: ArcSwap<Index>,
    /// Serializes reloads, so two quick SIGHUPs cannot install an older file last.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knowledge")
            .field("source", &self.shared.source)
            .field("entries", &self.len())
            .finish()
    }
}

impl Knowledge {
    fn new(source: Option<PathBuf>, index: Arc<Index>) -> Knowledge {
        Knowledge {
            shared: Arc::new(Shared {
                source,
                index: ArcSwap::new(index),
                reloading: Mutex::new(()),
            }),
        }
    }

    /// The built-in knowledge base of networking terms (English and Chinese). Indexed once
    /// per process; every call shares that index.
    pub fn builtin() -> Knowledge {
        static BUILTIN: OnceLock<Arc<Index>> = OnceLock::new();
        let index = BUILTIN.get_or_init(|| Arc::new(index_text(BUILTIN_NAME, BUILTIN_TSV)));
        Knowledge::new(None, index.clone())
    }

    /// A knowledge base from TSV text (see [`parse`]); `name` is used in the warnings about
    /// malformed lines. It has no file, so [`Knowledge::reload`] keeps it as it is.
    pub fn from_text(name: &str, text: &str) -> Knowledge {
        Knowledge::new(None, Arc::new(index_text(name, text)))
    }

    /// Loads and indexes `path`. Malformed lines are logged (`FILE:LINE: why`) and skipped;
    /// an unreadable file or one that is not UTF-8 is an error.
    pub fn load(path: &Path) -> Result<Knowledge, LoadError> {
        let index = load_index(path)?;
        Ok(Knowledge::new(Some(path.to_owned()), Arc::new(index)))
    }

    /// Re-reads the file this knowledge base was loaded from and swaps the new contents in.
    /// On failure the old contents stay and a warning says why. The built-in knowledge base
    /// has no file: nothing happens.
    pub fn reload(&self) {
        let Some(path) = &self.shared.source else {
            info!("the {BUILTIN_NAME} has no file to reload");
            return;
        };
        let _one_at_a_time = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = Instant::now();
        match load_index(path) {
            Ok(index) => {
                let n = index.len();
                self.shared.index.store(Arc::new(index));
                info!(
                    "reloaded {n} entries from {} in {} ms",
                    path.display(),
                    started.elapsed().as_millis()
                );
            }
            Err(e) => warn!(
                "reload failed, still serving the previous {} entries: {e}",
                self.len()
            ),
        }
    }

    /// The file this knowledge base was loaded from (`None` for built-in or text).
    pub fn source(&self) -> Option<&Path> {
        self.shared.source.as_deref()
    }

    /// How many entries (distinct keywords) it holds.
    pub fn len(&self) -> usize {
        self.shared.index.load().len()
    }

    /// Whether it holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The one-line reply to `query` (see the module documentation for the texts).
    pub fn answer(&self, query: &str, lang: Lang) -> String {
        let mut reply = String::with_capacity(128);
        self.answer_into(query, lang, &mut reply);
        reply
    }

    /// [`Knowledge::answer`] written into `reply` (cleared first), so a caller answering many
    /// queries can reuse one buffer.
    pub fn answer_into(&self, query: &str, lang: Lang, reply: &mut String) {
        reply.clear();
        let query = query.trim();
        if query.is_empty() {
            reply.push_str(match lang {
                Lang::En => EMPTY_EN,
                Lang::Zh => EMPTY_ZH,
            });
            return;
        }
        if query.len() > MAX_QUERY {
            let n = query.len();
            // Writing to a String cannot fail.
            let _ = match lang {
                Lang::En => write!(reply, "query too long: {n} bytes (at most {MAX_QUERY})"),
                Lang::Zh => write!(reply, "查询内容过长: {n} 字节 (最多 {MAX_QUERY})"),
            };
            return;
        }
        let index = self.shared.index.load();
        let ranked = FOLDED.with_borrow_mut(|folded| {
            fold::fold_into(query, folded);
            let ranked = index.search(folded);
            // Keep a buffer for the next query, but not one a huge query left behind.
            if folded.capacity() > 4096 {
                *folded = String::new();
            }
            ranked
        });
        let Some((&best, others)) = ranked.ids().split_first() else {
            match lang {
                Lang::En => {
                    reply.push_str("not found: ");
                    echo_into(query, reply);
                }
                Lang::Zh => reply.push_str(NOT_FOUND_ZH),
            }
            return;
        };
        reply.push_str(index.answer(best));
        if !others.is_empty() {
            reply.push_str(" (see also: ");
            for (i, &id) in others.iter().enumerate() {
                if i > 0 {
                    reply.push_str(", ");
                }
                reply.push_str(index.keyword(id));
            }
            reply.push(')');
        }
    }
}

thread_local! {
    /// The folded query, reused from one query to the next on each thread.
    static FOLDED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Appends `query` as repeated in a `not found:` reply: at most [`ECHO_CHARS`] characters
/// (then `…`), control characters escaped so the reply stays one harmless line.
fn echo_into(query: &str, out: &mut String) {
    for (i, c) in query.chars().enumerate() {
        if i == ECHO_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// Indexes `text`, logging its malformed lines as `NAME:LINE: why`.
fn index_text(name: &str, text: &str) -> Index {
    let mut parsed = parse(text);
    let index = Index::build(&mut parsed);
    report_malformed(name, &parsed);
    index
}

fn load_index(path: &Path) -> Result<Index, LoadError> {
    let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| LoadError::Utf8 {
        path: path.to_owned(),
        line: line_of(&bytes, e.valid_up_to()),
    })?;
    let index = index_text(&path.display().to_string(), text);
    if index.is_empty() {
        warn!(
            "{}: no entries: every query will be answered 'not found'",
            path.display()
        );
    }
    Ok(index)
}

fn report_malformed(name: &str, parsed: &Parsed) {
    for m in &parsed.malformed {
        warn!("{name}:{}: {}", m.line, skipped(&m.why));
    }
    let unreported = parsed.malformed_total - parsed.malformed.len();
    if unreported > 0 {
        warn!("{name}: {unreported} more malformed lines skipped");
    }
}

/// Ends a reason with "line skipped" once.
fn skipped(why: &str) -> String {
    if why.ends_with("line skipped") {
        why.to_owned()
    } else {
        format!("{why}; line skipped")
    }
}

/// The lookup service: every message is a query answered from a [`Knowledge`].
#[derive(Clone, Debug)]
pub struct Lookup {
    knowledge: Knowledge,
    lang: Lang,
}

impl Lookup {
    /// A lookup service answering from `knowledge` in `lang`.
    pub fn new(knowledge: Knowledge, lang: Lang) -> Lookup {
        Lookup { knowledge, lang }
    }

    /// The knowledge base it answers from.
    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }
}

/// A lookup connection: a handle to the shared knowledge base.
#[derive(Debug)]
pub struct LookupSession {
    knowledge: Knowledge,
    lang: Lang,
    /// The reply being built, reused from one message to the next.
    reply: String,
}

impl Service for Lookup {
    type Session = LookupSession;

    fn open(&self, _peer: &PeerInfo) -> LookupSession {
        LookupSession {
            knowledge: self.knowledge.clone(),
            lang: self.lang,
            reply: String::new(),
        }
    }

    fn reload(&self) {
        self.knowledge.reload();
    }
}

impl Session for LookupSession {
    async fn on_message(&mut self, msg: Message, out: &mut Outbox) {
        let query = String::from_utf8_lossy(msg.body());
        self.knowledge
            .answer_into(&query, self.lang, &mut self.reply);
        // One allocation of exactly the reply's size, which the message takes over as is.
        out.send(Message::text(self.reply.as_str()));
        // Keep a buffer for the next reply, but not one an unusually long reply left behind.
        if self.reply.capacity() > 4096 {
            self.reply = String::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kb(text: &str) -> Knowledge {
        Knowledge::from_text("test", text)
    }

    #[test]
    fn the_builtin_knowledge_base_is_clean_and_large_enough() {
        let mut parsed = parse(BUILTIN_TSV);
        let index = Index::build(&mut parsed);
        assert_eq!(parsed.malformed, [], "malformed lines in builtin.tsv");
        assert!(index.len() >= 60, "{} entries", index.len());
        let cjk = (0..index.len() as u32)
            .filter(|&id| {
                index
                    .keyword(id)
                    .chars()
                    .any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c))
            })
            .count();
        assert!(cjk >= 30, "{cjk} Chinese keywords");
    }

    #[test]
    fn every_builtin_reply_fits_one_tutorial_recv() {
        // The tutorial clients read a reply with one recv(1024): an answer plus three "see
        // also" keywords must stay under that whatever the query.
        let mut parsed = parse(BUILTIN_TSV);
        let index = Index::build(&mut parsed);
        let ids = 0..index.len() as u32;
        let longest_answer = ids.clone().map(|i| index.answer(i).len()).max();
        let longest_keyword = ids.map(|i| index.keyword(i).len()).max();
        let (answer, keyword) = (longest_answer.unwrap(), longest_keyword.unwrap());
        assert!(
            answer + " (see also: )".len() + 3 * (keyword + 2) < 1024,
            "{answer} + 3 x {keyword}"
        );
    }

    #[test]
    fn the_builtin_knowledge_base_answers_the_tutorial_terms() {
        let k = Knowledge::builtin();
        for q in [
            "TCP",
            "udp",
            "Socket",
            "three-way handshake",
            "four-way wave",
            "sticky packets",
            "MTU",
            "NAT",
            "DNS",
            "ARP",
            "三次握手",
            "四次挥手",
            "黏包",
            "粘包",
            "端口",
            "套接字",
        ] {
            let reply = k.answer(q, Lang::En);
            assert!(!reply.starts_with("not found"), "{q}: {reply}");
        }
    }

    #[test]
    fn replies_carry_see_also_and_not_found_texts() {
        let k = kb("port\tA number.\nwell-known ports\tBelow 1024.\nephemeral port\tHigh.\n");
        assert_eq!(
            k.answer("  PORT \r\n", Lang::En),
            "A number. (see also: ephemeral port, well-known ports)"
        );
        assert_eq!(k.answer("socket", Lang::En), "not found: socket");
        assert_eq!(k.answer("socket", Lang::Zh), "未搜索到");
        assert_eq!(k.answer(" \n", Lang::En), EMPTY_EN);
        assert_eq!(k.answer("", Lang::Zh), EMPTY_ZH);
    }

    #[test]
    fn see_also_lists_at_most_three_others() {
        let k = kb("ab\t0\nabc\t1\nabcd\t2\nabcde\t3\nabcdef\t4\n");
        assert_eq!(k.answer("ab", Lang::En), "0 (see also: abc, abcd, abcde)");
    }

    #[test]
    fn not_found_repeats_a_bounded_and_harmless_query() {
        let k = kb("tcp\tx\n");
        let long = "q".repeat(500);
        let reply = k.answer(&long, Lang::En);
        assert_eq!(reply, format!("not found: {}…", "q".repeat(ECHO_CHARS)));
        assert_eq!(
            k.answer("a\u{1b}[2Jb\nc", Lang::En),
            "not found: a\\u{1b}[2Jb\\nc"
        );
    }

    #[test]
    fn oversized_queries_are_refused_unsearched() {
        let k = kb("tcp\tx\n");
        let huge = "tcp ".repeat(MAX_QUERY);
        assert_eq!(
            k.answer(&huge, Lang::En),
            format!(
                "query too long: {} bytes (at most {MAX_QUERY})",
                huge.len() - 1
            )
        );
        assert!(
            k.answer(&"tcp ".repeat(MAX_QUERY / 4), Lang::En)
                .starts_with('x')
        );
    }

    #[test]
    fn clones_share_contents_and_text_bases_do_not_reload() {
        let k = kb("tcp\tx\n");
        let clone = k.clone();
        clone.reload();
        assert_eq!(k.len(), 1);
        assert!(k.source().is_none());
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.tsv");
        std::fs::write(&path, b"ok\tfine\nbad\t\xff\xfe\n").unwrap();
        let err = Knowledge::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:2: not valid UTF-8 (the knowledge base must be UTF-8 text)",
                path.display()
            )
        );
        let missing = dir.path().join("missing.tsv");
        let err = Knowledge::load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: cannot read the knowledge base: ",
                missing.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn reload_swaps_in_a_good_file_and_keeps_the_old_one_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.tsv");
        std::fs::write(&path, "tcp\tversion 1\n").unwrap();
        let k = Knowledge::load(&path).unwrap();
        let seen_by_clone = k.clone();
        std::fs::write(&path, b"tcp\t\xff\n").unwrap();
        k.reload();
        assert_eq!(seen_by_clone.answer("tcp", Lang::En), "version 1");
        std::fs::write(&path, "tcp\tversion 2\nudp\tnew\n").unwrap();
        k.reload();
        assert_eq!(seen_by_clone.answer("tcp", Lang::En), "version 2");
        assert_eq!(seen_by_clone.len(), 2);
        std::fs::remove_file(&path).unwrap();
        k.reload();
        assert_eq!(seen_by_clone.answer("udp", Lang::En), "new");
    }
}
