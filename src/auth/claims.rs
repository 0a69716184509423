use std::sync::Arc;

use uuid::Uuid;

/// The database role a request runs as, taken from the token's `role` claim.
/// Only these three exist: a token naming any other role (`postgres`,
/// `supabase_admin`, …) is rejected at verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbRole {
    Anon,
    Authenticated,
    /// Platform-wide; bypasses RLS. Held by the platform's own services.
    ServiceRole,
}

impl DbRole {
    pub fn parse(role: &str) -> Option<Self> {
        match role {
            "anon" => Some(DbRole::Anon),
            "authenticated" => Some(DbRole::Authenticated),
            "service_role" => Some(DbRole::ServiceRole),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            DbRole::Anon => "anon",
            DbRole::Authenticated => "authenticated",
            DbRole::ServiceRole => "service_role",
        }
    }
}

/// A verified token. Cheap to clone: the JSON is shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub role: DbRole,
    /// `sub`: the user's id (`auth.users.id`); present for `authenticated`.
    pub sub: Option<Uuid>,
    /// All claims as JSON, exactly what Postgres gets as
    /// `request.jwt.claims`. Org or org-role claims in here are ignored by the
    /// policies: membership comes from `profiles`.
    pub json: Arc<str>,
}

impl Claims {
    /// The service's own identity for work no caller asked for (warming the
    /// cache at start): `service_role`, as the media servers are.
    pub fn service() -> Claims {
        Claims {
            role: DbRole::ServiceRole,
            sub: None,
            json: Arc::from(r#"{"role":"service_role"}"#),
        }
    }

    pub fn is_service_role(&self) -> bool {
        self.role == DbRole::ServiceRole
    }
}
