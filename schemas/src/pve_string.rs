//! PVE's property strings (`name=eth0,bridge=vmbr0`, `local-lvm:8,mp=/data,backup=1`): the one
//! parser and the one writer, so what the coordinator reads from a flag and what the agent
//! sends to PVE follow the same rules.
//!
//! The format is PVE's (`PVE::JSONSchema::parse_property_string`): parts joined by `,`, each
//! `key=value`, except that the first may be a bare value for the type's default key (a volume,
//! a clone's source). A list inside a value is joined by `;`. These strings have no escaping,
//! so no value may hold a `,` (validation refuses paths with one), and a bare value no `=`.

use std::fmt;
use std::str::FromStr;

/// A property string as an optional leading bare value and its `key=value` pairs, in order,
/// each key once.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PropertyString {
    head: Option<String>,
    pairs: Vec<(String, String)>,
}

impl PropertyString {
    /// An empty one, to be filled with [`with`](Self::with) and its kin.
    pub fn new() -> Self {
        Self::default()
    }

    /// One that starts with a bare value for the default key (`local-lvm:8`).
    pub fn headed(head: impl fmt::Display) -> Self {
        Self { head: Some(head.to_string()), pairs: Vec::new() }
    }

    /// Reads `s`. Empty parts are skipped (a trailing `,` does no harm), a bare value may come
    /// only first, and a key given twice is refused, as PVE refuses it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Self::new();
        for (i, part) in s.split(',').filter(|p| !p.is_empty()).enumerate() {
            match part.split_once('=') {
                Some((key, value)) if !key.is_empty() => out.insert(key, value)?,
                None if i == 0 => out.head = Some(part.to_owned()),
                _ => return Err(format!("`{part}` is not key=value")),
            }
        }
        Ok(out)
    }

    /// Reads `s` where every part is `key=value` (a NIC, `startup`, `features`): these have
    /// no default key, so a bare value is an error.
    pub fn parse_keyed(s: &str) -> Result<Self, String> {
        let out = Self::parse(s)?;
        match &out.head {
            Some(head) => Err(format!("`{head}` is not key=value")),
            None => Ok(out),
        }
    }

    fn insert(&mut self, key: &str, value: &str) -> Result<(), String> {
        if self.get(key).is_some() {
            return Err(format!("`{key}` is given twice"));
        }
        self.pairs.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// The bare value given first, if any.
    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }

    /// The `key=value` pairs, in the order given.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Refuses a key outside `known`, naming those that are, so a typo is told at once
    /// rather than dropped.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.pairs().find(|(k, _)| !known.contains(k)) {
            Some((key, _)) => Err(format!("unknown key `{key}` ({})", known.join(", "))),
            None => Ok(()),
        }
    }

    /// `key`'s value, which must be there.
    pub fn required(&self, key: &str) -> Result<String, String> {
        self.get(key).map(str::to_owned).ok_or_else(|| format!("`{key}=` is missing"))
    }

    /// `key`'s value as a switch: PVE writes `1` and `0`; people also write `true`/`false`
    /// and `yes`/`no`.
    pub fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        self.get(key)
            .map(|value| match value {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" => Ok(false),
                _ => Err(format!("`{key}={value}` is not 0 or 1")),
            })
            .transpose()
    }

    /// `key`'s switch, off when not given.
    pub fn switch(&self, key: &str) -> Result<bool, String> {
        Ok(self.flag(key)?.unwrap_or(false))
    }

    /// `key`'s value as a number.
    pub fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.get(key).map(|value| number(key, value)).transpose()
    }

    /// `key`'s value as a `;`-separated list of numbers (`trunks=30;40`), empty when not given.
    pub fn numbers<T: FromStr>(&self, key: &str) -> Result<Vec<T>, String> {
        self.get(key).map_or(Ok(Vec::new()), |value| value.split(';').map(|n| number(key, n)).collect())
    }

    /// `key`'s value as a `;`-separated list (`mountoptions=noatime;nodev`), empty when not given.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key).map_or(Vec::new(), |value| value.split(';').map(str::to_owned).collect())
    }

    /// `key`'s value read by its type's own parser, whose error says what is wrong with it.
    pub fn value<T: FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: fmt::Display,
    {
        self.get(key).map(|value| value.parse().map_err(|e| format!("{key}: {e}"))).transpose()
    }

    /// Adds `key=value`.
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Self {
        debug_assert!(self.get(key).is_none(), "`{key}` written twice");
        self.pairs.push((key.to_owned(), value.to_string()));
        self
    }

    /// Adds `key=value` when there is a value.
    pub fn with_opt(self, key: &str, value: Option<impl fmt::Display>) -> Self {
        match value {
            Some(value) => self.with(key, value),
            None => self,
        }
    }

    /// Adds `key=1` or `key=0` when set, as PVE writes a switch.
    pub fn with_flag(self, key: &str, value: Option<bool>) -> Self {
        self.with_opt(key, value.map(|on| if on { "1" } else { "0" }))
    }

    /// Adds `key=1` when on and nothing when off, for switches that are off unless said.
    pub fn with_switch(self, key: &str, on: bool) -> Self {
        self.with_flag(key, on.then_some(true))
    }

    /// Adds `key=a;b;c` when the list holds anything.
    pub fn with_list<T: fmt::Display>(self, key: &str, values: &[T]) -> Self {
        let joined = values.iter().map(T::to_string).collect::<Vec<_>>().join(";");
        self.with_opt(key, (!values.is_empty()).then_some(joined))
    }
}

/// `value` of `key` as a number; the error tells a word from a number too large for the field.
fn number<T: FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| match value.parse::<f64>() {
        Ok(_) => format!("`{key}={value}` is out of range"),
        Err(_) => format!("`{key}={value}` is not a number"),
    })
}

impl FromStr for PropertyString {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PropertyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(head) = &self.head {
            f.write_str(head)?;
            sep = ",";
        }
        for (key, value) in &self.pairs {
            write!(f, "{sep}{key}={value}")?;
            sep = ",";
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_string_reads_its_head_and_pairs() {
        let p = PropertyString::parse("local-lvm:8,mp=/data,backup=1,").unwrap();
        assert_eq!(p.head(), Some("local-lvm:8"));
        assert_eq!(p.pairs().collect::<Vec<_>>(), [("mp", "/data"), ("backup", "1")]);
        assert_eq!(p.flag("backup"), Ok(Some(true)));
        assert_eq!(p.to_string(), "local-lvm:8,mp=/data,backup=1");
        let url = PropertyString::parse("url=https://example.com/?a=b").unwrap();
        assert_eq!(url.get("url"), Some("https://example.com/?a=b"));
    }

    #[test]
    fn a_bad_part_is_named() {
        assert_eq!(PropertyString::parse("a=1,foo").unwrap_err(), "`foo` is not key=value");
        assert_eq!(PropertyString::parse("=1").unwrap_err(), "`=1` is not key=value");
        assert_eq!(PropertyString::parse("a=1,a=2").unwrap_err(), "`a` is given twice");
        assert_eq!(PropertyString::parse_keyed("eth0,bridge=vmbr0").unwrap_err(), "`eth0` is not key=value");
        let p = PropertyString::parse("tag=x,mtu=70000,up=yes,ro=2").unwrap();
        assert_eq!(p.number::<u16>("tag").unwrap_err(), "`tag=x` is not a number");
        assert_eq!(p.number::<u16>("mtu").unwrap_err(), "`mtu=70000` is out of range");
        assert_eq!(p.flag("ro").unwrap_err(), "`ro=2` is not 0 or 1");
        assert_eq!(p.only(&["tag", "mtu"]).unwrap_err(), "unknown key `up` (tag, mtu)");
        assert_eq!(p.required("name").unwrap_err(), "`name=` is missing");
    }

    #[test]
    fn the_writer_leaves_out_what_is_not_set() {
        let p = PropertyString::new()
            .with("name", "eth0")
            .with_opt("tag", None::<u16>)
            .with_flag("acl", Some(false))
            .with_switch("firewall", false)
            .with_switch("link_down", true)
            .with_list("trunks", &[30, 40])
            .with_list::<u16>("none", &[]);
        assert_eq!(p.to_string(), "name=eth0,acl=0,link_down=1,trunks=30;40");
        assert_eq!(PropertyString::new().to_string(), "");
    }
}
