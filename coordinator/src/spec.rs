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
//! source = "site.conf"          # read now, inside the TOML file's directory (or --files-dir)
//! # secret = true               # sealed to the node's agent; the store keeps its size and SHA-256
//! [[deploy.scripts]]
//! name = "enable"
//! body = "systemctl enable --now nginx"
//! [options]
//! rollback = "keep"
//! ```

use std::path::{Path, PathBuf};

use pvefleet_schemas::lxc::{Features, MountPoint, Nic, RootFs, Startup};
use pvefleet_schemas::pve_string::PropertyString;
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
    /// Reads a TOML spec; file `source`s are read now (relative to the file, or to
    /// `files_dir` when given), so what is stored or published carries the bytes, not a path
    /// on this machine.
    pub fn read(path: &Path, files_dir: Option<&Path>) -> Result<Self, BadInput> {
        let text =
            std::fs::read_to_string(path).map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?;
        let mut spec: SpecFile = toml::from_str(&text).map_err(|e| {
            let key =
                e.span().map(|s| text[..s.start].lines().count()).map(|l| format!(" (line {l})")).unwrap_or_default();
            BadInput(format!("{}{key}: {}", path.display(), e.message()))
        })?;
        let own_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        spec.inline_sources(files_dir.unwrap_or(own_dir))?;
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
                let field = format!("deploy.files[{i}].source");
                let path = source_in(base, &source).map_err(|why| BadInput::field(&field, why))?;
                let bytes =
                    std::fs::read(&path).map_err(|e| BadInput::field(&field, format!("{}: {e}", path.display())))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| BadInput::field(&field, format!("{} is not UTF-8 text", path.display())))?;
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
        if !SOURCES.iter().any(|k| probe.contains_key(*k)) {
            probe.insert("ostemplate".into(), "local:vztmpl/placeholder.tar.zst".into());
        }
        let spec = container_from(probe)?;
        spec.validate().map_err(|e| prefix(e, "container"))?;
        Ok(())
    }
}

/// The file `source` names for a spec whose files live in `base` (the spec's own directory, or
/// `--files-dir`): a path inside it, never `..`, never a dot-file or anything under a dot-
/// directory (`.ssh`, `.env`, `.git`), and a symlink only if it ends inside it too. Whoever
/// wrote the spec (a teammate, a repository, a template from elsewhere) must not be able to
/// ship the operator's `~/.ssh/id_ed25519` or `coordinator.env` into a container.
pub fn source_in(base: &Path, source: &str) -> Result<PathBuf, String> {
    let given = Path::new(source);
    if given.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("`{source}` contains `..`; a source is a file beside the spec (or in --files-dir)"));
    }
    let root = base.canonicalize().map_err(|e| format!("{} cannot be read ({e})", base.display()))?;
    let path = if given.is_absolute() { given.to_path_buf() } else { root.join(given) };
    let real = path.canonicalize().map_err(|e| format!("`{source}`: {} ({e})", path.display()))?;
    let inside = real.strip_prefix(&root).map_err(|_| {
        format!(
            "`{source}` is outside {}, where this spec's files live (--files-dir names another place)",
            root.display()
        )
    })?;
    let named = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
    for part in [inside, named.as_path()] {
        if part.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.')) {
            return Err(format!("`{source}` is a dot-file or lies in a dot-directory; those are never sent"));
        }
    }
    if !real.is_file() {
        return Err(format!("`{source}` is not a regular file"));
    }
    Ok(real)
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

/// The container fields that each say where the container comes from; one is given.
const SOURCES: [&str; 3] = ["ostemplate", "template", "clone"];

/// Overlays the container table `top` on `base`, key by key. A template source in `top`
/// replaces `base`'s, whichever kind each is (a spec's `clone` overrides a template's
/// `ostemplate`).
pub fn overlay(base: &mut toml::Table, top: toml::Table) {
    if SOURCES.iter().any(|k| top.contains_key(*k)) {
        base.retain(|k, _| !SOURCES.contains(&k));
    }
    for (k, v) in top {
        base.insert(k, v);
    }
}

/// The container fields given in PVE's own `key=value,…` form (`--net`, `--mp`, `--startup`,
/// `--rootfs`), as a table to overlay. Each is read by its type's `from_pve` in schemas, beside
/// the `to_pve` that writes it for PVE; a malformed one names its flag.
pub fn pve_flags(
    nets: &[String],
    mps: &[String],
    startup: Option<&str>,
    rootfs: Option<&str>,
) -> Result<toml::Table, BadInput> {
    let mut t = toml::Table::new();
    if let Some(r) = rootfs {
        t.insert("rootfs".into(), pve_flag("--rootfs", r, RootFs::from_pve)?);
    }
    if !nets.is_empty() {
        t.insert("nics".into(), pve_flag_each("--net", nets, Nic::from_pve)?);
    }
    if !mps.is_empty() {
        t.insert("mounts".into(), pve_flag_each("--mp", mps, MountPoint::from_pve)?);
    }
    if let Some(s) = startup {
        t.insert("startup".into(), pve_flag("--startup", s, Startup::from_pve)?);
    }
    Ok(t)
}

/// One flag's value read by `from_pve`, as the table a spec file would hold for it.
fn pve_flag<T: Serialize>(
    flag: &str,
    text: &str,
    from_pve: fn(&str) -> Result<T, String>,
) -> Result<toml::Value, BadInput> {
    let value = from_pve(text).map_err(|e| BadInput::field(flag, e))?;
    toml::Value::try_from(value).map_err(|e| BadInput::field(flag, e))
}

/// A repeated flag (`--net`, `--mp`) as an array; a bad one is named by its place (`--net #2`).
fn pve_flag_each<T: Serialize>(
    flag: &str,
    texts: &[String],
    from_pve: fn(&str) -> Result<T, String>,
) -> Result<toml::Value, BadInput> {
    let values = texts.iter().enumerate().map(|(i, text)| pve_flag(&format!("{flag} #{}", i + 1), text, from_pve));
    Ok(toml::Value::Array(values.collect::<Result<_, _>>()?))
}

/// The template source (`--download`, `--appliance`, `--oci`, `--clone`), `--features` and
/// `--env` flags as a table to overlay; each takes PVE's `value,key=value,…` form, and a
/// malformed one names its flag.
pub fn source_flags(a: &crate::cli::SubmitArgs) -> Result<toml::Table, BadInput> {
    let mut t = toml::Table::new();
    let given: Vec<&str> = [
        a.ostemplate.as_ref().map(|_| "--ostemplate"),
        a.download.as_ref().map(|_| "--download"),
        a.appliance.as_ref().map(|_| "--appliance"),
        a.oci.as_ref().map(|_| "--oci"),
        a.clone_from.as_ref().map(|_| "--clone"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(BadInput::field(given[1], format!("give one template source, not {}", given.join(" and "))));
    }
    if let Some(text) = &a.download {
        let inner = source_flag("--download", text, None, &["url", "checksum", "algorithm", "storage", "filename"])?;
        t.insert(
            "template".into(),
            toml::Value::Table(toml::Table::from_iter([("download".to_owned(), inner.into())])),
        );
    }
    if let Some(text) = &a.appliance {
        let inner = source_flag("--appliance", text, Some("name"), &["storage"])?;
        t.insert(
            "template".into(),
            toml::Value::Table(toml::Table::from_iter([("appliance".to_owned(), inner.into())])),
        );
    }
    if let Some(text) = &a.oci {
        let inner = source_flag("--oci", text, Some("reference"), &["storage", "filename"])?;
        t.insert("template".into(), toml::Value::Table(toml::Table::from_iter([("oci".to_owned(), inner.into())])));
    }
    if let Some(text) = &a.clone_from {
        let mut inner = source_flag("--clone", text, Some("from"), &["full", "snapshot", "storage", "keep_key"])?;
        if let Some(toml::Value::String(from)) = inner.get("from")
            && let Ok(vmid) = from.parse::<i64>()
        {
            inner.insert("from".into(), vmid.into());
        }
        t.insert("clone".into(), toml::Value::Table(inner));
    }
    if let Some(text) = &a.features {
        t.insert("features".into(), pve_flag("--features", text, Features::from_pve)?);
    }
    if !a.envs.is_empty() {
        let mut env = toml::Table::new();
        for (i, pair) in a.envs.iter().enumerate() {
            // One variable, not a property string: its value may hold commas.
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| BadInput::field(&format!("--env #{}", i + 1), format!("`{pair}` is not KEY=VALUE")))?;
            env.insert(k.into(), v.into());
        }
        t.insert("env".into(), toml::Value::Table(env));
    }
    Ok(t)
}

/// A template source flag (`9000,full=0,snapshot=base`) as its table: the bare value first,
/// under `first`, for the sources that have one; then the `keys` it takes.
fn source_flag(flag: &str, text: &str, first: Option<&str>, keys: &[&str]) -> Result<toml::Table, BadInput> {
    let bad = |e: String| BadInput::field(flag, e);
    let p = match first {
        Some(_) => PropertyString::parse(text),
        None => PropertyString::parse_keyed(text),
    }
    .map_err(bad)?;
    let mut inner = toml::Table::new();
    if let Some(key) = first {
        let head = p.head().ok_or_else(|| bad(format!("start with the `{key}` value, then any key=value")))?;
        inner.insert(key.into(), head.into());
    }
    p.only(keys).map_err(bad)?;
    for (key, value) in p.pairs() {
        let v = match key {
            "full" | "keep_key" => p.switch(key).map_err(bad)?.into(),
            _ => value.into(),
        };
        inner.insert(key.into(), v);
    }
    Ok(inner)
}

/// `--disk`/`--storage` over a template or spec file that gives a whole `rootfs` change that
/// rootfs (its size, its storage) instead of being outweighed by it in silence.
pub fn disk_flags_onto_rootfs(container: &mut toml::Table, disk: Option<u32>, storage: Option<&str>) {
    if let Some(toml::Value::Table(rootfs)) = container.get_mut("rootfs") {
        if let Some(gb) = disk {
            rootfs.insert("size".into(), i64::from(gb).into());
        }
        if let Some(storage) = storage {
            rootfs.insert("storage".into(), storage.into());
        }
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
        FileSpec::new(path, content)
    }

    fn script(name: &str, body: &str) -> ScriptSpec {
        ScriptSpec { name: name.into(), body: body.into(), interpreter: "/bin/sh".into(), timeout: None }
    }

    #[test]
    fn pves_own_forms_become_the_spec() {
        let t = pve_flags(
            &["name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,ip6=auto,tag=20,trunks=30;40,firewall=1".into()],
            &[
                "local-lvm:4,mp=/srv/data,backup=1,mountoptions=noatime;nodev".into(),
                "/srv/media,mp=/media,ro=1".into(),
            ],
            Some("order=2,up=30"),
            Some("fast:12,acl=1,quota=1,replicate=0,mountoptions=noatime;nodev"),
        )
        .unwrap();
        let mut table = toml::Table::new();
        table.insert("hostname".into(), "web".into());
        table.insert("ostemplate".into(), "local:vztmpl/x.tar.zst".into());
        overlay(&mut table, t);
        let spec = container_from(table).unwrap();
        spec.validate().unwrap();
        assert_eq!(
            spec.nics[0].to_pve(),
            "name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,ip6=auto,tag=20,trunks=30;40,firewall=1"
        );
        assert_eq!(spec.mounts[0].to_pve(), "local-lvm:4,mp=/srv/data,backup=1,mountoptions=noatime;nodev");
        assert_eq!(spec.mounts[1].to_pve(), "/srv/media,mp=/media,ro=1");
        assert_eq!(spec.startup.unwrap().to_pve(), "order=2,up=30");
        assert_eq!(
            spec.rootfs.expect("a rootfs").to_pve(),
            "fast:12,acl=1,quota=1,replicate=0,mountoptions=noatime;nodev"
        );
        let bad = pve_flags(&["name=eth0,vlan=3".into()], &[], None, None).unwrap_err();
        assert!(bad.to_string().contains("--net #1") && bad.to_string().contains("unknown key `vlan`"), "{bad}");
        let bad = pve_flags(&[], &[], None, Some("12,acl=1")).unwrap_err();
        assert!(bad.to_string().contains("--rootfs") && bad.to_string().contains("STORAGE:GB"), "{bad}");
        let bad = pve_flags(&[], &[], None, Some("local-lvm:vm-100-disk-0")).unwrap_err();
        assert!(bad.to_string().contains("`local-lvm:vm-100-disk-0` is not STORAGE:GB"), "{bad}");
    }

    #[test]
    fn a_bad_pve_flag_names_the_flag_and_the_part() {
        let err = |nets: &[&str], mps: &[&str], startup| {
            let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            pve_flags(&owned(nets), &owned(mps), startup, None).unwrap_err().to_string()
        };
        assert_eq!(err(&["eth0,bridge=vmbr0"], &[], None), "invalid --net #1: `eth0` is not key=value");
        assert_eq!(
            err(&[], &["local-lvm:4,mp=/a", "/srv,mp=/b,acl=1"], None),
            "invalid --mp #2: `acl` does not apply to a host directory"
        );
        assert_eq!(err(&[], &[], Some("order=1,order=2")), "invalid --startup: `order` is given twice");
        let features = submit_args(["submit", "--features", "nesting=2"]);
        let bad = source_flags(&features).unwrap_err().to_string();
        assert_eq!(bad, "invalid --features: `nesting=2` is not 0 or 1");
        let clone = submit_args(["submit", "--clone", "full=0"]);
        let bad = source_flags(&clone).unwrap_err().to_string();
        assert_eq!(bad, "invalid --clone: start with the `from` value, then any key=value");
    }

    #[test]
    fn disk_flags_change_a_rootfs_given_by_a_template() {
        let mut table = toml::Table::new();
        table.insert("hostname".into(), "web".into());
        table.insert("ostemplate".into(), "local:vztmpl/x.tar.zst".into());
        overlay(&mut table, pve_flags(&[], &[], None, Some("fast:8,acl=1")).unwrap());
        disk_flags_onto_rootfs(&mut table, Some(20), Some("big"));
        let spec = container_from(table).unwrap();
        assert_eq!(spec.effective_rootfs().to_pve(), "big:20,acl=1");
    }

    fn submit_args<const N: usize>(argv: [&str; N]) -> crate::cli::SubmitArgs {
        #[derive(clap::Parser)]
        struct Submit {
            #[command(flatten)]
            args: crate::cli::SubmitArgs,
        }
        <Submit as clap::Parser>::parse_from(argv).args
    }

    #[test]
    fn a_later_template_source_replaces_the_earlier_whatever_its_kind() {
        let mut base = toml::Table::new();
        base.insert("hostname".into(), "web".into());
        base.insert("ostemplate".into(), "local:vztmpl/x.tar.zst".into());
        let args = submit_args([
            "submit",
            "--clone",
            "9000,full=0,snapshot=base",
            "--features",
            "nesting=1,mount=nfs;cifs",
            "--env",
            "PORT=8080",
        ]);
        overlay(&mut base, source_flags(&args).unwrap());
        let spec = container_from(base).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.ostemplate, None, "the clone replaced the template's ostemplate");
        let clone = spec.clone.as_ref().unwrap();
        assert_eq!((clone.full, clone.snapshot.as_deref()), (false, Some("base")));
        assert_eq!(clone.from, pvefleet_schemas::source::CloneFrom::Vmid(pvefleet_schemas::Vmid::new(9000).unwrap()));
        assert_eq!(spec.effective_features().to_pve(), "mount=nfs;cifs,nesting=1");
        assert_eq!(spec.env["PORT"], "8080");
        let download = submit_args([
            "submit",
            "--download",
            "url=https://example.com/t.tar.zst,checksum=00,filename=t.tar.zst,colour=blue",
        ]);
        let err = source_flags(&download).unwrap_err().to_string();
        assert!(err.contains("--download") && err.contains("unknown key `colour`"), "{err}");
        let both = submit_args(["submit", "--ostemplate", "local:vztmpl/x", "--oci", "nginx:1"]);
        assert!(source_flags(&both).unwrap_err().to_string().contains("give one template source"));
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
