//! The tail of what a program the host ran (a converter, `e2fsck`) wrote to
//! its stderr, made safe to print.
//!
//! The text comes from a program the host does not trust and ends up in an
//! error message that the CLI writes to a terminal. Raw control characters
//! there are instructions to the terminal, not text: `ESC [ 2 J` clears the
//! screen, an OSC sequence retitles the window or writes the clipboard, a
//! carriage return overwrites what was printed before it, BEL rings. So every
//! control character except newline and tab (C0, DEL, the C1 range and the
//! Unicode bidirectional overrides) is replaced by a visible escape such as
//! `\x1b`: the message still shows that the byte was there, and the terminal
//! never sees it.

use std::fmt::Write as _;

/// The last `limit` bytes of `text` (without trailing whitespace, starting on
/// a character boundary, with `…` in front when something was cut), with
/// every control character but newline and tab escaped. The limit applies
/// before escaping, so the result is at most four times as long.
pub(crate) fn tail(text: &str, limit: usize) -> String {
    let text = text.trim_end();
    if text.len() <= limit {
        return escape_controls(text);
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", escape_controls(&text[start..]))
}

/// `text` with every character a terminal would act on, other than newline
/// and tab, replaced by `\xNN` (or `\u{NNNN}` above U+00FF).
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !acts_on_terminal(c) {
            out.push(c);
        } else if u32::from(c) <= 0xff {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        }
    }
    out
}

/// Control characters (C0 but newline and tab, DEL, C1) and the Unicode
/// bidirectional controls, which reorder what a terminal shows.
fn acts_on_terminal(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        c => c.is_control(),
    }
}

#[cfg(test)]
mod tests {
    use super::{escape_controls, tail};

    #[test]
    fn terminal_controls_are_escaped_and_newlines_and_tabs_kept() {
        let cases = [
            ("plain text", "plain text"),
            ("two\nlines\tand a tab", "two\nlines\tand a tab"),
            ("clear \x1b[2J screen", "clear \\x1b[2J screen"),
            ("bell\x07", "bell\\x07"),
            ("over\rwrite", "over\\x0dwrite"),
            ("del\x7f", "del\\x7f"),
            ("nul\0", "nul\\x00"),
            ("c1 csi \u{9b}2J", "c1 csi \\x9b2J"),
            ("osc \x1b]0;title\x07", "osc \\x1b]0;title\\x07"),
            ("bidi \u{202e}txt", "bidi \\u{202e}txt"),
            ("accents: café ✓", "accents: café ✓"),
        ];
        for (input, expected) in cases {
            assert_eq!(escape_controls(input), expected, "{input:?}");
        }
    }

    #[test]
    fn the_tail_keeps_the_end_on_a_character_boundary_and_escapes_it() {
        assert_eq!(tail("short\n\n", 100), "short");
        assert_eq!(tail("abcdef", 3), "…def");
        // 'é' is two bytes: a cut inside it moves forward.
        assert_eq!(tail("aé\x1bz", 3), "…\\x1bz");
        assert_eq!(tail(&"x".repeat(5000), 4096).chars().count(), 4097);
    }
}
