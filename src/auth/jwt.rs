//! Verifies tokens as Supabase issues them: HS256 with the project's JWT
//! secret, and RS256/ES256 with the asymmetric keys of a JWKS, picked by
//! `kid`. PostgREST's rules: 30 s of clock skew on `exp`, `nbf` and `iat`;
//! `alg: none` and every other algorithm refused.
//!
//! The header's `alg` chooses the key, never the other way round: HS256 is
//! only ever checked against the secret, RS256/ES256 only against a JWKS key
//! of that same type. So a token "signed" with HS256 using a public key as
//! the secret (the classic algorithm confusion) meets the secret and fails.

use std::{collections::HashSet, sync::Arc};

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
        claims_from_payload(payload)
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

    /// A signing key made at test time, with its public JWK.
    struct TestKey {
        kid: String,
        alg: Algorithm,
        signing: EncodingKey,
        jwk: Value,
        public_pem: String,
    }

    impl TestKey {
        fn sign_as(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(&header, claims, &self.signing).unwrap_or_default()
        }

        fn sign(&self, claims: &Value) -> String {
            self.sign_as(self.alg, &self.kid, claims)
        }
    }

    fn test_key(kid: &str, alg: Algorithm, signing: EncodingKey, public_pem: String) -> TestKey {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, alg)
            .unwrap_or_else(|e| panic!("jwk: {e}"));
        jwk.common.key_id = Some(kid.to_owned());
        TestKey {
            kid: kid.to_owned(),
            alg,
            signing,
            jwk: serde_json::to_value(jwk).unwrap_or_default(),
            public_pem,
        }
    }

    fn rsa_key() -> &'static TestKey {
        static KEY: std::sync::OnceLock<TestKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::{EncodePublicKey, LineEnding};
            let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .unwrap_or_else(|e| panic!("rsa: {e}"));
            let der = private
                .to_pkcs1_der()
                .unwrap_or_else(|e| panic!("rsa der: {e}"));
            let pem = private
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap_or_default();
            test_key(
                "rsa-1",
                Algorithm::RS256,
                EncodingKey::from_rsa_der(der.as_bytes()),
                pem,
            )
        })
    }

    fn ec_key(kid: &str) -> TestKey {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let der = secret
            .to_pkcs8_der()
            .unwrap_or_else(|e| panic!("p256 der: {e}"));
        let pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default();
        test_key(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_bytes()),
            pem,
        )
    }

    fn with_keys(keys: &[&TestKey]) -> JwtVerifier {
        let jwks: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
        let document = serde_json::json!({ "keys": jwks }).to_string();
        let jwks = Jwks::from_document(document.as_bytes()).unwrap_or_else(|e| panic!("jwks: {e}"));
        verifier().with_jwks(jwks)
    }

    fn outcome(verifier: &JwtVerifier, token: &str) -> String {
        match verifier.verify(token) {
            Ok(c) => format!("accepted as {}", c.role.as_str()),
            Err(e) => e.to_string(),
        }
    }

    fn service_claims() -> Value {
        serde_json::json!({"role": "service_role", "exp": now() + 60, "iat": now()})
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_key_their_kid_names() {
        let ec = ec_key("ec-1");
        let v = with_keys(&[rsa_key(), &ec]);
        assert_eq!(
            outcome(&v, &rsa_key().sign(&service_claims())),
            "accepted as service_role"
        );
        assert_eq!(
            outcome(&v, &ec.sign(&service_claims())),
            "accepted as service_role"
        );
        let sub = Uuid::new_v4();
        let claims = v.verify(&ec.sign(&serde_json::json!({
            "role": "authenticated", "sub": sub.to_string(), "exp": now() + 60,
        })));
        assert_eq!(claims.map(|c| c.sub), Ok(Some(sub)));
        // HS256 keeps working beside the JWKS.
        assert_eq!(
            outcome(&v, &sign(service_claims())),
            "accepted as service_role"
        );
        // The same time rules as HS256.
        let expired = serde_json::json!({"role": "anon", "exp": now() - 40});
        assert_eq!(outcome(&v, &ec.sign(&expired)), "token has expired");
    }

    #[test]
    fn asymmetric_tokens_need_a_known_kid_of_the_right_type() {
        let ec = ec_key("ec-1");
        let stranger = ec_key("ec-1");
        let v = with_keys(&[rsa_key(), &ec]);
        let claims = service_claims();
        assert_eq!(
            outcome(&v, &ec.sign_as(Algorithm::ES256, "ec-2", &claims)),
            "token key id (kid) matches no known key"
        );
        // Same kid, another private key.
        assert_eq!(
            outcome(&v, &stranger.sign(&claims)),
            "token signature is invalid"
        );
        // An RS256 token naming the EC key, and the other way round.
        assert_eq!(
            outcome(&v, &rsa_key().sign_as(Algorithm::RS256, "ec-1", &claims)),
            "token algorithm does not match its key"
        );
        assert_eq!(
            outcome(&v, &ec.sign_as(Algorithm::ES256, "rsa-1", &claims)),
            "token algorithm does not match its key"
        );
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &ec.signing)
            .unwrap_or_default();
        assert_eq!(outcome(&v, &no_kid), "token has no key id (kid)");
        // Without a JWKS, asymmetric algorithms are refused outright.
        assert_eq!(
            outcome(&verifier(), &ec.sign(&claims)),
            "token algorithm is not accepted"
        );
        // Algorithms we do not accept, even with a key that could verify them.
        assert_eq!(
            outcome(&v, &rsa_key().sign_as(Algorithm::RS512, "rsa-1", &claims)),
            "token algorithm is not accepted"
        );
        assert_eq!(
            outcome(&v, &rsa_key().sign_as(Algorithm::PS256, "rsa-1", &claims)),
            "token algorithm is not accepted"
        );
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap_or_default();
        assert_eq!(outcome(&v, &hs384), "token algorithm is not accepted");
    }

    #[test]
    fn hs256_signed_with_a_public_key_is_rejected() {
        let ec = ec_key("ec-1");
        let v = with_keys(&[rsa_key(), &ec]);
        let claims = service_claims();
        let n = rsa_key().jwk["n"].as_str().unwrap_or_default().to_owned();
        for (kid, secret) in [
            ("rsa-1", rsa_key().public_pem.as_bytes()),
            ("rsa-1", n.as_bytes()),
            ("ec-1", ec.public_pem.as_bytes()),
        ] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.into());
            let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
                .unwrap_or_default();
            assert_eq!(outcome(&v, &forged), "token signature is invalid", "{kid}");
        }
    }

    #[test]
    fn alg_none_is_never_accepted_in_any_spelling() {
        let v = with_keys(&[rsa_key()]);
        let body = URL_SAFE_NO_PAD.encode(service_claims().to_string());
        for alg in ["none", "None", "NONE", "nOnE", ""] {
            let header = URL_SAFE_NO_PAD
                .encode(serde_json::json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"}).to_string());
            for signature in ["", "AAAA"] {
                let token = format!("{header}.{body}.{signature}");
                assert!(v.verify(&token).is_err(), "{alg:?} {signature:?}");
            }
        }
    }
}
