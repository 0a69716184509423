//! Quoting for the two places that use Postgres's simple-query protocol
//! (applying claims, and the one-statement `ResolveAgent`).
//!
//! Why not bind parameters there: the simple protocol sends BEGIN, the claims
//! and the query in one round trip, and needs no prepared statement, so it
//! works unchanged through a transaction pooler (PgBouncer, Supavisor).

/// An `E'…'` literal: backslashes and quotes escaped, so the value means the
/// same whatever `standard_conforming_strings` says. `None` if the value holds
/// a NUL, which Postgres text cannot.
pub fn sql_literal(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 4);
    push_sql_literal(&mut out, value).then_some(out)
}

/// [`sql_literal`] appended to `out`, for a statement built in one buffer;
/// `false`, with nothing appended, if the value holds a NUL. Copies the
/// runs between the two bytes it escapes (both ASCII, so never inside a
/// UTF-8 sequence) instead of going through the value a char at a time.
pub fn push_sql_literal(out: &mut String, value: &str) -> bool {
    if value.contains('\0') {
        return false;
    }
    out.push_str("E'");
    let mut run = value;
    while let Some(at) = run.bytes().position(|b| b == b'\\' || b == b'\'') {
        // Both are one-byte characters: `at` and `at + 1` are boundaries.
        let (before, rest) = run.split_at(at);
        out.push_str(before);
        out.push_str(if rest.starts_with('\\') { "\\\\" } else { "''" });
        run = &rest[1..];
    }
    out.push_str(run);
    out.push('\'');
    true
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
        assert_eq!(sql_literal("é'ü\\ñ").as_deref(), Some(r"E'é''ü\\ñ'"));
    }

    #[test]
    fn appending_writes_what_the_literal_is() {
        let mut out = String::from("select ");
        assert!(push_sql_literal(&mut out, r#"{"sub":"o'neil\x"}"#));
        assert_eq!(out, r#"select E'{"sub":"o''neil\\x"}'"#);
        assert!(!push_sql_literal(&mut String::new(), "a\0b"));
    }
}
