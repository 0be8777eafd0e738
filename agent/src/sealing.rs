//! The agent's own keys. Its identity (`state_dir/identity.key`, ed25519) signs its
//! heartbeats; an admin enrolls it. Its sealing key: made at its first start in `state_dir/sealing.key` (mode
//! 0600, never sent anywhere), its public half shown in every heartbeat. Root passwords for
//! this node arrive sealed to it; the agent seals its per-job SSH keys to it before they go
//! into a checkpoint.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use pvefleet_schemas::seal::SecretKey;
use pvefleet_schemas::signing::Identity;

/// The key in `state_dir`, if the agent has made one.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<SecretKey>> {
    let path = state_dir.join("sealing.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretKey::from_text(&text).map(Some).map_err(|e| {
            anyhow::anyhow!("{} is not a sealing key ({e}); move it away to make a new one", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// The key in `state_dir`, made (and the directory with it) if there is none yet.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<SecretKey> {
    if let Some(key) = load(state_dir)? {
        return Ok(key);
    }
    let key = SecretKey::generate();
    if !write_once(state_dir, "sealing.key", key.to_text().expose())? {
        return load(state_dir)?
            .ok_or_else(|| anyhow::anyhow!("{}/sealing.key vanished as it was made", state_dir.display()));
    }
    tracing::info!(path = %state_dir.join("sealing.key").display(), fingerprint = %key.public().fingerprint(), "made this agent's sealing key");
    Ok(key)
}

/// The agent's signing identity in `state_dir/identity.key`, if made: what its heartbeats are
/// signed with, enrolled by an admin (`pvefleet nodes enroll`).
pub fn load_identity(state_dir: &Path) -> anyhow::Result<Option<Identity>> {
    let path = state_dir.join("identity.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => Identity::from_text(&text).map(Some).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an identity ({e}); move it away to make a new one (and enroll it again)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// The agent's identity, made once like its sealing key.
pub fn load_or_create_identity(state_dir: &Path) -> anyhow::Result<Identity> {
    if let Some(me) = load_identity(state_dir)? {
        return Ok(me);
    }
    let me = Identity::generate();
    if !write_once(state_dir, "identity.key", me.to_text().expose())? {
        return load_identity(state_dir)?
            .ok_or_else(|| anyhow::anyhow!("{}/identity.key vanished as it was made", state_dir.display()));
    }
    tracing::info!(key = %me.public(), "made this agent's identity");
    Ok(me)
}

/// Writes `text` as `state_dir/name` (0600) unless it is there already (then `false`): written
/// whole to a file of its own, then linked into place, which fails if a key is there already:
/// nobody (a second agent starting at once, `--print-key`) ever reads a half-written key, a
/// crash mid-write leaves no empty key behind, and two agents starting at once cannot both
/// make one.
fn write_once(state_dir: &Path, name: &str, text: &str) -> anyhow::Result<bool> {
    std::fs::create_dir_all(state_dir).map_err(|e| anyhow::anyhow!("making {}: {e}", state_dir.display()))?;
    let path = state_dir.join(name);
    let tmp = state_dir.join(format!(".{name}.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        writeln!(file, "{text}")?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(anyhow::anyhow!("writing {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_create(&state).unwrap();
        let mode = std::fs::metadata(state.join("sealing.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&state).unwrap().public(), first.public());
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["sealing.key"], "no file but the key is left");
        std::fs::write(state.join("sealing.key"), "nonsense").unwrap();
        assert!(load_or_create(&state).unwrap_err().to_string().contains("not a sealing key"));
    }
}
