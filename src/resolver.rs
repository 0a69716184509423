//! `ResolveAgent`: the call path. Turns "this number was dialed" into the
//! answer the media server needs, or the reason there is none.

use crate::{
    auth::Claims,
    domain::{PhoneNumber, Resolution},
    error::Error,
    store::PgStore,
};

#[derive(Clone)]
pub struct Resolver {
    store: PgStore,
}

impl Resolver {
    pub fn new(store: PgStore) -> Self {
        Resolver { store }
    }

    pub async fn resolve(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Resolution, Error> {
        let resolution = self
            .store
            .resolve_agent(claims, called, caller)
            .await?
            .ok_or_else(|| Error::NotFound("no agent answers this number".into()))?;
        if !resolution.agent.is_active {
            return Err(Error::FailedPrecondition(
                "the agent for this number is inactive".into(),
            ));
        }
        Ok(resolution)
    }
}
