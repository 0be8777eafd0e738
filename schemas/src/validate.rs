//! Field-level validation errors and the small checks shared by the spec types.

use std::fmt;

/// One field at fault: its dotted path (`container.hostname`, `deploy.files[2].mode`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }

    /// The same problem, placed under a parent field (`hostname` → `container.hostname`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Every field at fault in one spec, so an operator fixes them all in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.field.as_str())
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid {one}"),
            many => {
                write!(f, "{} invalid fields:", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Turns a `serde_path_to_error` failure into the field at fault and its problem. serde reports
/// a missing field at its parent (`.` for the top); this names the field itself.
pub fn field_of(path: &str, message: &str) -> (String, String) {
    let message = message.trim();
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
        let full = if path == "." || path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
        return (full, "is required".to_owned());
    }
    (path.to_owned(), message.to_owned())
}

/// Collects field errors while a spec is walked.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<FieldError>);

impl Problems {
    pub(crate) fn check(&mut self, field: &str, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(FieldError::new(field, problem()));
        }
    }

    pub(crate) fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    pub(crate) fn nest(&mut self, parent: &str, inner: Result<(), ValidationErrors>) {
        if let Err(ValidationErrors(errs)) = inner {
            self.0.extend(errs.into_iter().map(|e| e.under(parent)));
        }
    }

    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(ValidationErrors(self.0)) }
    }
}

/// A DNS name as PVE's `dns-name` format takes it: labels of 1–63 letters, digits and inner
/// hyphens, at most 253 characters in all.
pub(crate) fn dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("`{name}` is longer than 253 characters"));
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "`{name}` is not a valid DNS name (label `{label}`: 1-63 letters, digits or inner hyphens)"
            ));
        }
    }
    Ok(())
}

/// PVE's `pve-tag` format: `[a-z0-9_][a-z0-9_+.-]*`, case-insensitive.
pub(crate) fn pve_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_+.-".contains(c)) {
        return Err(format!("`{tag}` is not a PVE tag (letters, digits, `_`, then also `+`, `.` and `-`)"));
    }
    Ok(())
}

/// PVE's configuration ids (storage ids, bridge names): a letter, then letters, digits, `-_.`.
pub(crate) fn config_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("`{id}` is not a valid id (a letter, then letters, digits, `-`, `_` or `.`)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["web", "web-01", "a.b.example", "x1"] {
            assert!(dns_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-web", "web-", "we_b", "a..b", "web!", &"a".repeat(64)] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_fields_are_named_in_full() {
        assert_eq!(field_of(".", "missing field `node`"), ("node".into(), "is required".into()));
        assert_eq!(
            field_of("container", "missing field `hostname` at line 1 column 9"),
            ("container.hostname".into(), "is required".into())
        );
        assert_eq!(field_of("container.swap", "invalid value"), ("container.swap".into(), "invalid value".into()));
    }

    #[test]
    fn many_errors_list_every_field() {
        let e = ValidationErrors(vec![FieldError::new("a", "x"), FieldError::new("b", "y")]);
        assert_eq!(e.to_string(), "2 invalid fields:\n  a: x\n  b: y");
        assert_eq!(FieldError::new("[1].mode", "bad").under("files").field, "files[1].mode");
    }
}
