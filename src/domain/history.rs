//! An agent's audit trail, as recorded by the database trigger on
//! `public.agents` (migration 0004): who changed what, when.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use uuid::Uuid;

use super::{page::Seq, AgentId, OrgId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOperation {
    Insert,
    Update,
    Delete,
}

impl ChangeOperation {
    /// From `agent_history.operation` (a check constraint allows only these).
    pub(crate) fn from_db(value: &str) -> Option<Self> {
        match value {
            "insert" => Some(ChangeOperation::Insert),
            "update" => Some(ChangeOperation::Update),
            "delete" => Some(ChangeOperation::Delete),
            _ => None,
        }
    }
}

/// One field's values before and after. `old` is `None` on insert and `new`
/// on delete (there was no row); `Some(Json::Null)` is a real null.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange {
    pub(crate) field: String,
    pub(crate) old: Option<Json>,
    pub(crate) new: Option<Json>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AgentChange {
    /// Increases with every recorded change: newest first is highest first.
    pub(crate) seq: Seq,
    pub(crate) agent_id: AgentId,
    pub(crate) org_id: OrgId,
    pub(crate) changed_at: DateTime<Utc>,
    /// The token's `sub`; `None` for service_role tokens and changes made
    /// without claims (plain SQL, migrations).
    pub(crate) changed_by: Option<Uuid>,
    /// The token's role, or the SQL role for a change made without claims.
    pub(crate) actor_role: String,
    /// The SQL role the session acted as (claims do not change it); `None`
    /// for changes recorded before the column existed.
    pub(crate) actor_sql_role: Option<String>,
    pub(crate) operation: ChangeOperation,
    /// Sorted by field name.
    pub(crate) fields: Vec<FieldChange>,
}

/// `agent_history.changes` ({"field": {"old": …, "new": …}}) as a list.
/// Anything else in the column (it is an object by constraint) yields no
/// fields rather than an error: the trail is still worth showing.
pub fn field_changes(operation: ChangeOperation, changes: Json) -> Vec<FieldChange> {
    let Json::Object(changes) = changes else {
        return Vec::new();
    };
    let mut fields: Vec<FieldChange> = changes
        .into_iter()
        .map(|(field, change)| {
            let (old, new) = match change {
                Json::Object(mut values) => (
                    values.remove("old").unwrap_or(Json::Null),
                    values.remove("new").unwrap_or(Json::Null),
                ),
                _ => (Json::Null, Json::Null),
            };
            FieldChange {
                field,
                old: (operation != ChangeOperation::Insert).then_some(old),
                new: (operation != ChangeOperation::Delete).then_some(new),
            }
        })
        .collect();
    fields.sort_by(|a, b| a.field.cmp(&b.field));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_become_sorted_fields_with_absent_sides() {
        let changes = json!({
            "voice_id": {"old": "alloy", "new": "nova"},
            "is_active": {"old": true, "new": null},
        });
        assert_eq!(
            field_changes(ChangeOperation::Update, changes.clone()),
            vec![
                FieldChange {
                    field: "is_active".into(),
                    old: Some(json!(true)),
                    new: Some(Json::Null),
                },
                FieldChange {
                    field: "voice_id".into(),
                    old: Some(json!("alloy")),
                    new: Some(json!("nova")),
                },
            ]
        );
        let inserted = field_changes(ChangeOperation::Insert, changes.clone());
        assert!(inserted.iter().all(|f| f.old.is_none() && f.new.is_some()));
        let deleted = field_changes(ChangeOperation::Delete, changes);
        assert!(deleted.iter().all(|f| f.old.is_some() && f.new.is_none()));
        assert!(field_changes(ChangeOperation::Update, json!([1, 2])).is_empty());
    }
}
