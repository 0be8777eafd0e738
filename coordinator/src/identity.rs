//! The operator's signing identity on disk: where it lives (`--identity`, `PVEFLEET_IDENTITY`,
//! or `identity` in the user's config directory), made once with mode 0600 and never
//! overwritten by accident, and read only when no one else may read it.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use pvefleet_schemas::signing::Identity;

use crate::Failure;
use crate::cli::Cli;

/// The identity file this command uses.
pub fn path(cli: &Cli) -> Result<PathBuf, Failure> {
    match &cli.identity {
        Some(path) => Ok(path.clone()),
        None => dirs::config_dir().map(|d| d.join("pvefleet").join("identity")).ok_or_else(|| {
            Failure::Usage("no config directory for this user; give --identity FILE or PVEFLEET_IDENTITY".into())
        }),
    }
}

/// Makes a new identity at `path`: written whole to a file of its own, then moved into place,
/// so no reader ever sees half a key; an identity already there is kept unless `force`.
pub fn create(path: &Path, force: bool) -> Result<Identity, Failure> {
    if path.exists() && !force {
        return Err(Failure::Usage(format!(
            "{} already holds an identity; give --force to replace it (what it signed stays signed by it)",
            path.display()
        )));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("making {}: {e}", dir.display()))?;
    let me = Identity::generate();
    let tmp = dir.join(format!(".identity.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        writeln!(file, "{}", me.to_text().expose())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::anyhow!("writing {}: {e}", path.display()).into());
    }
    Ok(me)
}

/// The identity this command signs with; a missing one says how to make it, and one that group
/// or others may read is refused.
pub fn load(cli: &Cli) -> Result<(PathBuf, Identity), Failure> {
    let path = path(cli)?;
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::Usage(format!(
                "no identity at {}: make one with `pvefleet identity new` (or give --identity FILE)",
                path.display()
            )));
        }
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display()).into()),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::Usage(format!(
            "{} may be read by group or others (mode {mode:04o}); it is a secret key: `chmod 600` it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let me = Identity::from_text(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    Ok((path, me))
}
