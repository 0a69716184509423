//! Tenant context: the Supabase JWT in `authorization` metadata becomes a
//! verified [`Claims`] value in the request's extensions.
//!
//! Invariant: this module is the only reader of the `authorization` header.
//! Handlers see `Claims` and nothing else of the token.

mod claims;
mod jwks;
mod jwt;
mod layer;

pub use claims::{Claims, DbRole};
pub use jwks::{Jwks, JwksError, JwksSettings, JwksSource, KeySet, KeySetProblem, VerifyingKey};
pub use jwt::{mint_token, JwtVerifier, MIN_SECRET_LEN};
pub use layer::{claims_of, AuthLayer};
