//! `pvefleet users add|passwd|disable|enable|list`: the web view's logins and roles.

use serde_json::json;

use crate::cli::Cli;
use crate::users::{Role, check_name, check_password, hash};
use crate::{Failure, Outcome};

/// The new password: one line of stdin, or asked for twice on the terminal.
fn new_password(from_stdin: bool) -> Result<zeroize::Zeroizing<String>, Failure> {
    let password = if from_stdin {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin().read_line(&mut line).map_err(|e| anyhow::anyhow!("reading the password from stdin: {e}"))?;
        zeroize::Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        let first = zeroize::Zeroizing::new(
            rpassword::prompt_password("New password: ").map_err(|e| anyhow::anyhow!("reading the password: {e}"))?,
        );
        let again = zeroize::Zeroizing::new(
            rpassword::prompt_password("Again: ").map_err(|e| anyhow::anyhow!("reading the password: {e}"))?,
        );
        if *first != *again {
            return Err(Failure::Usage("the two passwords differ; nothing changed".into()));
        }
        first
    };
    check_password(&password).map_err(|e| Failure::Usage(format!("the password: {e}")))?;
    Ok(password)
}

pub async fn add(cli: &Cli, name: &str, role: &str, password_stdin: bool) -> Outcome {
    check_name(name).map_err(Failure::Usage)?;
    let role =
        Role::parse(role).ok_or_else(|| Failure::Usage(format!("--role `{role}`: viewer, operator or admin")))?;
    let store = crate::open_store(cli).await?;
    if store.user(name).await?.is_some() {
        return Err(Failure::Usage(format!(
            "user `{name}` exists; `pvefleet users passwd {name}` sets a new password"
        )));
    }
    let password = new_password(password_stdin)?;
    if !store.add_user(name, role.as_str(), &hash(&password)?).await? {
        return Err(Failure::Usage(format!("user `{name}` exists")));
    }
    println!("user {name} added ({})", role.as_str());
    Ok(())
}

pub async fn passwd(cli: &Cli, name: &str, password_stdin: bool) -> Outcome {
    let store = crate::open_store(cli).await?;
    if store.user(name).await?.is_none() {
        return Err(Failure::Usage(format!("no user `{name}`")));
    }
    let password = new_password(password_stdin)?;
    store.set_password(name, &hash(&password)?).await?;
    println!("password of {name} set; their sessions have ended");
    Ok(())
}

pub async fn disable(cli: &Cli, name: &str, disabled: bool) -> Outcome {
    let store = crate::open_store(cli).await?;
    if !store.set_disabled(name, disabled).await? {
        return Err(Failure::Usage(format!("no user `{name}`")));
    }
    if disabled {
        println!("user {name} disabled; their sessions have ended");
    } else {
        println!("user {name} enabled");
    }
    Ok(())
}

pub async fn list(cli: &Cli, as_json: bool) -> Outcome {
    let store = crate::open_store(cli).await?;
    let users = store.users().await?;
    if as_json {
        let rows: Vec<_> = users
            .iter()
            .map(|u| {
                json!({"name": u.name, "role": u.role, "disabled": u.disabled, "locked_until": u.locked_until,
                       "created_at": u.created_at})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if users.is_empty() {
        println!("No users: `pvefleet users add NAME --role operator` makes one.");
    }
    for u in &users {
        let state = match (u.disabled, &u.locked_until) {
            (true, _) => " (disabled)".to_owned(),
            (false, Some(until)) => format!(" (locked until {until})"),
            _ => String::new(),
        };
        println!("{:<20} {:<9}{state}", u.name, u.role);
    }
    Ok(())
}
