//! Typed identifiers, so an organization id is never passed where an agent id
//! is meant.

use std::fmt;

use uuid::Uuid;

use crate::error::Error;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn parse(input: &str) -> Result<Self, Error> {
                let input = input.trim();
                if input.is_empty() {
                    return Err(Error::invalid(concat!($what, " is required")));
                }
                Uuid::try_parse(input)
                    .map($name)
                    .map_err(|_| Error::invalid(concat!($what, " is not a valid UUID")))
            }

            pub const fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(OrgId, "org_id");
id_type!(AgentId, "id");
id_type!(CustomerId, "id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_reject() {
        let id = "6f1c3bde-8a4b-4e57-9a55-2a1f7d8c9e01";
        assert_eq!(AgentId::parse(id).map(|a| a.to_string()), Ok(id.to_owned()));
        assert_eq!(
            AgentId::parse("not-a-uuid"),
            Err(Error::invalid("id is not a valid UUID"))
        );
        assert_eq!(OrgId::parse(""), Err(Error::invalid("org_id is required")));
    }
}
