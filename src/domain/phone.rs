//! E.164 phone numbers.
//!
//! Numbers arrive in any human form (`+1 (800) 555-0100`, `+44 (0)20 7946
//! 0958`). A number already in canonical E.164 form is taken as it is, with
//! no allocation beyond the copy: that is what media servers send, and the
//! library's parser costs microseconds. Anything else goes through
//! libphonenumber's parser, which knows trunk prefixes, separators and
//! vanity letters. A country code is never assumed: a number without `+` is
//! rejected, because guessing the country is the most common way peers route
//! a call to the wrong tenant.

use std::fmt;

use crate::error::Error;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Longer input is not a phone number; refuse before any parsing work.
const MAX_INPUT_LEN: usize = 64;

impl PhoneNumber {
    pub fn parse(input: &str) -> Result<Self, Error> {
        let input = input.trim();
        if is_canonical_e164(input) {
            return Ok(PhoneNumber(input.to_owned()));
        }
        if input.is_empty() {
            return Err(Error::invalid("phone number is empty"));
        }
        if input.len() > MAX_INPUT_LEN {
            return Err(Error::invalid("phone number is too long"));
        }
        // `(+1) 650 555 0199` is a common written form: brackets may come
        // first, but the `+` and a country code must be there.
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
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        if is_canonical_e164(&e164) {
            Ok(PhoneNumber(e164))
        } else {
            Err(Error::invalid("phone number is not a valid E.164 number"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last four digits, for logs: a whole number is personal data.
    pub fn redacted(&self) -> String {
        let tail = &self.0[self.0.len().saturating_sub(4)..];
        format!("***{tail}")
    }
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
    }
}
