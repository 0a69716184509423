//! Verifies tokens as Supabase issues them: HS256 with the project's JWT
//! secret, and RS256/ES256 with the asymmetric keys of a JWKS, picked by
//! `kid`. PostgREST's rules: 30 s of clock skew on `exp`, `nbf` and `iat`;
//! `alg: none` and every other algorithm refused.
//!
//! The header's `alg` chooses the key, never the other way round: HS256 is
//! only ever checked against the secret, RS256/ES256 only against a JWKS key
//! of that same type. So a token "signed" with HS256 using a public key as
//! the secret (the classic algorithm confusion) meets the secret and fails.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Claims, DbRole, Jwks};
use crate::error::Error;

/// Supabase refuses shorter secrets; so do we.
pub const MIN_SECRET_LEN: usize = 32;
const CLOCK_SKEW_SECS: u64 = 30;
/// A Supabase access token is well under 2 KiB; anything near this is abuse.
const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Clone)]
pub struct JwtVerifier {
    secret: Arc<DecodingKey>,
    validations: Arc<Validations>,
    /// RS256/ES256 keys; without a JWKS those algorithms are refused.
    jwks: Option<Jwks>,
    /// Shared by every clone: the layer clones the verifier per connection.
    verified: Arc<VerifiedTokens>,
}

/// Tokens that verified, so the same token again (the platform's service
/// token is on every call) costs a map lookup instead of a signature check
/// (ES256 ~0.4 ms, RS256 ~0.3 ms, HS256 ~4 µs in a release build here). As
/// PostgREST's cache: bounded, and `exp` re-checked on every hit. Nothing
/// else in a verified token can turn invalid with time (`nbf` and `iat` only
/// get more valid), and membership is read from `profiles` per statement
/// anyway. Entries remember the key set they were verified under and are
/// ignored once it is replaced. Failures are not remembered.
#[derive(Default)]
struct VerifiedTokens {
    /// A std lock: held for one map operation, never across an await. Hits
    /// take only the read side.
    entries: RwLock<HashMap<Box<str>, Verified>>,
}

struct Verified {
    claims: Claims,
    expires_at: u64,
    key_generation: u64,
}

/// When full, the map is emptied: simple, and a refill costs one
/// verification per live token.
const MAX_VERIFIED_TOKENS: usize = 4096;

impl VerifiedTokens {
    fn get(&self, token: &str, key_generation: u64) -> Option<Claims> {
        let entries = self.entries.read().ok()?;
        let hit = entries.get(token)?;
        let now = jsonwebtoken::get_current_timestamp();
        (hit.key_generation == key_generation
            && now <= hit.expires_at.saturating_add(CLOCK_SKEW_SECS))
        .then(|| hit.claims.clone())
    }

    fn insert(&self, token: &str, verified: Verified) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= MAX_VERIFIED_TOKENS {
                entries.clear();
            }
            entries.insert(token.into(), verified);
        }
    }
}

/// One per accepted algorithm: jsonwebtoken checks the header's `alg`
/// against the list and the key's family against the `alg`.
struct Validations {
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
}

fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = CLOCK_SKEW_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // `aud` is checked only when configured (PostgREST's rule); Supabase
    // tokens carry "authenticated", which says nothing about this service.
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
    validation
}

fn unauthenticated(message: &str) -> Error {
    Error::Unauthenticated(message.to_owned())
}

impl JwtVerifier {
    pub fn new(secret: &str) -> Self {
        JwtVerifier {
            secret: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
            validations: Arc::new(Validations {
                hs256: validation(Algorithm::HS256),
                rs256: validation(Algorithm::RS256),
                es256: validation(Algorithm::ES256),
            }),
            jwks: None,
            verified: Arc::default(),
        }
    }

    /// Also accepts RS256 and ES256 tokens signed by a key of `jwks`.
    pub fn with_jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Verifies the value of an `authorization` header.
    pub fn verify_header(&self, header: Option<&[u8]>) -> Result<Claims, Error> {
        let header = header.ok_or_else(|| unauthenticated("missing authorization metadata"))?;
        let header = std::str::from_utf8(header)
            .map_err(|_| unauthenticated("authorization metadata is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthenticated("authorization must be 'Bearer <token>'"))?;
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(unauthenticated("token is too large"));
        }
        let key_generation = self.jwks.as_ref().map_or(0, |j| j.current().generation());
        if let Some(claims) = self.verified.get(token, key_generation) {
            return Ok(claims);
        }
        let (claims, expires_at) = self.verify_uncached(token)?;
        self.verified.insert(
            token,
            Verified {
                claims: claims.clone(),
                expires_at,
                key_generation,
            },
        );
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Claims, u64), Error> {
        // Unverified, only to choose the key; `decode` checks it again.
        let header = jsonwebtoken::decode_header(token).map_err(token_error)?;
        let payload = match header.alg {
            Algorithm::HS256 => self.decode(token, &self.secret, &self.validations.hs256),
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| unauthenticated("token algorithm is not accepted"))?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| unauthenticated("token has no key id (kid)"))?;
                let keys = jwks.current();
                let Some(key) = keys.get(kid) else {
                    jwks.request_refresh();
                    return Err(unauthenticated("token key id (kid) matches no known key"));
                };
                if key.alg != alg {
                    return Err(unauthenticated("token algorithm does not match its key"));
                }
                let validation = if alg == Algorithm::RS256 {
                    &self.validations.rs256
                } else {
                    &self.validations.es256
                };
                self.decode(token, &key.key, validation)
            }
            _ => Err(unauthenticated("token algorithm is not accepted")),
        }?;
        // jsonwebtoken has checked that `exp` is there and a number.
        let expires_at = payload
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)))
            .unwrap_or(0);
        Ok((claims_from_payload(payload)?, expires_at))
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Map<String, Value>, Error> {
        jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map(|data| data.claims)
            .map_err(token_error)
    }
}

fn token_error(e: jsonwebtoken::errors::Error) -> Error {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => unauthenticated("token has expired"),
        ErrorKind::ImmatureSignature => unauthenticated("token is not valid yet"),
        ErrorKind::InvalidSignature => unauthenticated("token signature is invalid"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            unauthenticated("token algorithm is not accepted")
        }
        ErrorKind::MissingRequiredClaim(_) => unauthenticated("token has no exp"),
        _ => unauthenticated("token is malformed"),
    }
}

fn claims_from_payload(mut payload: Map<String, Value>) -> Result<Claims, Error> {
    if let Some(iat) = payload.get("iat") {
        let iat = iat
            .as_u64()
            .ok_or_else(|| unauthenticated("token iat is not a timestamp"))?;
        if iat > jsonwebtoken::get_current_timestamp() + CLOCK_SKEW_SECS {
            return Err(unauthenticated("token was issued in the future"));
        }
    }
    let role = payload
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| unauthenticated("token has no role"))?;
    let role = DbRole::parse(role)
        .ok_or_else(|| unauthenticated("token role must be anon, authenticated or service_role"))?;
    let sub = match payload.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Uuid::try_parse(s).ok(),
        Some(_) => None,
    };
    if role == DbRole::Authenticated && sub.is_none() {
        return Err(unauthenticated("an authenticated token needs a UUID sub"));
    }
    // As PostgREST: the role Postgres runs as is the one the claims say.
    payload.insert("role".into(), Value::String(role.as_str().into()));
    let json =
        serde_json::to_string(&payload).map_err(|_| unauthenticated("token is malformed"))?;
    // Postgres's jsonb cannot hold U+0000; such claims could never be applied.
    if json.contains("\\u0000") {
        return Err(unauthenticated("token claims contain a NUL character"));
    }
    Ok(Claims {
        role,
        sub,
        json: json.into(),
    })
}

/// Mints an HS256 token the way Supabase does, for development and tests.
pub fn mint_token(
    secret: &str,
    role: DbRole,
    sub: Option<Uuid>,
    ttl_secs: u64,
    extra: Map<String, Value>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = extra;
    claims.insert("role".into(), role.as_str().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl_secs).into());
    claims.insert("iss".into(), "switchboard-dev".into());
    if let Some(sub) = sub {
        claims.insert("sub".into(), sub.to_string().into());
        claims.insert("aud".into(), "authenticated".into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

    use super::*;

    const SECRET: &str = "test-secret-with-at-least-32-characters!!";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(SECRET)
    }

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap_or_default()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn rejected(token: &str) -> String {
        match verifier().verify(token) {
            Ok(c) => format!("accepted as {:?}", c.role),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_minted_token_verifies() {
        let sub = Uuid::new_v4();
        let token = mint_token(SECRET, DbRole::Authenticated, Some(sub), 60, Map::new());
        let claims = token
            .map_err(|e| e.to_string())
            .and_then(|t| verifier().verify(&t).map_err(|e| e.to_string()));
        assert_eq!(
            claims.as_ref().map(|c| (c.role, c.sub)),
            Ok((DbRole::Authenticated, Some(sub)))
        );
    }

    #[test]
    fn expiry_has_thirty_seconds_of_skew() {
        let sub = Uuid::new_v4().to_string();
        let inside =
            sign(serde_json::json!({"role": "authenticated", "sub": sub, "exp": now() - 20}));
        assert!(verifier().verify(&inside).is_ok());
        let outside =
            sign(serde_json::json!({"role": "authenticated", "sub": sub, "exp": now() - 40}));
        assert_eq!(rejected(&outside), "token has expired");
    }

    #[test]
    fn bad_tokens_are_rejected() {
        let sub = Uuid::new_v4().to_string();
        assert_eq!(
            rejected(&sign(
                serde_json::json!({"role": "authenticated", "sub": sub})
            )),
            "token has no exp"
        );
        assert_eq!(
            rejected(&sign(
                serde_json::json!({"role": "postgres", "exp": now() + 60})
            )),
            "token role must be anon, authenticated or service_role"
        );
        assert_eq!(
            rejected(&sign(
                serde_json::json!({"role": "authenticated", "sub": "nobody", "exp": now() + 60})
            )),
            "an authenticated token needs a UUID sub"
        );
        assert_eq!(
            rejected(&sign(
                serde_json::json!({"role": "anon", "exp": now() + 60, "nbf": now() + 120})
            )),
            "token is not valid yet"
        );
        assert_eq!(
            rejected(&sign(
                serde_json::json!({"role": "anon", "exp": now() + 60, "iat": now() + 120})
            )),
            "token was issued in the future"
        );
        assert_eq!(rejected("not.a.token"), "token is malformed");
        assert_eq!(rejected(&"a".repeat(9000)), "token is too large");
    }

    #[test]
    fn forged_and_unsigned_tokens_are_rejected() {
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"role": "service_role", "exp": now() + 60}),
            &EncodingKey::from_secret(b"some-other-secret-of-at-least-32-chars"),
        )
        .unwrap_or_default();
        assert_eq!(rejected(&other), "token signature is invalid");

        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"role":"service_role","exp":{}}}"#, now() + 60));
        assert!(rejected(&format!("{header}.{body}.")).starts_with("token"));
        assert!(verifier().verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let v = verifier();
        let token = sign(serde_json::json!({"role": "anon", "exp": now() - 29}));
        assert!(v.verify(&token).is_ok(), "inside the skew");
        assert!(v.verify(&token).is_ok(), "remembered");
        assert_eq!(v.verified.entries.read().map(|e| e.len()).ok(), Some(1));
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(v.verify(&token).is_err(), "remembered, but now expired");
        // Clones share what they remember; failures are not remembered.
        let clone = v.clone();
        let _ = clone.verify("not.a.token");
        assert_eq!(v.verified.entries.read().map(|e| e.len()).ok(), Some(1));
    }

    #[test]
    fn the_header_must_be_bearer() {
        let v = verifier();
        assert_eq!(
            v.verify_header(None).map(|_| ()),
            Err(unauthenticated("missing authorization metadata"))
        );
        assert_eq!(
            v.verify_header(Some(b"Basic abc")).map(|_| ()),
            Err(unauthenticated("authorization must be 'Bearer <token>'"))
        );
    }
}
