//! Case folding for matching: Unicode *simple* case folding (the `C` and `S` entries of
//! `CaseFolding.txt`), one character to one character.
//!
//! Mapping every character to exactly one character keeps containment intact: `a` is a
//! substring of `b` exactly when `fold(a)` is a substring of `fold(b)` position for position,
//! and character counts do not change. Full folding (`ß` → `ss`) would break that, which is
//! why simple folding is what matching needs.
//!
//! The mapping is std's lowercase mapping where that yields one character, with the handful
//! of characters where simple folding differs from lowercasing patched by [`EXCEPTIONS`] and
//! the Cherokee rule (Cherokee folds to its *uppercase* letters, which were encoded first).
//! A character whose lowercase is several characters (`İ` → `i̇`) has no simple folding and
//! stays as it is.

/// Characters whose simple case folding is not their (single-character) lowercase.
const EXCEPTIONS: &[(char, char)] = &[
    ('\u{00B5}', '\u{03BC}'), // MICRO SIGN → GREEK SMALL LETTER MU
    ('\u{017F}', 's'),        // LATIN SMALL LETTER LONG S
    ('\u{0345}', '\u{03B9}'), // COMBINING GREEK YPOGEGRAMMENI → IOTA
    ('\u{03C2}', '\u{03C3}'), // FINAL SIGMA → SIGMA
    ('\u{03D0}', '\u{03B2}'), // BETA SYMBOL
    ('\u{03D1}', '\u{03B8}'), // THETA SYMBOL
    ('\u{03D5}', '\u{03C6}'), // PHI SYMBOL
    ('\u{03D6}', '\u{03C0}'), // PI SYMBOL
    ('\u{03F0}', '\u{03BA}'), // KAPPA SYMBOL
    ('\u{03F1}', '\u{03C1}'), // RHO SYMBOL
    ('\u{03F5}', '\u{03B5}'), // LUNATE EPSILON SYMBOL
    ('\u{1C80}', '\u{0432}'), // CYRILLIC SMALL LETTER ROUNDED VE
    ('\u{1C81}', '\u{0434}'), // LONG-LEGGED DE
    ('\u{1C82}', '\u{043E}'), // NARROW O
    ('\u{1C83}', '\u{0441}'), // WIDE ES
    ('\u{1C84}', '\u{0442}'), // TALL TE
    ('\u{1C85}', '\u{0442}'), // THREE-LEGGED TE
    ('\u{1C86}', '\u{044A}'), // TALL HARD SIGN
    ('\u{1C87}', '\u{0463}'), // TALL YAT
    ('\u{1C88}', '\u{A64B}'), // UNBLENDED UK
    ('\u{1E9B}', '\u{1E61}'), // LONG S WITH DOT ABOVE
    ('\u{1FBE}', '\u{03B9}'), // GREEK PROSGEGRAMMENI
];

/// The simple case folding of one character.
#[inline]
pub fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    match c {
        // Cherokee: small letters fold to the capital letters; capitals stay.
        '\u{13A0}'..='\u{13F5}' => c,
        '\u{13F8}'..='\u{13FD}' => char::from_u32(c as u32 - 8).unwrap_or(c),
        '\u{AB70}'..='\u{ABBF}' => char::from_u32(c as u32 - 0xAB70 + 0x13A0).unwrap_or(c),
        _ => {
            if let Ok(i) = EXCEPTIONS.binary_search_by_key(&c, |&(from, _)| from) {
                return EXCEPTIONS[i].1;
            }
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        }
    }
}

/// `s` case-folded into `out` (cleared first).
pub fn fold_into(s: &str, out: &mut String) {
    out.clear();
    out.reserve(s.len());
    if s.is_ascii() {
        // Lowercasing ASCII never changes the length; this is the common case.
        out.push_str(s);
        out.make_ascii_lowercase();
        return;
    }
    out.extend(s.chars().map(fold_char));
}

/// `s` case-folded.
pub fn fold(s: &str) -> String {
    let mut out = String::new();
    fold_into(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_are_sorted_for_binary_search() {
        assert!(EXCEPTIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn folds_like_casefolding_txt() {
        assert_eq!(fold("TCP/IP Three-Way"), "tcp/ip three-way");
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), "σίσυφοσ");
        assert_eq!(fold("σίσυφος"), "σίσυφοσ");
        assert_eq!(fold("ſ µ"), "s μ");
        // No simple folding: unchanged rather than expanded.
        assert_eq!(fold("İ"), "İ");
        assert_eq!(fold("ẞ"), "ß");
        assert_eq!(fold("\u{212A}elvin"), "kelvin");
        assert_eq!(fold("\u{AB70}\u{13A0}\u{13F8}"), "\u{13A0}\u{13A0}\u{13F0}");
        assert_eq!(fold("三次握手 ＡＢＣ"), "三次握手 ａｂｃ");
    }

    #[test]
    fn folding_keeps_the_character_count() {
        for c in (0..0x11_0000u32).filter_map(char::from_u32) {
            let folded = fold_char(c);
            // Folding is idempotent: a folded character folds to itself.
            assert_eq!(fold_char(folded), folded, "{c:?} -> {folded:?}");
        }
    }
}
