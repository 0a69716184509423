//! Asymmetric signing keys made at test time, their public JWKs, and tokens
//! signed with them. Used by `tests/api/auth.rs`, `tests/fuzz.rs` and
//! `benches/resolve.rs`.

use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::Value;

pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub signing: EncodingKey,
    /// The public JWK, with `kid`, as a JWKS lists it.
    pub jwk: Value,
    pub public_pem: String,
}

impl TestKey {
    /// Signs with this key, whatever `alg` and `kid` the header should say.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap_or_default()
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }
}

fn test_key(kid: &str, alg: Algorithm, signing: EncodingKey, public_pem: String) -> TestKey {
    let mut jwk =
        Jwk::from_encoding_key(&signing, alg).unwrap_or_else(|e| panic!("jwk of {kid}: {e}"));
    jwk.common.key_id = Some(kid.to_owned());
    TestKey {
        kid: kid.to_owned(),
        alg,
        signing,
        jwk: serde_json::to_value(jwk).unwrap_or_default(),
        public_pem,
    }
}

/// A fresh 2048-bit RSA key (RS256).
pub fn rsa_key(kid: &str) -> TestKey {
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
        kid,
        Algorithm::RS256,
        EncodingKey::from_rsa_der(der.as_bytes()),
        pem,
    )
}

/// A fresh P-256 key (ES256), as Supabase issues by default.
pub fn ec_key(kid: &str) -> TestKey {
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

/// A JWKS document listing these keys.
pub fn jwks_document(keys: &[&TestKey]) -> String {
    let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
    serde_json::json!({ "keys": keys }).to_string()
}
