//! A NATS `.creds` file (a user JWT and its nkey seed, as `nsc` writes them) used to sign in,
//! read again at every connect and reconnect: a rotated file is taken without a restart, and
//! a revoked user's file replaced on disk is never presented again.

use std::path::{Path, PathBuf};

use async_nats::{Auth, AuthError, ConnectOptions};

/// The JWT and the seed in a `.creds` file's text.
pub fn parse(text: &str) -> Result<(String, String), String> {
    let block = |begin: &str| {
        let mut lines = text.lines().skip_while(|l| !(l.starts_with("-----BEGIN") && l.contains(begin)));
        lines.next()?;
        lines.map(str::trim).find(|l| !l.is_empty()).map(str::to_owned)
    };
    let jwt = block("NATS USER JWT").ok_or("no user JWT in it")?;
    let seed = block("USER NKEY SEED").ok_or("no user nkey seed in it")?;
    Ok((jwt, seed))
}

/// Signs the server's nonce with the seed in `path` and presents its JWT, reading the file now.
fn sign_in(path: &Path, nonce: &[u8]) -> Result<Auth, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::new(format!("reading {}: {e}", path.display())))?;
    let (jwt, seed) = parse(&text).map_err(|e| AuthError::new(format!("{}: {e}", path.display())))?;
    let key = nkeys::KeyPair::from_seed(&seed).map_err(|e| AuthError::new(format!("{}: {e}", path.display())))?;
    let signature = key.sign(nonce).map_err(AuthError::new)?;
    let mut auth = Auth::new();
    auth.jwt = Some(jwt);
    auth.signature = Some(signature);
    Ok(auth)
}

/// Connect options that sign in with the `.creds` file at `path`, read at every (re)connect;
/// the file is checked now so a bad path fails at start, naming it.
pub fn options(path: &Path) -> Result<ConnectOptions, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let path: PathBuf = path.to_owned();
    Ok(ConnectOptions::with_auth_callback(move |nonce| {
        let path = path.clone();
        async move { sign_in(&path, &nonce) }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_creds_file_gives_its_jwt_and_seed() {
        let text = "-----BEGIN NATS USER JWT-----\neyJ0.eyJq.sig\n------END NATS USER JWT------\n\n\
                    ************************* IMPORTANT *************************\n\n\
                    -----BEGIN USER NKEY SEED-----\nSUASEED\n------END USER NKEY SEED------\n";
        assert_eq!(super::parse(text).unwrap(), ("eyJ0.eyJq.sig".to_owned(), "SUASEED".to_owned()));
        assert!(super::parse("nothing").unwrap_err().contains("JWT"));
    }
}
