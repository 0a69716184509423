//! Keyset pagination: a page token is an opaque cursor (the last key seen), so
//! pages stay stable while rows are added and cost one index range scan.
//! Every list RPC shares the token's shape (URL-safe base64 of `v1:` and the
//! key) and the page size rules; only the key differs (`Cursor`).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use uuid::Uuid;

use crate::error::Error;

pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;
pub(crate) const MAX_PAGE_SIZE: u32 = 500;
const TOKEN_PREFIX: &str = "v1:";

/// The key a list is ordered by, as it appears inside a page token.
pub trait Cursor: Sized + Copy {
    fn to_token_text(&self) -> String;
    fn from_token_text(text: &str) -> Option<Self>;
}

/// Lists ordered by a UUID primary key (agents, customers).
impl Cursor for Uuid {
    fn to_token_text(&self) -> String {
        self.to_string()
    }

    fn from_token_text(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok()
    }
}

/// Lists ordered by a bigint identity, newest first (an agent's history).
/// Tagged, so a token of one list is refused by the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq(pub i64);

impl Cursor for Seq {
    fn to_token_text(&self) -> String {
        format!("seq:{}", self.0)
    }

    fn from_token_text(text: &str) -> Option<Self> {
        let digits = text.strip_prefix("seq:")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Seq)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest<C = Uuid> {
    pub size: u32,
    /// Return rows that sort after this key.
    pub after: Option<C>,
}

impl<C: Cursor> PageRequest<C> {
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, Error> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(Error::invalid("page_size must not be negative")),
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(
                decode_token(page_token)
                    .ok_or_else(|| Error::invalid("page_token is not valid"))?,
            )
        };
        Ok(PageRequest { size, after })
    }
}

/// Longer than any token we issue (a call cursor's is 83 characters).
const MAX_TOKEN_CHARS: usize = 128;

fn decode_token<C: Cursor>(token: &str) -> Option<C> {
    if token.len() > MAX_TOKEN_CHARS {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    C::from_token_text(text.strip_prefix(TOKEN_PREFIX)?)
}

pub(crate) fn encode_token<C: Cursor>(last: C) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{}", last.to_token_text()))
}

/// One page of results and the token for the next, if there is one.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// `rows` was fetched with `limit size + 1`: the extra row only says that
    /// another page exists.
    pub fn from_rows<C: Cursor>(
        mut rows: Vec<T>,
        request: PageRequest<C>,
        id_of: impl Fn(&T) -> C,
    ) -> Self {
        let next_page_token = if rows.len() > request.size as usize {
            rows.truncate(request.size as usize);
            rows.last()
                .map(|last| encode_token(id_of(last)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_clamp() {
        assert_eq!(
            PageRequest::<Uuid>::parse(0, "").map(|p| p.size),
            Ok(DEFAULT_PAGE_SIZE)
        );
        assert_eq!(
            PageRequest::<Uuid>::parse(10_000, "").map(|p| p.size),
            Ok(MAX_PAGE_SIZE)
        );
        assert!(PageRequest::<Uuid>::parse(-1, "").is_err());
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let id = Uuid::new_v4();
        assert_eq!(
            PageRequest::<Uuid>::parse(5, &encode_token(id)).map(|p| p.after),
            Ok(Some(id))
        );
        for bad in [
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("v2:abc"),
            &"A".repeat(100),
        ] {
            assert_eq!(
                PageRequest::<Uuid>::parse(5, bad),
                Err(Error::invalid("page_token is not valid"))
            );
        }
    }

    #[test]
    fn sequence_tokens_are_their_own_kind() {
        assert_eq!(
            PageRequest::<Seq>::parse(5, &encode_token(Seq(42))).map(|p| p.after),
            Ok(Some(Seq(42)))
        );
        let uuid_token = encode_token(Uuid::new_v4());
        assert!(PageRequest::<Seq>::parse(5, &uuid_token).is_err());
        assert!(PageRequest::<Uuid>::parse(5, &encode_token(Seq(42))).is_err());
        for bad in [
            "v1:seq:",
            "v1:seq:-1",
            "v1:seq:1e3",
            "v1:seq:99999999999999999999",
        ] {
            assert!(
                PageRequest::<Seq>::parse(5, &URL_SAFE_NO_PAD.encode(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_extra_row_becomes_a_token() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let request = PageRequest::<Uuid> {
            size: 2,
            after: None,
        };
        let page = Page::from_rows(ids.clone(), request, |id| *id);
        assert_eq!(page.items, ids[..2]);
        assert_eq!(page.next_page_token, encode_token(ids[1]));
        let last = Page::from_rows(ids[..2].to_vec(), request, |id| *id);
        assert_eq!(last.next_page_token, "");
    }
}
