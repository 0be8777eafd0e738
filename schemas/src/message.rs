//! What every message shares: the `"v": 1` version, RFC 3339 timestamps, and decoding that
//! tells an unknown version or kind apart from a malformed body, naming the field at fault.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// The wire version this build reads and writes.
pub const VERSION: u64 = 1;

/// The `"v"` field: always [`VERSION`] once decoded.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct V1;

impl fmt::Debug for V1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{VERSION}")
    }
}

impl Serialize for V1 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(VERSION)
    }
}

impl<'de> Deserialize<'de> for V1 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            VERSION => Ok(V1),
            other => Err(serde::de::Error::custom(format!(
                "unsupported message version {other}; this build reads version {VERSION}"
            ))),
        }
    }
}

impl JsonSchema for V1 {
    fn schema_name() -> Cow<'static, str> {
        "Version".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "description": "The wire version.", "const": VERSION })
    }
}

/// A point in time, written as RFC 3339 in UTC with milliseconds (`2026-11-27T06:30:01.250Z`):
/// one fixed width, so the text sorts as the time does. Any RFC 3339 time is read.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc())
    }

    fn text(&self) -> String {
        let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
        self.0.to_offset(UtcOffset::UTC).format(&format).unwrap_or_else(|_| self.0.to_string())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not an RFC 3339 time ({e})")))
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("message has no `v` field; every pvefleet message carries `\"v\": {VERSION}`")]
    NoVersion,
    #[error("unsupported message version {found}; this build reads version {VERSION}")]
    Version { found: serde_json::Value },
    #[error("unknown {field} `{found}`; this build knows {known}")]
    Kind { field: &'static str, found: String, known: String },
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

/// The fields read before the body, so a newer or foreign message gets a precise error.
#[derive(Deserialize)]
struct Envelope {
    v: Option<serde_json::Value>,
    #[serde(alias = "type")]
    kind: Option<serde_json::Value>,
}

/// Decodes `bytes` as a `T`, after checking the version and that `kind_field` is one of `known`.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    kind_field: &'static str,
    known: &'static [&'static str],
) -> Result<T, DecodeError> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(DecodeError::NotJson)?;
    match envelope.v {
        None => return Err(DecodeError::NoVersion),
        Some(v) if v.as_u64() != Some(VERSION) => return Err(DecodeError::Version { found: v }),
        Some(_) => {}
    }
    let kind = envelope.kind.unwrap_or(serde_json::Value::Null);
    if !kind.as_str().is_some_and(|k| known.contains(&k)) {
        return Err(DecodeError::Kind {
            field: kind_field,
            found: kind.as_str().map_or_else(|| kind.to_string(), str::to_owned),
            known: known.join(", "),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let (field, message) = crate::validate::field_of(&e.path().to_string(), &e.inner().to_string());
        DecodeError::Field { field, message }
    })
}
