//! Asymmetric signing keys from a JWKS (Supabase publishes one at
//! `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`), or from a
//! local file, picked by a token's `kid`.
//!
//! The request path reads the current key set with one `ArcSwap` load: no
//! lock, no await, no I/O. A background task replaces the whole set: on an
//! interval, and soon after a token names a `kid` we do not know (at most once
//! per `min_refresh`, so a flood of made-up kids costs one fetch per period),
//! which is how a rotated key reaches us before the interval ends. A failed
//! refresh keeps the last good set and logs.

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::{ArcSwap, Guard};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey,
};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

/// Supabase's document holds a handful of keys; anything near this is not a JWKS.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Keys past this many in one document are ignored.
const MAX_KEYS: usize = 64;
/// Shorter RSA moduli are refused: they can be factored.
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// `SUPABASE_JWKS_URL`: fetched over HTTP(S).
    Url(String),
    /// `SUPABASE_JWKS_FILE`: a JSON file, re-read on the same schedule (a
    /// mounted secret or config map can change under us).
    File(PathBuf),
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(url) => write!(f, "SUPABASE_JWKS_URL {}", without_secrets(url)),
            JwksSource::File(path) => write!(f, "SUPABASE_JWKS_FILE {}", path.display()),
        }
    }
}

/// The URL for logs and errors: credentials and query (an API key, say) left out.
fn without_secrets(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksSettings {
    pub source: JwksSource,
    /// Reload this often even when nothing asks for it.
    pub refresh: Duration,
    /// A token with an unknown `kid` triggers a reload, at most this often.
    pub min_refresh: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{from}: cannot load: {reason}")]
    Load { from: JwksSource, reason: String },
    #[error("{from}: larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { from: JwksSource },
    #[error("{from}: {problem}")]
    Invalid {
        from: JwksSource,
        problem: KeySetProblem,
    },
}

/// Why a document is not a usable key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetProblem {
    #[error("not a JWKS document (a JSON object with \"keys\")")]
    NotJwks,
    #[error(
        "none of its {0} keys is usable (RS256 of 2048+ bits, or ES256 on P-256, each with a kid)"
    )]
    NoUsableKey(usize),
}

/// A public key and the one algorithm it may verify.
pub struct VerifyingKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The keys of one JWKS document, by `kid`.
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
    /// Unique per parsed set: a verification remembered under one set is not
    /// trusted under the next (a key may have been withdrawn).
    generation: u64,
}

impl KeySet {
    /// Parses a JWKS document. Keys we cannot or will not use (symmetric,
    /// encryption-only, other curves or algorithms, no `kid`, short RSA) are
    /// skipped; a document that has keys but none usable is an error, so a
    /// broken publication never replaces good keys. An empty `keys` list is
    /// taken as it is: that is how every asymmetric key is revoked.
    pub fn parse(document: &[u8]) -> Result<KeySet, KeySetProblem> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|_| KeySetProblem::NotJwks)?;
        let listed = document.keys.len();
        let keys: HashMap<String, VerifyingKey> = document
            .keys
            .into_iter()
            .take(MAX_KEYS)
            .filter_map(usable_key)
            .collect();
        if keys.is_empty() && listed > 0 {
            return Err(KeySetProblem::NoUsableKey(listed));
        }
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        Ok(KeySet {
            keys,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

fn usable_key(raw: serde_json::Value) -> Option<(String, VerifyingKey)> {
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    let kid = jwk.common.key_id.clone().filter(|kid| !kid.is_empty())?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(rsa), None | Some(KeyAlgorithm::RS256)) => {
            let modulus = URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('=')).ok()?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return None;
            }
            Algorithm::RS256
        }
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some((kid, VerifyingKey { alg, key }))
}

/// The live key set, shared by every clone of the verifier and the task that
/// refreshes it.
#[derive(Clone)]
pub struct Jwks {
    /// Replaced whole by the refresher; read per request without a lock.
    keys: Arc<ArcSwap<KeySet>>,
    /// Set when a token names an unknown `kid`. `Notify` keeps one permit, so
    /// any number of such tokens between two fetches ask for one fetch.
    wanted: Arc<Notify>,
    /// `None` for a fixed set.
    loader: Option<Arc<Loader>>,
}

impl Jwks {
    /// Loads the keys once; start-up fails if this does (a wrong URL or file
    /// is a deployment error, better seen before the first call than after).
    pub async fn load(settings: JwksSettings) -> Result<Jwks, JwksError> {
        let loader = Loader::new(settings)?;
        let keys = loader.fetch().await?;
        tracing::info!(source = %loader.settings.source, kids = ?keys.kids(), "JWKS loaded");
        Ok(Jwks {
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            wanted: Arc::new(Notify::new()),
            loader: Some(Arc::new(loader)),
        })
    }

    /// A fixed key set with no source and no refresh: tests and tools.
    pub fn from_document(document: &[u8]) -> Result<Jwks, KeySetProblem> {
        Ok(Jwks {
            keys: Arc::new(ArcSwap::from_pointee(KeySet::parse(document)?)),
            wanted: Arc::new(Notify::new()),
            loader: None,
        })
    }

    /// The current keys. Hold the guard only for one verification.
    pub fn current(&self) -> Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Asks the refresher for a reload soon; never waits.
    pub fn request_refresh(&self) {
        self.wanted.notify_one();
    }

    /// Starts the refresher; `None` for a fixed set. Abort the handle to stop it.
    pub fn spawn_refresher(&self) -> Option<JoinHandle<()>> {
        let loader = self.loader.clone()?;
        let jwks = self.clone();
        Some(tokio::spawn(async move {
            let settings = &loader.settings;
            let mut last_fetch = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(settings.refresh) => {}
                    _ = jwks.wanted.notified() => {
                        tokio::time::sleep_until(last_fetch + settings.min_refresh).await;
                    }
                }
                last_fetch = Instant::now();
                match loader.fetch().await {
                    Ok(keys) => {
                        if keys.kids() != jwks.current().kids() {
                            tracing::info!(source = %settings.source, kids = ?keys.kids(), "JWKS changed");
                        }
                        jwks.keys.store(Arc::new(keys));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "JWKS refresh failed; keeping the last good keys");
                    }
                }
            }
        }))
    }
}

/// Reads one JWKS document from its source.
struct Loader {
    settings: JwksSettings,
    /// For a URL source; reused so refreshes keep a warm connection pool.
    client: Option<reqwest::Client>,
}

impl Loader {
    fn new(settings: JwksSettings) -> Result<Loader, JwksError> {
        let client = match &settings.source {
            JwksSource::File(_) => None,
            JwksSource::Url(_) => Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| JwksError::Load {
                        from: settings.source.clone(),
                        reason: e.to_string(),
                    })?,
            ),
        };
        Ok(Loader { settings, client })
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let source = &self.settings.source;
        let load_error = |reason: String| JwksError::Load {
            from: source.clone(),
            reason,
        };
        let document = match (source, &self.client) {
            (JwksSource::Url(url), Some(client)) => fetch_url(client, url, source).await?,
            (JwksSource::Url(_), None) => return Err(load_error("no HTTP client".into())),
            (JwksSource::File(path), _) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .map_err(|e| load_error(e.to_string()))?
                    .map_err(|e| match e {
                        ReadError::TooLarge => JwksError::TooLarge {
                            from: source.clone(),
                        },
                        ReadError::Io(e) => load_error(e.to_string()),
                    })?
            }
        };
        KeySet::parse(&document).map_err(|problem| JwksError::Invalid {
            from: source.clone(),
            problem,
        })
    }
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
    source: &JwksSource,
) -> Result<Vec<u8>, JwksError> {
    let load_error = |reason: String| JwksError::Load {
        from: source.clone(),
        reason,
    };
    let mut response = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| load_error(with_causes(&e)))?;
    if !response.status().is_success() {
        return Err(load_error(format!("HTTP {}", response.status())));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(JwksError::TooLarge {
            from: source.clone(),
        });
    }
    let mut document = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| load_error(with_causes(&e)))?
    {
        if document.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(JwksError::TooLarge {
                from: source.clone(),
            });
        }
        document.extend_from_slice(&chunk);
    }
    Ok(document)
}

/// reqwest's message names the URL; the reason (refused, timed out, TLS) is
/// in its sources.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut document = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut document)
        .map_err(ReadError::Io)?;
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_jwk(kid: &str, modulus_bytes: usize, alg: Option<&str>) -> serde_json::Value {
        let mut n = vec![0xc5u8; modulus_bytes];
        n[modulus_bytes - 1] |= 1;
        let mut jwk = serde_json::json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB",
        });
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        jwk
    }

    fn ec_jwk(kid: &str, crv: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "kid": kid, "crv": crv, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32]),
        })
    }

    fn parse(keys: Vec<serde_json::Value>) -> Result<Vec<(String, Algorithm)>, KeySetProblem> {
        let document = serde_json::json!({ "keys": keys }).to_string();
        let set = KeySet::parse(document.as_bytes())?;
        let mut found: Vec<(String, Algorithm)> = set
            .keys
            .iter()
            .map(|(kid, key)| (kid.clone(), key.alg))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    #[test]
    fn usable_keys_are_kept_by_kid_and_the_rest_skipped() {
        let found = parse(vec![
            rsa_jwk("rsa", 256, Some("RS256")),
            rsa_jwk("rsa-no-alg", 256, None),
            rsa_jwk("rsa-short", 128, Some("RS256")),
            rsa_jwk("rsa-512", 256, Some("RS512")),
            ec_jwk("ec", "P-256"),
            ec_jwk("ec-384", "P-384"),
            serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "made-up", "kid": "x"}),
            serde_json::json!("not even an object"),
        ]);
        assert_eq!(
            found,
            Ok(vec![
                ("ec".to_owned(), Algorithm::ES256),
                ("rsa".to_owned(), Algorithm::RS256),
                ("rsa-no-alg".to_owned(), Algorithm::RS256),
            ])
        );
    }

    #[test]
    fn a_document_of_only_unusable_keys_is_an_error_but_empty_is_not() {
        assert_eq!(
            parse(vec![
                serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})
            ]),
            Err(KeySetProblem::NoUsableKey(1))
        );
        assert_eq!(parse(vec![]), Ok(vec![]));
        for garbage in [&b"[]"[..], b"{}", b"{\"keys\": 3}", b"\xff", b""] {
            assert_eq!(
                KeySet::parse(garbage).map(|s| s.len()),
                Err(KeySetProblem::NotJwks)
            );
        }
    }

    #[test]
    fn a_url_in_a_message_shows_no_credentials() {
        let source =
            JwksSource::Url("https://svc:hunter2@auth.example.com/jwks.json?apikey=k1".into());
        assert_eq!(
            source.to_string(),
            "SUPABASE_JWKS_URL https://auth.example.com/jwks.json"
        );
    }

    #[test]
    fn at_most_max_keys_are_read() {
        let keys = (0..MAX_KEYS + 10)
            .map(|i| ec_jwk(&format!("k{i}"), "P-256"))
            .collect();
        assert_eq!(parse(keys).map(|k| k.len()), Ok(MAX_KEYS));
    }
}
