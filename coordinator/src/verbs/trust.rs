//! `pvefleet policy show|set`, `pvefleet whoami` and `pvefleet audit`: the admin-signed policy
//! the agents follow, what it lets this identity do, and the audit trail of every decision.

use std::path::Path;

use async_nats::jetstream;
use pvefleet_schemas::trust::{Decision, Policy};

use crate::cli::Cli;
use crate::trust::{AuditFilter, audit_records, current_policy, set_policy};
use crate::{Failure, Outcome, identity};

pub async fn policy_show(cli: &Cli, json: bool) -> Outcome {
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let Some(current) = current_policy(&js).await? else {
        println!("no policy yet: agents refuse every request. An admin sets one with `pvefleet policy set FILE`.");
        return Ok(());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&current.policy).expect("a policy serializes"));
        return Ok(());
    }
    println!("policy serial {}, signed by {} ({})", current.policy.serial, current.signed_by.id(), current.signed_by);
    println!("(agents take it only if that key is in their agent.toml [trust] admin_keys)\n");
    print!("{}", toml::to_string_pretty(&current.policy).map_err(|e| anyhow::anyhow!("{e}"))?);
    Ok(())
}

pub async fn policy_set(cli: &Cli, file: &Path) -> Outcome {
    let text = std::fs::read_to_string(file).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    let policy = Policy::from_text(&text).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    let (_, admin) = identity::load(cli)?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    if let Some(before) = current_policy(&js).await?
        && before.signed_by != admin.public()
    {
        eprintln!(
            "note: the policy there was signed by {}, and you sign with {}: agents take yours only if your key is \
             in their [trust] admin_keys",
            before.signed_by.id(),
            admin.public().id()
        );
    }
    let serial = set_policy(&js, &admin, policy).await?;
    println!("policy serial {serial} set, signed by {}; every agent takes it at once", admin.public().id());
    Ok(())
}

pub async fn whoami(cli: &Cli) -> Outcome {
    let (path, me) = identity::load(cli)?;
    let key = me.public();
    println!("identity:   {}", path.display());
    println!("key id:     {}", key.id());
    println!("public key: {key}");
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let Some(current) = current_policy(&js).await? else {
        println!("rights:     none (there is no policy yet; an admin sets one with `pvefleet policy set FILE`)");
        return Ok(());
    };
    match current.policy.grant(&key.id()) {
        None => {
            println!("rights:     none: this key is not in the policy (serial {})", current.policy.serial);
            println!("            an admin adds it with a [[signer]] entry: name = \"…\", key = \"{key}\"");
        }
        Some((grant, _)) => {
            println!("policy:     serial {}, signed by {}", current.policy.serial, current.signed_by.id());
            println!("name:       {}", grant.name);
            let kinds: Vec<&str> = grant.kinds.iter().map(|k| k.as_str()).collect();
            println!("may:        {}", kinds.join(", "));
            println!("on nodes:   {}", grant.nodes.join(", "));
            let yes = |b: bool| if b { "yes" } else { "no" };
            println!(
                "deploy:     packages {}, files {}, scripts {}",
                yes(grant.packages),
                yes(grant.files),
                yes(grant.scripts)
            );
            println!(
                "dangerous:  host paths {}, privileged {}, existing volumes {}, clone from {}",
                yes(grant.host_paths),
                yes(grant.privileged),
                yes(grant.existing_volumes),
                serde_json::to_value(grant.clone_from)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
            let list = |l: &[String]| if l.is_empty() { "none".to_owned() } else { l.join(", ") };
            println!("features:   nesting, {}", list(&grant.features));
            println!("downloads:  {}", list(&grant.download_hosts));
            println!("registries: {}", list(&grant.oci_registries));
        }
    }
    Ok(())
}

pub async fn audit(
    cli: &Cli,
    signer: Option<String>,
    node: Option<String>,
    since: Option<String>,
    json: bool,
) -> Outcome {
    let since =
        since.map(|s| parse_since(&s).map_err(|e| Failure::Usage(format!("--since `{s}`: {e}")))).transpose()?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    let records = audit_records(&js, &AuditFilter { signer, node, since }).await?;
    if json {
        for r in &records {
            println!("{}", serde_json::to_string(r).expect("a record serializes"));
        }
        return Ok(());
    }
    if records.is_empty() {
        println!("no audit records match");
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<9} {:<8} {:<26} {:<16} {:<10} {:<9} MESSAGE",
        "AT", "NODE", "ACTION", "DECISION", "JOB", "SIGNER", "USER", "RULE"
    );
    for r in &records {
        let at = r.at.to_string();
        println!(
            "{:<20} {:<8} {:<9} {:<8} {:<26} {:<16} {:<10} {:<9} {}",
            at.get(..19).unwrap_or(&at),
            r.node.as_ref().map_or("-", |n| n.as_str()),
            r.action,
            match r.decision {
                Decision::Accepted => "accepted",
                Decision::Refused => "REFUSED",
            },
            r.job_id.map_or_else(|| "-".into(), |j| j.to_string()),
            r.signer_name
                .clone()
                .or_else(|| r.signer.as_ref().map(|s| s.chars().take(16).collect()))
                .unwrap_or_else(|| "unsigned".into()),
            r.user.as_deref().unwrap_or("-"),
            r.rule.as_deref().unwrap_or("-"),
            crate::follow::printable(&r.message),
        );
    }
    Ok(())
}

/// `--since`: RFC 3339, or a duration back from now (`30m`, `2h`, `7d`).
fn parse_since(text: &str) -> Result<time::OffsetDateTime, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let back: pvefleet_schemas::HumanDuration =
        text.parse().map_err(|e| format!("neither RFC 3339 nor a duration like 2h ({e})"))?;
    Ok(time::OffsetDateTime::now_utc() - back.0)
}
