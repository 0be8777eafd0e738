//! The templates this agent fetched itself, and what it fetched them as: a ledger in
//! `state_dir/templates.json`. A template on a storage is a cache every job shares, and anyone
//! who may write the storage (another PVE user, a job fetching some other file under the same
//! name) can put other bytes under its name. So a file found there is used only when the
//! ledger vouches for it: fetched by this agent as the same thing (the same checksum, the same
//! catalogue entry, the same image reference), and unchanged since (the size and ctime PVE
//! reports). Anything else is fetched again, which PVE verifies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use pvefleet_schemas::source::TemplateSource;
use serde::{Deserialize, Serialize};

/// One file as this agent fetched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fetched {
    /// What it was fetched as ([`identity`]).
    identity: String,
    size: u64,
    ctime: i64,
}

/// What a source is, for the ledger: a download by its digest, an appliance by its catalogue
/// name, an OCI image by its whole reference. Two sources with one identity are one file.
pub fn identity(source: &TemplateSource) -> String {
    match source {
        TemplateSource::Download(d) => format!("download:{}:{}", d.algorithm.as_str(), d.checksum.to_ascii_lowercase()),
        TemplateSource::Appliance(a) => format!("appliance:{}", a.name),
        TemplateSource::Oci(o) => format!("oci:{}", o.reference),
    }
}

/// The ledger, shared by every job of the agent.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    files: Mutex<BTreeMap<String, Fetched>>,
}

impl Ledger {
    /// The ledger in `state_dir` (empty when there is none; one that cannot be read is started
    /// afresh, which only means fetching again).
    pub fn load(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join("templates.json");
        let files = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %pvefleet_schemas::report::error_chain(&e), "the template ledger cannot be read; starting afresh");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Self { path, files: Mutex::new(files) }
    }

    /// Whether `volid`, as the storage lists it now (`size`, `ctime`), is what this agent
    /// fetched as `identity`.
    pub fn vouches(&self, volid: &str, identity: &str, size: u64, ctime: i64) -> bool {
        let files = self.files.lock().expect("the ledger");
        files.get(volid).is_some_and(|f| f.identity == identity && f.size == size && f.ctime == ctime)
    }

    /// Records that `volid` (now `size` bytes, `ctime`) was fetched as `identity`, and writes
    /// the ledger (atomically: a crash leaves the old one or the new one).
    pub fn record(&self, volid: &str, identity: &str, size: u64, ctime: i64) -> std::io::Result<()> {
        let mut files = self.files.lock().expect("the ledger");
        files.insert(volid.to_owned(), Fetched { identity: identity.to_owned(), size, ctime });
        let text = serde_json::to_vec_pretty(&*files).expect("the ledger serializes");
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_vouched_for_only_as_it_was_fetched_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::load(dir.path());
        assert!(!ledger.vouches("local:vztmpl/a.tar.zst", "download:sha256:aa", 10, 1));
        ledger.record("local:vztmpl/a.tar.zst", "download:sha256:aa", 10, 1).unwrap();
        assert!(ledger.vouches("local:vztmpl/a.tar.zst", "download:sha256:aa", 10, 1));
        assert!(!ledger.vouches("local:vztmpl/a.tar.zst", "download:sha256:bb", 10, 1), "another digest");
        assert!(!ledger.vouches("local:vztmpl/a.tar.zst", "download:sha256:aa", 11, 1), "rewritten");
        assert!(!ledger.vouches("local:vztmpl/a.tar.zst", "download:sha256:aa", 10, 2), "replaced");
        let again = Ledger::load(dir.path());
        assert!(again.vouches("local:vztmpl/a.tar.zst", "download:sha256:aa", 10, 1), "kept across restarts");
        std::fs::write(dir.path().join("templates.json"), "not json").unwrap();
        assert!(!Ledger::load(dir.path()).vouches("local:vztmpl/a.tar.zst", "download:sha256:aa", 10, 1));
    }
}
