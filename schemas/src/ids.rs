//! Typed ids: `JobId`, `NodeName` and `Vmid`, each checked when it is made or decoded.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

use crate::validate::FieldError;

/// A job's id: a ULID, so ids sort by submission time and can be made without coordination.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(Ulid);

impl JobId {
    /// A fresh id for a job submitted now.
    pub fn new() -> Self {
        Self(Ulid::new())
    }

    /// An id from its parts (tests and tools that need a known id).
    pub fn from_parts(timestamp_ms: u64, random: u128) -> Self {
        Self(Ulid::from_parts(timestamp_ms, random))
    }

    /// The lowercase tag-safe form used in the container's ownership marker.
    ///
    /// It is the ULID's 16 random characters: the same for every attempt of one job, unique
    /// across jobs for any practical fleet (80 bits), and short enough for a PVE tag.
    pub fn short(&self) -> String {
        self.0.to_string()[10..].to_ascii_lowercase()
    }

    /// The PVE tag that marks a container as created by this job.
    pub fn marker_tag(&self) -> String {
        format!("{}{}", crate::MARKER_TAG_PREFIX, self.short())
    }

    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl FromStr for JobId {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s).map(Self).map_err(|e| FieldError::new("job_id", format!("`{s}` is not a ULID ({e})")))
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for JobId {
    fn schema_name() -> Cow<'static, str> {
        "JobId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A ULID (26 Crockford base-32 characters), sortable by submission time.",
            "type": "string",
            "pattern": "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
        })
    }
}

/// A Proxmox node's name, which is also a NATS subject token: `[A-Za-z0-9_-]+`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// PVE node names are hostnames; 63 is the DNS label limit.
    pub const MAX_LEN: usize = 63;

    pub fn new(name: impl Into<String>) -> Result<Self, FieldError> {
        let name = name.into();
        if name.is_empty() {
            return Err(FieldError::new("node", "must not be empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(FieldError::new("node", format!("`{name}` is longer than {} characters", Self::MAX_LEN)));
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(FieldError::new(
                "node",
                format!(
                    "`{name}` contains {bad:?}; a node name is a NATS subject token and may hold only A-Z, a-z, 0-9, `-` and `_`"
                ),
            ));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeName({})", self.0)
    }
}

impl FromStr for NodeName {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for NodeName {
    fn schema_name() -> Cow<'static, str> {
        "NodeName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Proxmox node name; also a NATS subject token.",
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,63}$"
        })
    }
}

/// A PVE guest id. PVE allows 100..=999999999.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Vmid(u32);

impl Vmid {
    pub const MIN: u32 = 100;
    pub const MAX: u32 = 999_999_999;

    pub fn new(id: u32) -> Result<Self, FieldError> {
        if (Self::MIN..=Self::MAX).contains(&id) {
            Ok(Self(id))
        } else {
            Err(FieldError::new("vmid", format!("{id} is outside {}..={}", Self::MIN, Self::MAX)))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vmid({})", self.0)
    }
}

impl FromStr for Vmid {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = s.trim().parse::<u32>().map_err(|_| FieldError::new("vmid", format!("`{s}` is not a number")))?;
        Self::new(id)
    }
}

impl<'de> Deserialize<'de> for Vmid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Vmid {
    fn schema_name() -> Cow<'static, str> {
        "Vmid".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A PVE guest id.",
            "type": "integer",
            "minimum": Vmid::MIN,
            "maximum": Vmid::MAX
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_sort_by_time_and_round_trip() {
        let a = JobId::from_parts(1_000, 7);
        let b = JobId::from_parts(2_000, 3);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        assert_eq!(a.short().len(), 16);
        assert!(a.marker_tag().starts_with("pvefleet-"));
        assert!(a.marker_tag().chars().all(|c| !c.is_ascii_uppercase()));
    }

    #[test]
    fn node_names_are_nats_tokens() {
        assert!(NodeName::new("pve-1_a").is_ok());
        for bad in ["", "pve.1", "pve 1", "pve*", "pve>", "ünï"] {
            let err = NodeName::new(bad).unwrap_err();
            assert_eq!(err.field, "node", "{bad}");
        }
        assert!(NodeName::new("a".repeat(64)).is_err());
    }

    #[test]
    fn vmid_range() {
        assert!(Vmid::new(99).is_err());
        assert!(Vmid::new(100).is_ok());
        assert!(Vmid::new(999_999_999).is_ok());
        assert!(Vmid::new(1_000_000_000).is_err());
        assert!(serde_json::from_str::<Vmid>("42").is_err());
    }
}
