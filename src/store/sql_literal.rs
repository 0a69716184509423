//! Quoting for the two places that use Postgres's simple-query protocol
//! (applying claims, and the one-statement `ResolveAgent`).
//!
//! Why not bind parameters there: the simple protocol sends BEGIN, the claims
//! and the query in one round trip, and needs no prepared statement, so it
//! works unchanged through a transaction pooler (PgBouncer, Supavisor).

use std::fmt::Write;

/// An `E'…'` literal: backslashes and quotes escaped, so the value means the
/// same whatever `standard_conforming_strings` says, and every character
/// past ASCII written as a `\u`/`\U` escape, so the statement is plain
/// ASCII and means the same in any `client_encoding`. (Our connections ask
/// for UTF8, but a session setting could change it behind a pooler; in
/// SJIS, BIG5, GBK or GB18030 a raw UTF-8 byte followed by the escaping
/// backslash reads as one character, and the quote after it would end the
/// literal: found by the attack review.) `None` if the value holds a NUL,
/// which Postgres text cannot.
pub fn sql_literal(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 4);
    push_sql_literal(&mut out, value).map(|()| out)
}

/// [`sql_literal`] appended to `out`, for a statement built in one buffer;
/// `None`, with nothing appended, if the value holds a NUL. Copies the
/// ASCII runs between the bytes it must escape.
pub fn push_sql_literal(out: &mut String, value: &str) -> Option<()> {
    if value.contains('\0') {
        return None;
    }
    out.push_str("E'");
    let mut run = value;
    while let Some(at) = run
        .bytes()
        .position(|b| b == b'\\' || b == b'\'' || !b.is_ascii())
    {
        // `at` starts a character: the bytes before it are ASCII.
        let (before, rest) = run.split_at(at);
        out.push_str(before);
        let mut chars = rest.chars();
        match chars.next() {
            Some('\\') => out.push_str("\\\\"),
            Some('\'') => out.push_str("''"),
            Some(c) if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            Some(c) => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
            None => break,
        }
        run = chars.as_str();
    }
    out.push_str(run);
    out.push('\'');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(sql_literal("it's").as_deref(), Some("E'it''s'"));
        assert_eq!(sql_literal(r"a\'b").as_deref(), Some(r"E'a\\''b'"));
        assert_eq!(sql_literal("nul\0"), None);
        assert_eq!(sql_literal("").as_deref(), Some("E''"));
        assert_eq!(sql_literal("''\\").as_deref(), Some(r"E'''''\\'"));
        assert_eq!(
            sql_literal("é'ü\\ñ").as_deref(),
            Some(r"E'\u00E9''\u00FC\\\u00F1'")
        );
        assert_eq!(sql_literal("日😀").as_deref(), Some(r"E'\u65E5\U0001F600'"));
        assert!(sql_literal("x'日\\😀").is_some_and(|l| l.is_ascii()));
    }

    #[test]
    fn appending_writes_what_the_literal_is() {
        let mut out = String::from("select ");
        assert!(push_sql_literal(&mut out, r#"{"sub":"o'neil\x"}"#).is_some());
        assert_eq!(out, r#"select E'{"sub":"o''neil\\x"}'"#);
        assert!(push_sql_literal(&mut String::new(), "a\0b").is_none());
    }
}
