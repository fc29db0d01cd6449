//! Control characters from a target or an input file never reach a
//! terminal raw.
//!
//! Strings that come from the traced process (its executable path, chunk
//! names, C type names, table keys) or from an input file (a snapshot's
//! `host`, a folded stack) can carry escape sequences that retitle, clear
//! or reprogram the operator's terminal. Every text report passes through
//! [`escape_text`] before it is printed; JSON output is escaped by serde.

use std::borrow::Cow;

/// Replace C0 controls (except newline and tab), DEL and C1 controls by a
/// visible escape (`\x1b`, `\u{9b}`). Text without them is returned as is.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape_text`] for a single-line field: newlines and tabs are escaped
/// too (a chunk name with a newline must not fake a report line).
pub fn escape_field(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c) || c == '\n' || c == '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) || c == '\n' || c == '\t' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write;
    let v = c as u32;
    if v < 0x80 {
        let _ = write!(out, "\\x{v:02x}");
    } else {
        let _ = write!(out, "\\u{{{v:x}}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_sequences_and_keeps_plain_text() {
        assert!(matches!(
            escape_text("plain /usr/sbin/nginx\n"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_text("a\x1b]0;pwned\x07b\r\u{9b}2J\x7f"),
            "a\\x1b]0;pwned\\x07b\\x0d\\u{9b}2J\\x7f"
        );
        assert_eq!(escape_text("line1\nline2\t"), "line1\nline2\t");
        assert_eq!(escape_field("a\nb"), "a\\x0ab");
    }
}
