//! Request parsing helpers shared by the services, and the answer's org
//! for the request log.

use tonic::Response;

use super::LoggedOrg;
use crate::{
    auth::Claims,
    domain::{OrgId, PhoneNumber},
    error::Error,
};

/// Prefixes a parse error with the request field it came from, so a client
/// with two phone fields knows which one was wrong.
pub(crate) fn in_field(field: &'static str) -> impl Fn(Error) -> Error {
    move |error| match error {
        Error::InvalidArgument(message) => Error::InvalidArgument(format!("{field}: {message}")),
        other => other,
    }
}

/// The numbers of a ringing call (ResolveAgent, StartCall): the dialed
/// one, and the caller's when sent.
pub(crate) fn ringing_numbers(
    called: &str,
    caller: &str,
) -> Result<(PhoneNumber, Option<PhoneNumber>), Error> {
    let called = PhoneNumber::parse(called).map_err(in_field("called_number"))?;
    let caller = if caller.trim().is_empty() {
        None
    } else {
        Some(PhoneNumber::parse(caller).map_err(in_field("caller_number"))?)
    };
    Ok((called, caller))
}

/// A tenant's writes go to its own org (RLS refuses any other, so naming
/// another is PERMISSION_DENIED); a service_role caller must say which org.
pub(crate) fn target_org(claims: &Claims, org_id: &str) -> Result<Option<OrgId>, Error> {
    if org_id.trim().is_empty() {
        if claims.is_service_role() {
            return Err(Error::invalid(
                "org_id is required for service_role callers",
            ));
        }
        return Ok(None);
    }
    OrgId::parse(org_id).map(Some)
}

/// A response that names the org it concerns, for the request log.
pub(crate) fn with_org<T>(message: T, org: OrgId) -> Response<T> {
    let mut response = Response::new(message);
    response.extensions_mut().insert(LoggedOrg(org));
    response
}
