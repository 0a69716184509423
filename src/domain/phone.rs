//! E.164 phone numbers.
//!
//! Numbers arrive in any human form (`+1 (800) 555-0100`, `+44 (0)20 7946
//! 0958`). A country code is never assumed: a number without `+` is
//! rejected, because guessing the country is the most common way peers route
//! a call to the wrong tenant.
//!
//! Two ways in, for two kinds of use:
//! - [`PhoneNumber::parse`], for lookups (`ResolveAgent`, `LookupCustomer`):
//!   a number already in canonical E.164 form is taken as it is, with no
//!   library call and no allocation beyond the copy. That is what media
//!   servers send, and the library costs microseconds behind a mutex-guarded
//!   regex cache. A well-formed but impossible number (`+10`) simply finds
//!   nothing. Other forms go through libphonenumber's parser (separators,
//!   trunk prefixes, vanity letters), which does not validate either.
//! - [`PhoneNumber::parse_for_write`], for every number we store (agents,
//!   customers, call records): the same parse, then libphonenumber's
//!   `is_valid` (country code, area code and length from its metadata), the
//!   canonical form included. What is stored is therefore always a number
//!   that a canonical lookup of the same digits finds.
//!
//! Which numbers are valid is decided by the metadata compiled into the
//! `phonenumber` crate (0.3.10+9.0.33: libphonenumber 9.0.33's
//! `PhoneNumberMetadata.xml`); upgrading the crate may change the answer for
//! newly assigned or withdrawn ranges, never for numbers already stored.

use std::fmt;

use crate::error::Error;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Longer input is not a phone number; refuse before any parsing work.
const MAX_INPUT_LEN: usize = 64;

/// A redacted number shows at most this many of its last digits.
const REDACTED_TAIL_DIGITS: usize = 4;

impl PhoneNumber {
    /// A number to look up: canonical E.164 is taken as it is (the hot
    /// path), other forms are normalised. Not validated against the
    /// numbering plan: an impossible number finds nothing.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let input = input.trim();
        if is_canonical_e164(input) {
            return Ok(PhoneNumber(input.to_owned()));
        }
        let parsed = library_parse(input)?;
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        if is_canonical_e164(&e164) {
            Ok(PhoneNumber(e164))
        } else {
            Err(Error::invalid("phone number is not a valid E.164 number"))
        }
    }

    /// A number to store: as [`parse`](Self::parse), and the number must be
    /// one libphonenumber holds valid (a real country code, an assigned
    /// area code or range, the right length). Costs a library parse even
    /// for canonical input: write paths only.
    pub fn parse_for_write(input: &str) -> Result<Self, Error> {
        let input = input.trim();
        let not_a_number = || {
            Error::invalid(
                "phone number is not a valid number (unknown country or area code, or wrong length)",
            )
        };
        // E.164 the library cannot even parse (`+10`) is no number either.
        let parsed = library_parse(input).map_err(|e| {
            if is_canonical_e164(input) {
                not_a_number()
            } else {
                e
            }
        })?;
        if !phonenumber::is_valid(&parsed) {
            return Err(not_a_number());
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        // A canonical input must be stored exactly as sent, or a lookup of
        // the same string (taken as it is) would not find it.
        if !is_canonical_e164(&e164) || (is_canonical_e164(input) && e164 != input) {
            return Err(Error::invalid("phone number is not a valid E.164 number"));
        }
        Ok(PhoneNumber(e164))
    }

    /// libphonenumber loads its metadata (about 2.5 MB, parsed from XML;
    /// over a second in a debug build) and compiles a country's patterns on
    /// first use, synchronously. Start-up calls this on a blocking thread, so
    /// that the first write of a process does not block a runtime worker,
    /// and the calls sharing it, while that happens.
    pub(crate) fn load_metadata() {
        let _ = Self::parse_for_write("+18005550100");
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last digits, for logs: a whole number is personal data. At most
    /// four, and never more than half of them, so a short number (`+10`)
    /// is not shown whole either.
    pub fn redacted(&self) -> String {
        let digits = self.0.trim_start_matches('+');
        let shown = REDACTED_TAIL_DIGITS.min(digits.len() / 2);
        format!("***{}", &digits[digits.len() - shown..])
    }
}

/// libphonenumber's parser, behind the checks that need no library: length,
/// a leading `+` (brackets may come first: `(+1) 650 555 0199` is a common
/// written form), no extension.
fn library_parse(input: &str) -> Result<phonenumber::PhoneNumber, Error> {
    if input.is_empty() {
        return Err(Error::invalid("phone number is empty"));
    }
    if input.len() > MAX_INPUT_LEN {
        return Err(Error::invalid("phone number is too long"));
    }
    if !input.trim_start_matches(['(', ' ']).starts_with('+') {
        return Err(Error::invalid(
            "phone number must start with + and a country code (E.164, e.g. +18005550100)",
        ));
    }
    let parsed = phonenumber::parse(None, input)
        .map_err(|_| Error::invalid("phone number could not be parsed"))?;
    if parsed.extension().is_some() {
        return Err(Error::invalid("phone number must not carry an extension"));
    }
    Ok(parsed)
}

/// `^\+[1-9]\d{1,14}$`, without a regex engine.
fn is_canonical_e164(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() >= 3
        && bytes.len() <= 16
        && bytes[0] == b'+'
        && (b'1'..=b'9').contains(&bytes[1])
        && bytes[2..].iter().all(u8::is_ascii_digit)
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug output is redacted so a number never reaches a log by accident.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(input: &str) -> String {
        match PhoneNumber::parse(input) {
            Ok(n) => n.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn canonical_numbers_are_kept() {
        assert_eq!(e164("+18005550100"), "+18005550100");
        assert_eq!(e164(" +442079460958 "), "+442079460958");
    }

    #[test]
    fn human_forms_are_normalised() {
        assert_eq!(e164("+1 (800) 555-0100"), "+18005550100");
        assert_eq!(e164("+1.800.555.0100"), "+18005550100");
        // The UK trunk prefix in brackets is dropped, not kept as a digit.
        assert_eq!(e164("+44 (0)20 7946 0958"), "+442079460958");
        assert_eq!(e164("+33 1 23 45 67 89"), "+33123456789");
        assert_eq!(e164("(+1) 650-555-0199"), "+16505550199");
        // Vanity letters are digits on a keypad.
        assert_eq!(e164("+1 800 FLOWERS"), "+18003569377");
    }

    #[test]
    fn a_country_code_is_never_assumed() {
        assert!(e164("8005550100").starts_with("error: phone number must start with +"));
        assert!(e164("(800) 555-0100").starts_with("error"));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "+",
            "+0123",
            "+1",
            "hello",
            "+1 800 CALL ME NOW PLEASE 0000000000000000000",
            "+12345678901234567",
        ] {
            assert!(
                e164(bad).starts_with("error"),
                "{bad:?} was accepted as {}",
                e164(bad)
            );
        }
        assert!(e164(&"9".repeat(1000)).starts_with("error"));
    }

    #[test]
    fn debug_does_not_leak_the_number() {
        let n = PhoneNumber::parse("+18005550100").map_err(|e| e.to_string());
        assert_eq!(format!("{n:?}"), "Ok(PhoneNumber(***0100))");
        // Short numbers show at most half their digits, never all of them.
        for (number, redacted) in [("+10", "***0"), ("+123", "***3"), ("+1234567", "***567")] {
            let n = PhoneNumber::parse(number).map_err(|e| e.to_string());
            assert_eq!(n.map(|n| n.redacted()), Ok(redacted.to_owned()), "{number}");
        }
    }

    fn stored(input: &str) -> String {
        match PhoneNumber::parse_for_write(input) {
            Ok(n) => n.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn writes_store_only_valid_numbers() {
        for good in [
            "+18005550100",
            "+1 (800) 555-0100",
            "+16505550199",
            "+14155550123",
            "+442079460958",
            "+44 (0)20 7946 0958",
            "+33 1 23 45 67 89",
            "+1 800 FLOWERS",
        ] {
            assert_eq!(stored(good), e164(good), "{good:?}");
        }
        for bad in [
            "+10",
            "+19990000000",
            "+1 999 000 0000",
            "+15550009999",
            "+1800555010",
            "+180055501001",
            "+999123456789",
            "",
            "8005550100",
        ] {
            assert!(
                stored(bad).starts_with("error"),
                "{bad:?} was stored as {}",
                stored(bad)
            );
        }
        // Lookups stay lenient: an impossible number simply finds nothing.
        assert_eq!(e164("+10"), "+10");
        assert_eq!(e164("+1 999 000 0000"), "+19990000000");
    }
}
