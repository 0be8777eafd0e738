//! Building a job from what an operator gives: a template, then a spec file, then flags, each
//! overriding the one before. Every problem names the field and nothing is published.
//!
//! Specs and templates are TOML:
//!
//! ```toml
//! name = "web"                  # templates only
//! description = "nginx on Debian"
//! [container]                   # any ContainerSpec field
//! ostemplate = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
//! memory = 1024
//! [deploy]
//! packages = ["nginx"]
//! [[deploy.files]]
//! path = "/etc/nginx/conf.d/site.conf"
//! source = "site.conf"          # read now, relative to the TOML file
//! [[deploy.scripts]]
//! name = "enable"
//! body = "systemctl enable --now nginx"
//! [options]
//! rollback = "keep"
//! ```

use std::path::{Path, PathBuf};

use pvefleet_schemas::{ContainerSpec, DeploySpec, FieldError, JobOptions, ValidationErrors};
use serde::{Deserialize, Serialize};

/// A usage error: names what is wrong; the CLI exits 2 and publishes nothing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl BadInput {
    pub fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        BadInput(format!("invalid {field}: {problem}"))
    }
}

impl From<ValidationErrors> for BadInput {
    fn from(e: ValidationErrors) -> Self {
        BadInput(e.to_string())
    }
}

impl From<FieldError> for BadInput {
    fn from(e: FieldError) -> Self {
        BadInput(format!("invalid {e}"))
    }
}

/// A spec file or template as written. The container part stays a table until everything is
/// merged, since a template may leave out what each job must give (the hostname).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default)]
    pub container: toml::Table,
    #[serde(default)]
    pub deploy: DeploySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<JobOptions>,
}

impl SpecFile {
    /// Reads a TOML spec; file `source`s are read now (relative to the file), so what is
    /// stored or published carries the bytes, not a path on this machine.
    pub fn read(path: &Path) -> Result<Self, BadInput> {
        let text =
            std::fs::read_to_string(path).map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?;
        let mut spec: SpecFile = toml::from_str(&text).map_err(|e| {
            let key =
                e.span().map(|s| text[..s.start].lines().count()).map(|l| format!(" (line {l})")).unwrap_or_default();
            BadInput(format!("{}{key}: {}", path.display(), e.message()))
        })?;
        spec.inline_sources(path.parent().unwrap_or(Path::new(".")))?;
        if spec.container.contains_key("root_password") {
            return Err(BadInput::field(
                "container.root_password",
                "a password is never written in a spec or template; use --password-file, --password-env or --ask-password",
            ));
        }
        Ok(spec)
    }

    fn inline_sources(&mut self, base: &Path) -> Result<(), BadInput> {
        for (i, file) in self.deploy.files.iter_mut().enumerate() {
            if let Some(source) = file.source.take() {
                let path = if Path::new(&source).is_absolute() { PathBuf::from(&source) } else { base.join(&source) };
                let bytes = std::fs::read(&path).map_err(|e| {
                    BadInput::field(&format!("deploy.files[{i}].source"), format!("{}: {e}", path.display()))
                })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    BadInput::field(
                        &format!("deploy.files[{i}].source"),
                        format!("{} is not UTF-8 text", path.display()),
                    )
                })?;
                if file.content.is_some() {
                    return Err(BadInput::field(
                        &format!("deploy.files[{i}]"),
                        "give exactly one of `content` and `source`",
                    ));
                }
                file.content = Some(text);
            }
        }
        Ok(())
    }

    /// Checks a template: its deploy spec fully, and the container fields it sets.
    pub fn validate_as_template(&self) -> Result<(), BadInput> {
        let name = self.name.as_deref().ok_or_else(|| BadInput::field("name", "a template needs a name"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(BadInput::field("name", format!("`{name}` may hold only letters, digits, `-`, `_` and `.`")));
        }
        self.deploy.validate().map_err(|e| prefix(e, "deploy"))?;
        if let Some(options) = &self.options {
            options.validate().map_err(|e| prefix(e, "options"))?;
        }
        // The container fields it sets must be valid on their own: fill the ones every job
        // gives with placeholders and check the whole.
        let mut probe = self.container.clone();
        probe.entry("hostname").or_insert_with(|| "placeholder".into());
        probe.entry("ostemplate").or_insert_with(|| "local:vztmpl/placeholder.tar.zst".into());
        let spec = container_from(probe)?;
        spec.validate().map_err(|e| prefix(e, "container"))?;
        Ok(())
    }
}

fn prefix(e: ValidationErrors, parent: &str) -> BadInput {
    BadInput(ValidationErrors(e.0.into_iter().map(|f| f.under(parent)).collect()).to_string())
}

/// Deserializes a merged container table, naming the field at fault.
pub fn container_from(table: toml::Table) -> Result<ContainerSpec, BadInput> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let (field, message) = pvefleet_schemas::validate::field_of(&e.path().to_string(), e.inner().message());
        let field = if field == "." { "container".to_owned() } else { format!("container.{field}") };
        BadInput::field(&field, message)
    })
}

/// Overlays `top` on `base`, key by key.
pub fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        base.insert(k, v);
    }
}

/// Adds `more`'s packages, files and scripts to `base`'s. A file at a path `base` already
/// writes, or a script with a name it already runs, replaces that one where it stands: the
/// later source overrides the earlier, as for the container's fields.
pub fn extend_deploy(base: &mut DeploySpec, more: DeploySpec) {
    for package in more.packages {
        if !base.packages.contains(&package) {
            base.packages.push(package);
        }
    }
    for file in more.files {
        match base.files.iter_mut().find(|f| f.path == file.path) {
            Some(earlier) => *earlier = file,
            None => base.files.push(file),
        }
    }
    for script in more.scripts {
        match base.scripts.iter_mut().find(|s| s.name == script.name) {
            Some(earlier) => *earlier = script,
            None => base.scripts.push(script),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvefleet_schemas::{FileSpec, ScriptSpec};

    fn file(path: &str, content: &str) -> FileSpec {
        FileSpec {
            path: path.into(),
            content: Some(content.into()),
            source: None,
            mode: "0644".parse().unwrap(),
            owner: None,
        }
    }

    fn script(name: &str, body: &str) -> ScriptSpec {
        ScriptSpec { name: name.into(), body: body.into(), interpreter: "/bin/sh".into(), timeout: None }
    }

    #[test]
    fn a_later_file_or_script_of_the_same_name_overrides_the_earlier() {
        let mut template = DeploySpec {
            packages: vec!["nginx".into()],
            files: vec![file("/etc/a", "template a"), file("/etc/b", "template b")],
            scripts: vec![script("enable", "template"), script("check", "true")],
        };
        let spec = DeploySpec {
            packages: vec!["nginx".into(), "curl".into()],
            files: vec![file("/etc/a", "spec a"), file("/etc/c", "spec c")],
            scripts: vec![script("enable", "spec")],
        };
        extend_deploy(&mut template, spec);
        assert_eq!(template.packages, ["nginx", "curl"]);
        let files: Vec<(&str, &str)> =
            template.files.iter().map(|f| (f.path.as_str(), f.content.as_deref().unwrap())).collect();
        assert_eq!(files, [("/etc/a", "spec a"), ("/etc/b", "template b"), ("/etc/c", "spec c")]);
        let scripts: Vec<(&str, &str)> = template.scripts.iter().map(|s| (s.name.as_str(), s.body.as_str())).collect();
        assert_eq!(scripts, [("enable", "spec"), ("check", "true")]);
        assert!(template.validate().is_ok());
    }
}
