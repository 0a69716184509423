//! Parsed domain types: once a value of these types exists, it is valid
//! ("parse, don't validate"). Nothing here knows gRPC, SQL or Redis.

pub mod call;
mod history;
pub mod hours;
mod ids;
mod llm_config;
pub mod model;
mod page;
mod phone;
pub mod routing;

pub use call::{
    CallCursor, CallFact, CallFilter, CallId, CallLimits, CallLookup, CallRecord, CallStatus,
    Decision, DisconnectReason, EndStatus, Fact, Outcome, Reason, TransferTarget,
};
pub use history::{field_changes, AgentChange, ChangeOperation, FieldChange};
pub use hours::{BusinessHours, TZDB_VERSION};
pub use ids::{AgentId, CustomerId, OrgId};
pub use llm_config::{json_to_value, LlmConfig};
pub use model::{
    Agent, AgentField, AgentPatch, Customer, CustomerUpsert, NewAgent, Organization, PlanTier,
    Resolution,
};
pub use page::{Page, PageRequest, Seq};
pub use phone::PhoneNumber;
pub use routing::{
    AfterHours, AgentRouting, AgentVersion, CallerAction, CallerMatch, CallerRule, NewCallerRule,
    RouteExtras, VersionServing,
};
