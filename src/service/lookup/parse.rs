//! The knowledge-base file format: UTF-8 text, one `keyword<TAB>answer` entry per line.
//!
//! - Blank lines and lines whose first non-blank character is `#` are ignored.
//! - Line endings may be `\n` or `\r\n`; a leading byte-order mark is ignored.
//! - The keyword and the answer are trimmed of surrounding whitespace.
//! - A malformed line (no tab, more than one tab, an empty keyword or answer, a control
//!   character, a keyword over [`MAX_KEYWORD_CHARS`] characters) is reported with its line
//!   number and skipped; the rest still loads.
//! - A keyword that repeats an earlier one (after case folding) is reported and skipped: the
//!   first entry wins.

/// One accepted entry, borrowed from the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// 1-based line number in the file.
    pub line: usize,
    /// The keyword as written (trimmed).
    pub keyword: &'a str,
    /// The answer (trimmed).
    pub answer: &'a str,
}

/// A rejected line: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped, e.g. `no tab between keyword and answer`.
    pub why: String,
}

/// The longest keyword accepted, in characters: keywords are search terms, and the bound
/// keeps the per-length tables of the index small.
pub const MAX_KEYWORD_CHARS: usize = 256;

/// How many malformed lines are kept with their reasons; later ones are only counted, so a
/// file that is not a knowledge base at all cannot flood the log or memory.
pub const MAX_REPORTED: usize = 20;

/// The outcome of parsing a whole file.
#[derive(Debug, Default)]
pub struct Parsed<'a> {
    /// The accepted entries, in file order (duplicates not yet removed).
    pub entries: Vec<Entry<'a>>,
    /// The first [`MAX_REPORTED`] malformed lines.
    pub malformed: Vec<Malformed>,
    /// How many malformed lines there were in all.
    pub malformed_total: usize,
}

impl Parsed<'_> {
    /// Records a rejected line.
    pub fn reject(&mut self, line: usize, why: String) {
        self.malformed_total += 1;
        if self.malformed.len() < MAX_REPORTED {
            self.malformed.push(Malformed { line, why });
        }
    }
}

/// The 1-based line of byte offset `at` in `bytes`.
pub fn line_of(bytes: &[u8], at: usize) -> usize {
    1 + memchr::memchr_iter(b'\n', &bytes[..at.min(bytes.len())]).count()
}

/// Parses knowledge-base text.
pub fn parse(text: &str) -> Parsed<'_> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut parsed = Parsed::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        match parse_line(raw) {
            Ok((keyword, answer)) => parsed.entries.push(Entry {
                line,
                keyword,
                answer,
            }),
            Err(why) => parsed.reject(line, why),
        }
    }
    parsed
}

fn parse_line(raw: &str) -> Result<(&str, &str), String> {
    let Some((keyword, answer)) = raw.split_once('\t') else {
        return Err("no tab between keyword and answer".into());
    };
    if answer.contains('\t') {
        return Err("more than one tab (expected keyword<TAB>answer)".into());
    }
    let (keyword, answer) = (keyword.trim(), answer.trim());
    if keyword.is_empty() {
        return Err("empty keyword".into());
    }
    if answer.is_empty() {
        return Err("empty answer".into());
    }
    if keyword.chars().count() > MAX_KEYWORD_CHARS {
        return Err(format!(
            "keyword longer than {MAX_KEYWORD_CHARS} characters"
        ));
    }
    for (what, text) in [("keyword", keyword), ("answer", answer)] {
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(format!("control character {c:?} in the {what}"));
        }
    }
    Ok((keyword, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_entries_and_skips_comments_and_blanks() {
        let p =
            parse("\u{FEFF}# title\n\nTCP\tTransmission\r\n  # indented comment\n 端口 \t 号码 \n");
        assert_eq!(
            p.entries,
            [
                Entry {
                    line: 3,
                    keyword: "TCP",
                    answer: "Transmission"
                },
                Entry {
                    line: 5,
                    keyword: "端口",
                    answer: "号码"
                },
            ]
        );
        assert!(p.malformed.is_empty());
    }

    #[test]
    fn reports_each_kind_of_malformed_line_with_its_number() {
        let long = "k".repeat(MAX_KEYWORD_CHARS + 1);
        let text = format!(
            "ok\tfine\nnotab\n\tanswer only\nkeyword only\t \na\tb\tc\nbell\t\u{7}ring\n{long}\tx\n"
        );
        let p = parse(&text);
        let got: Vec<(usize, &str)> = p
            .malformed
            .iter()
            .map(|m| (m.line, m.why.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "no tab between keyword and answer"),
                (3, "empty keyword"),
                (4, "empty answer"),
                (5, "more than one tab (expected keyword<TAB>answer)"),
                (6, "control character '\\u{7}' in the answer"),
                (7, "keyword longer than 256 characters"),
            ]
        );
        assert_eq!(p.entries.len(), 1);
    }

    #[test]
    fn keeps_only_the_first_malformed_reasons_but_counts_all() {
        let text = "garbage\n".repeat(1000);
        let p = parse(&text);
        assert_eq!(p.malformed.len(), MAX_REPORTED);
        assert_eq!(p.malformed_total, 1000);
    }

    #[test]
    fn line_of_counts_newlines_before_an_offset() {
        assert_eq!(line_of(b"a\nb\nc", 0), 1);
        assert_eq!(line_of(b"a\nb\nc", 2), 2);
        assert_eq!(line_of(b"a\nb\nc", 4), 3);
        assert_eq!(line_of(b"a\nb\nc", 99), 3);
    }
}
