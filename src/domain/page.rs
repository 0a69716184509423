//! Keyset pagination: a page token is an opaque cursor (the last id seen), so
//! pages stay stable while rows are added and cost one index range scan.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use uuid::Uuid;

use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
const TOKEN_PREFIX: &str = "v1:";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    /// Return rows whose id sorts after this one.
    pub after: Option<Uuid>,
}

impl PageRequest {
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

fn decode_token(token: &str) -> Option<Uuid> {
    if token.len() > 64 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    Uuid::try_parse(text.strip_prefix(TOKEN_PREFIX)?).ok()
}

pub fn encode_token(last_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{last_id}"))
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
    pub fn from_rows(mut rows: Vec<T>, request: PageRequest, id_of: impl Fn(&T) -> Uuid) -> Self {
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
            PageRequest::parse(0, "").map(|p| p.size),
            Ok(DEFAULT_PAGE_SIZE)
        );
        assert_eq!(
            PageRequest::parse(10_000, "").map(|p| p.size),
            Ok(MAX_PAGE_SIZE)
        );
        assert!(PageRequest::parse(-1, "").is_err());
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let id = Uuid::new_v4();
        assert_eq!(
            PageRequest::parse(5, &encode_token(id)).map(|p| p.after),
            Ok(Some(id))
        );
        for bad in [
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("v2:abc"),
            &"A".repeat(100),
        ] {
            assert_eq!(
                PageRequest::parse(5, bad),
                Err(Error::invalid("page_token is not valid"))
            );
        }
    }

    #[test]
    fn the_extra_row_becomes_a_token() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let request = PageRequest {
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
