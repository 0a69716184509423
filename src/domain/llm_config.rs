//! An agent's LLM configuration: a JSON object, bounded in size and depth so a
//! client cannot make us store or decode something pathological.

use prost_types::{value::Kind, ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

use crate::error::Error;

/// Bounds on what `llm_config` may hold. Named in the error a client gets.
pub(crate) const MAX_DEPTH: usize = 16;
pub(crate) const MAX_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig(Map<String, Json>);

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig(Map::new())
    }
}

impl LlmConfig {
    /// From the wire. `None` (field unset) is the empty object.
    pub fn from_struct(config: Option<Struct>) -> Result<Self, Error> {
        let Some(config) = config else {
            return Ok(LlmConfig::default());
        };
        let object = struct_to_json(config, 1)?;
        let size = serde_json::to_vec(&object)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_BYTES {
            return Err(Error::invalid(format!(
                "llm_config is {size} bytes as JSON; the limit is {MAX_BYTES}"
            )));
        }
        Ok(LlmConfig(object))
    }

    /// From the database, which only ever holds objects (a check constraint).
    pub(crate) fn from_json(value: Json) -> Self {
        match value {
            Json::Object(map) => LlmConfig(map),
            _ => LlmConfig::default(),
        }
    }

    pub fn as_json(&self) -> Json {
        Json::Object(self.0.clone())
    }

    pub fn to_struct(&self) -> Struct {
        Struct {
            fields: self
                .0
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }
    }
}

fn depth_error() -> Error {
    Error::invalid(format!(
        "llm_config is nested deeper than {MAX_DEPTH} levels"
    ))
}

fn struct_to_json(config: Struct, depth: usize) -> Result<Map<String, Json>, Error> {
    if depth > MAX_DEPTH {
        return Err(depth_error());
    }
    config
        .fields
        .into_iter()
        .map(|(k, v)| Ok((without_nul(k)?, value_to_json(v, depth)?)))
        .collect()
}

/// Postgres's jsonb cannot hold U+0000: refuse it as bad input rather than
/// fail in the database.
fn without_nul(text: String) -> Result<String, Error> {
    if text.contains('\0') {
        Err(Error::invalid(
            "llm_config must not contain a NUL character",
        ))
    } else {
        Ok(text)
    }
}

fn value_to_json(value: Value, depth: usize) -> Result<Json, Error> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => Json::Number(
            Number::from_f64(n)
                .ok_or_else(|| Error::invalid("llm_config holds a number that is not finite"))?,
        ),
        Some(Kind::StringValue(s)) => Json::String(without_nul(s)?),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s, depth + 1)?),
        Some(Kind::ListValue(list)) => {
            if depth + 1 > MAX_DEPTH {
                return Err(depth_error());
            }
            Json::Array(
                list.values
                    .into_iter()
                    .map(|v| value_to_json(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

/// JSON as a `google.protobuf.Value` (numbers become doubles, as JSON's are).
pub fn json_to_value(value: &Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Struct {
        let mut s = Struct::default();
        for _ in 1..levels {
            let mut outer = Struct::default();
            outer.fields.insert(
                "k".into(),
                Value {
                    kind: Some(Kind::StructValue(s)),
                },
            );
            s = outer;
        }
        s
    }

    #[test]
    fn round_trips_through_json() {
        let json = serde_json::json!({"model": "gpt-4o", "temperature": 0.5, "tools": ["a", {"b": null}], "on": true});
        let config = LlmConfig::from_json(json.clone());
        let back = LlmConfig::from_struct(Some(config.to_struct()));
        assert_eq!(back.map(|c| c.as_json()), Ok(json));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        assert!(LlmConfig::from_struct(Some(nested(MAX_DEPTH))).is_ok());
        assert_eq!(
            LlmConfig::from_struct(Some(nested(MAX_DEPTH + 1))),
            Err(depth_error())
        );
        let mut big = Struct::default();
        big.fields.insert(
            "prompt".into(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(MAX_BYTES))),
            },
        );
        let err = LlmConfig::from_struct(Some(big)).map(|_| ());
        assert!(matches!(err, Err(Error::InvalidArgument(m)) if m.contains("the limit is 65536")));
    }

    #[test]
    fn nul_characters_are_rejected_in_keys_and_strings() {
        for (key, text) in [("a\0", "ok"), ("ok", "a\0b")] {
            let mut s = Struct::default();
            s.fields.insert(
                key.into(),
                Value {
                    kind: Some(Kind::StringValue(text.into())),
                },
            );
            assert_eq!(
                LlmConfig::from_struct(Some(s)),
                Err(Error::invalid(
                    "llm_config must not contain a NUL character"
                ))
            );
        }
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        let mut s = Struct::default();
        s.fields.insert(
            "t".into(),
            Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        );
        assert!(LlmConfig::from_struct(Some(s)).is_err());
    }
}
