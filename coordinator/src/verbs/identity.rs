//! `pvefleet identity new|show` and `pvefleet sign`: an operator's (or a service's) ed25519
//! signing identity, and a request signed with it for scripts and CI (the format any client
//! can follow is in `schemas/SIGNING.md`).

use std::io::Read as _;

use crate::cli::Cli;
use crate::{Failure, Outcome, identity};

pub fn new(cli: &Cli, force: bool) -> Outcome {
    let path = identity::path(cli)?;
    let made = identity::create(&path, force)?;
    let key = made.public();
    println!("made the identity {}", path.display());
    println!("key id:     {}", key.id());
    println!("public key: {key}");
    Ok(())
}

pub fn show(cli: &Cli) -> Outcome {
    let (path, me) = identity::load(cli)?;
    let key = me.public();
    println!("identity:   {}", path.display());
    println!("key id:     {}", key.id());
    println!("public key: {key}");
    Ok(())
}

pub fn sign(cli: &Cli, valid: u32) -> Outcome {
    let (_, me) = identity::load(cli)?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?;
    let mut message: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("standard input is not JSON: {e}")))?;
    me.sign(&mut message, valid).map_err(|e| Failure::Usage(format!("--valid: {e}")))?;
    println!("{}", serde_json::to_string(&message).expect("JSON serializes"));
    Ok(())
}
