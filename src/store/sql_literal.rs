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
    if value.contains('\0') {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 4);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(sql_literal("it's").as_deref(), Some("E'it''s'"));
        assert_eq!(sql_literal(r"a\'b").as_deref(), Some(r"E'a\\''b'"));
        assert_eq!(sql_literal("nul\0"), None);
    }
}
