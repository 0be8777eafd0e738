//! Where a container's root file system comes from when its template is not already on the
//! node: a template downloaded by URL with a checksum, one from pveam's appliance catalogue, an
//! OCI image pulled from a registry (PVE 9.1's application containers), or a clone of another
//! container. Each becomes its own checkpointed step in the agent (fetching, cloning).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::Vmid;
use crate::validate::{FieldError, Problems, ValidationErrors, config_id, dns_name};

fn local() -> String {
    "local".into()
}

/// A template fetched onto a storage of the node before the create, skipped when it is there.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TemplateSource {
    /// `POST /nodes/{node}/storage/{storage}/download-url`, checked against `checksum`.
    Download(Download),
    /// `POST /nodes/{node}/aplinfo`: a template from pveam's catalogue, by its file name.
    Appliance(Appliance),
    /// `POST /nodes/{node}/storage/{storage}/oci-registry-pull` (PVE 9.1 and later).
    Oci(OciImage),
}

/// The checksum algorithms `download-url` takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgorithm {
    Md5,
    Sha1,
    Sha224,
    #[default]
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Sha224 => "sha224",
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Sha384 => "sha384",
            ChecksumAlgorithm::Sha512 => "sha512",
        }
    }

    /// Hex digits in a digest of this algorithm.
    fn hex_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Md5 => 32,
            ChecksumAlgorithm::Sha1 => 40,
            ChecksumAlgorithm::Sha224 => 56,
            ChecksumAlgorithm::Sha256 => 64,
            ChecksumAlgorithm::Sha384 => 96,
            ChecksumAlgorithm::Sha512 => 128,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// An `http://` or `https://` URL the node can reach.
    pub url: String,
    /// The file's digest in hex; PVE refuses to keep a file whose digest differs.
    pub checksum: String,
    #[serde(default)]
    pub algorithm: ChecksumAlgorithm,
    /// A storage of the node with `vztmpl` content.
    #[serde(default = "local")]
    pub storage: String,
    /// The file name on the storage (`debian-12-custom_amd64.tar.zst`).
    pub filename: String,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// The template's name as `pveam available` lists it (`debian-12-standard_12.7-1_amd64.tar.zst`).
    pub name: String,
    #[serde(default = "local")]
    pub storage: String,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OciImage {
    /// An image reference with its tag: `docker.io/library/nginx:1.27`.
    pub reference: String,
    #[serde(default = "local")]
    pub storage: String,
    /// The file name on the storage; by default the whole reference, registry included
    /// (`docker.io_library_nginx_1.27.tar`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Template file endings PVE's `vztmpl` content takes.
const TEMPLATE_ENDINGS: [&str; 6] = [".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2", ".tgz", ".tar"];

fn file_name(p: &mut Problems, field: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        && TEMPLATE_ENDINGS.iter().any(|e| name.ends_with(e));
    p.check(field, ok, || {
        format!(
            "`{name}` is not a template file name (letters, digits, `-_.+`, ending in {})",
            TEMPLATE_ENDINGS.join(", ")
        )
    });
}

fn storage_id(p: &mut Problems, storage: &str) {
    if let Err(e) = config_id(storage) {
        p.push(FieldError::new("storage", e));
    }
}

impl TemplateSource {
    /// The storage the template lands on.
    pub fn storage(&self) -> &str {
        match self {
            TemplateSource::Download(d) => &d.storage,
            TemplateSource::Appliance(a) => &a.storage,
            TemplateSource::Oci(o) => &o.storage,
        }
    }

    /// The field path of this source in a container spec (`template.download`).
    pub fn field(&self) -> &'static str {
        match self {
            TemplateSource::Download(_) => "template.download",
            TemplateSource::Appliance(_) => "template.appliance",
            TemplateSource::Oci(_) => "template.oci",
        }
    }

    /// The template's file name on its storage.
    pub fn filename(&self) -> String {
        match self {
            TemplateSource::Download(d) => d.filename.clone(),
            TemplateSource::Appliance(a) => a.name.clone(),
            TemplateSource::Oci(o) => o.filename.clone().unwrap_or_else(|| o.default_filename()),
        }
    }

    /// The volume id the create uses once the template is there: `local:vztmpl/<file>`.
    pub fn volid(&self) -> String {
        format!("{}:vztmpl/{}", self.storage(), self.filename())
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        match self {
            TemplateSource::Download(d) => {
                p.bytes("url", &d.url, crate::limits::TEXT_BYTES);
                let scheme_ok = ["http://", "https://"].iter().any(|s| d.url.starts_with(s) && d.url.len() > s.len());
                p.check("url", scheme_ok && !d.url.chars().any(char::is_whitespace), || {
                    format!("`{}` is not an http:// or https:// URL", d.url)
                });
                let want = d.algorithm.hex_len();
                p.check(
                    "checksum",
                    d.checksum.len() == want && d.checksum.chars().all(|c| c.is_ascii_hexdigit()),
                    || {
                        format!(
                            "`{}` is not a {} digest ({want} hex digits); `algorithm` names the digest",
                            d.checksum,
                            d.algorithm.as_str()
                        )
                    },
                );
                storage_id(&mut p, &d.storage);
                file_name(&mut p, "filename", &d.filename);
            }
            TemplateSource::Appliance(a) => {
                storage_id(&mut p, &a.storage);
                file_name(&mut p, "name", &a.name);
            }
            TemplateSource::Oci(o) => {
                p.bytes("reference", &o.reference, crate::limits::TEXT_BYTES);
                p.check("reference", oci_reference(&o.reference), || {
                    format!(
                        "`{}` is not an image reference with a tag, like `docker.io/library/nginx:1.27`",
                        o.reference
                    )
                });
                storage_id(&mut p, &o.storage);
                if let Some(name) = &o.filename {
                    p.check("filename", name.ends_with(".tar"), || format!("`{name}` must end in `.tar`"));
                    file_name(&mut p, "filename", name);
                }
            }
        }
        p.finish()
    }
}

impl OciImage {
    /// The registry, the image's path and its tag, as Docker reads a reference: without a
    /// registry host it is Docker Hub's (`docker.io`), and a one-part path there is under
    /// `library/` (`nginx:1.27` is `docker.io/library/nginx:1.27`).
    pub fn parts(&self) -> (String, String, String) {
        let (name, tag) = self.reference.rsplit_once(':').unwrap_or((&self.reference, "latest"));
        let mut path: Vec<&str> = name.split('/').collect();
        let has_host = path.len() > 1 && (path[0].contains('.') || path[0].contains(':') || path[0] == "localhost");
        let registry = if has_host { path.remove(0).to_owned() } else { "docker.io".to_owned() };
        if registry == "docker.io" && path.len() == 1 {
            path.insert(0, "library");
        }
        (registry, path.join("/"), tag.to_owned())
    }

    /// The whole reference, registry included: `docker.io/library/nginx:1.27` →
    /// `docker.io_library_nginx_1.27.tar`, so an image of one name from another registry
    /// (`evil.example/library/nginx:1.27`) is never taken for it.
    fn default_filename(&self) -> String {
        let (registry, path, tag) = self.parts();
        format!("{}_{}_{tag}.tar", registry.replace(':', "_"), path.replace('/', "_"))
    }
}

/// PVE's pattern for `oci-registry-pull`'s `reference`, checked in parts: an optional
/// registry host (with a port) before the first `/`, lower-case path components, and a tag.
fn oci_reference(reference: &str) -> bool {
    let Some((name, tag)) = reference.rsplit_once(':') else { return false };
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (host, port) = host.split_once(':').unwrap_or((host, "0"));
        if dns_name(host).is_err() || port.parse::<u16>().is_err() {
            return false;
        }
    }
    let path_ok = parts.iter().all(|c| {
        !c.is_empty()
            && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    });
    tag_ok && path_ok
}

/// The container to clone: a vmid, or the name of a template on the node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CloneFrom {
    Vmid(Vmid),
    Name(String),
}

impl std::fmt::Display for CloneFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloneFrom::Vmid(v) => write!(f, "{v}"),
            CloneFrom::Name(n) => f.write_str(n),
        }
    }
}

/// `POST /nodes/{node}/lxc/{from}/clone`, then `PUT …/config` with the rest of the spec.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneSpec {
    pub from: CloneFrom,
    /// A full copy (the default); `false` makes a linked clone of a template.
    #[serde(default = "yes")]
    pub full: bool,
    /// Clone from this snapshot of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Where a full clone's volumes go (the source's storages by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Keep the key the node's agent reaches clones with (`ssh.key_file`) in the clone's
    /// authorized keys. By default the deploy puts the job's own key in, removes that shared
    /// key, and removes the job's key at its end: no key that opens other containers remains.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_key: bool,
}

impl CloneSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        if let CloneFrom::Name(name) = &self.from
            && let Err(e) = dns_name(name)
        {
            p.push(FieldError::new("from", format!("{e}; give a vmid or a template's name")));
        }
        if let Some(snap) = &self.snapshot {
            p.check("snapshot", config_id(snap).is_ok() && snap.len() <= 40, || {
                format!("`{snap}` is not a snapshot name (a letter, then letters, digits, `-_`; up to 40)")
            });
        }
        if let Some(storage) = &self.storage {
            storage_id(&mut p, storage);
            p.check("storage", self.full, || {
                "a linked clone (`full = false`) stays on its template's storage; PVE refuses a `storage`".into()
            });
        }
        p.finish()
    }
}

/// Environment variables for an application container (PVE's `env`, NUL separated).
pub type Env = BTreeMap<String, String>;

/// PVE's `env` string: `KEY=value\0KEY2=value2`.
pub fn env_to_pve(env: &Env) -> String {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\0")
}

pub(crate) fn check_env(p: &mut Problems, env: &Env) {
    p.count("env", env.len(), crate::limits::ENV_VARS);
    for (key, value) in env {
        p.bytes(&format!("env.{key}"), value, crate::limits::TEXT_BYTES);
        p.check(
            &format!("env.{key}"),
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            || format!("`{key}` is not a variable name (letters, digits, `_`)"),
        );
        p.check(&format!("env.{key}"), !value.chars().any(|c| c.is_control() && c != '\t'), || {
            "the value holds a control character (a newline?)".into()
        });
    }
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_names_its_volume_and_its_faults() {
        let oci = TemplateSource::Oci(OciImage {
            reference: "docker.io/library/nginx:1.27".into(),
            storage: "local".into(),
            filename: None,
        });
        assert_eq!(oci.volid(), "local:vztmpl/docker.io_library_nginx_1.27.tar");
        let evil =
            OciImage { reference: "evil.example/library/nginx:1.27".into(), storage: "local".into(), filename: None };
        assert_eq!(evil.default_filename(), "evil.example_library_nginx_1.27.tar");
        let short = OciImage { reference: "nginx:1.27".into(), storage: "local".into(), filename: None };
        assert_eq!(short.default_filename(), "docker.io_library_nginx_1.27.tar", "the same image, the same file");
        let port =
            OciImage { reference: "registry.lan:5000/app/web:2".into(), storage: "local".into(), filename: None };
        assert_eq!(port.parts(), ("registry.lan:5000".into(), "app/web".into(), "2".into()));
        oci.validate().unwrap();
        let bad = TemplateSource::Download(Download {
            url: "ftp://example.com/x.tar.zst".into(),
            checksum: "abc".into(),
            algorithm: ChecksumAlgorithm::Sha512,
            storage: "local".into(),
            filename: "../x".into(),
        });
        let fields: Vec<String> = bad.validate().unwrap_err().0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["url", "checksum", "filename"]);
        for (reference, ok) in [
            ("docker.io/library/nginx:1.27", true),
            ("nginx:latest", true),
            ("registry.example.com:5000/team/app:v1.2", true),
            ("docker.io/library/nginx", false),
            ("Docker.io/Library/Nginx:1", false),
            ("docker.io//nginx:1", false),
        ] {
            assert_eq!(oci_reference(reference), ok, "{reference}");
        }
        let linked = CloneSpec {
            from: CloneFrom::Vmid(Vmid::new(9000).unwrap()),
            full: false,
            snapshot: None,
            storage: Some("fast".into()),
            keep_key: false,
        };
        assert_eq!(linked.validate().unwrap_err().0[0].field, "storage");
        assert_eq!(env_to_pve(&Env::from([("A".into(), "1".into()), ("B".into(), "x y".into())])), "A=1\0B=x y");
    }
}
