//! Parsed domain types: once a value of these types exists, it is valid
//! ("parse, don't validate"). Nothing here knows gRPC, SQL or Redis.

mod ids;
mod llm_config;
pub mod model;
mod page;
mod phone;

pub use ids::{AgentId, CustomerId, OrgId};
pub use llm_config::LlmConfig;
pub use model::{
    Agent, AgentField, AgentPatch, Customer, CustomerUpsert, NewAgent, Organization, PlanTier,
    Resolution,
};
pub use page::{Page, PageRequest};
pub use phone::PhoneNumber;
