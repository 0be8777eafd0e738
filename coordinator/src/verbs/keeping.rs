//! `pvefleet snapshot` (and `snapshot delete`), `snapshots`, `rollback`, `backup`, `backups`,
//! `restore` and `move`: the keeping kinds, routed like every day-two job to the node the
//! inventory says the container is on now (a rollout with `--select` where it makes sense). A
//! move is first planned by the node it goes to ([`crate::day_two::submit`]).

use pvefleet_schemas::{DayTwoJob, ListReply, ListRequest, ListWhat, NodeName, RestoreJob, Vmid};

use super::day_two::{earlier, run};
use crate::bus::Nats;
use crate::cli::{
    BackupArgs, Cli, ListArgs, MoveArgs, RestoreArgs, RollbackArgs, SnapshotArgs, SnapshotDelete, TargetArgs,
};
use crate::day_two::{Ask, submit};
use crate::inventory::{self, Naming};
use crate::spec::BadInput;
use crate::{Failure, Outcome, follow};

/// A verb's second word (`rollback TARGET NAME`), which is its first when the container is
/// named by `--node`/`--vmid`.
fn second_word(t: &TargetArgs, word: &Option<String>, what: &str) -> Result<(TargetArgs, String), Failure> {
    let mut target = t.clone();
    match (word, &target.target) {
        (Some(w), _) => Ok((target, w.clone())),
        (None, Some(_)) if target.node.is_some() || target.select.is_some() => {
            let w = target.target.take().expect("just matched");
            Ok((target, w))
        }
        _ => Err(BadInput::field(what, "is required").into()),
    }
}

pub async fn snapshot(cli: &Cli, args: &SnapshotArgs) -> Outcome {
    match &args.delete {
        Some(SnapshotDelete::Delete { target, name }) => {
            let (target, name) = second_word(target, name, "NAME")?;
            run(cli, &target, &Ask::DeleteSnapshot { name }, "60s").await
        }
        None => {
            let ask = Ask::Snapshot { name: args.name.clone(), description: args.description.clone() };
            run(cli, &args.target, &ask, "60s").await
        }
    }
}

pub async fn rollback(cli: &Cli, args: &RollbackArgs) -> Outcome {
    let (target, name) = second_word(&args.target, &args.name, "NAME")?;
    run(cli, &target, &Ask::Rollback { name, start: args.start }, "60s").await
}

pub async fn backup(cli: &Cli, args: &BackupArgs) -> Outcome {
    let mode = args.mode.parse().map_err(|e: String| BadInput::field("--mode", e))?;
    let ask = Ask::Backup { storage: args.storage.clone(), mode, protected: args.protected, keep_last: args.keep_last };
    run(cli, &args.target, &ask, "60s").await
}

pub async fn move_to(cli: &Cli, args: &MoveArgs) -> Outcome {
    let to = NodeName::new(&args.to).map_err(|e| BadInput::field("--to", e.to_string()))?;
    run(cli, &args.target, &Ask::Move { to, target_storage: args.target_storage.clone() }, &args.timeout).await
}

/// `snapshots` and `backups`: asked of the container's agent, read only.
pub async fn list(cli: &Cli, args: &ListArgs, what: ListWhat) -> Outcome {
    let (_, signer) = crate::identity::load(cli)?;
    let nats = Nats::new(cli);
    let entries = inventory::read(nats.js().await?).await?;
    let naming = Naming { target: args.target.clone(), node: args.node.clone(), vmid: args.vmid };
    let entry = inventory::find(&entries, &naming)?;
    let mut request = ListRequest::new(what, entry.node.clone(), entry.vmid);
    request.storage = args.storage.clone();
    let reply: ListReply = crate::plans::ask_for(nats.client().await?, &signer, &entry.node, &request).await?;
    if let Some(why) = reply.error {
        return Err(anyhow::anyhow!("the agent of {} could not list them: {why}", entry.node).into());
    }
    if args.json {
        println!("{}", serde_json::to_string(&reply.items).expect("a list serializes"));
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    let name = if what == ListWhat::Snapshots { "SNAPSHOT" } else { "BACKUP" };
    table.set_header([name, "TAKEN", "BY JOB", "SIZE", "NOTES"]);
    for item in &reply.items {
        let taken = time::OffsetDateTime::from_unix_timestamp(item.time)
            .map(|t| pvefleet_schemas::Timestamp(t).to_string())
            .unwrap_or_default();
        let mut notes =
            item.description.lines().filter(|l| !l.starts_with("pvefleet job ")).collect::<Vec<_>>().join(" ");
        if item.protected {
            notes = format!("(protected) {notes}");
        }
        if let Some(state) = &item.state {
            notes = format!("({state}) {notes}");
        }
        let size = item.size.map(pvefleet_schemas::day_two::size_text).unwrap_or_default();
        let job = item.job.map(|j| j.to_string()).unwrap_or_else(|| "-".into());
        table.add_row([item.name.clone(), taken, job, size, notes]);
    }
    println!(
        "{} {} of container {} ({}) on {}",
        reply.items.len(),
        name.to_lowercase() + "(s)",
        entry.vmid,
        entry.hostname,
        entry.node
    );
    if !reply.items.is_empty() {
        println!("{table}");
    }
    Ok(())
}

pub async fn restore(cli: &Cli, args: &RestoreArgs) -> Outcome {
    let store = crate::open_store(cli).await?;
    let (_, signer) = crate::identity::load(cli)?;
    let nats = Nats::new(cli);
    if let Some(key) = &args.publish.request_id
        && let Some(row) = earlier(&store, &nats, key, &signer).await?
    {
        return follow::print_then_follow(cli, &row.job_id, &row.spec, args.publish.json, args.publish.watch).await;
    }
    let placeholder = NodeName::new("restore").expect("a valid node name");
    let mut job = RestoreJob::new(placeholder, args.backup.clone());
    let entries = inventory::read(nats.js().await?).await?;
    job.node = if let Some(over) = &args.over {
        let entry = inventory::find(&entries, &Naming { target: Some(over.clone()), ..Default::default() })?;
        let (node, target) = inventory::target_of(&store, entry, args.force_marker).await?;
        job.over = Some(target);
        node
    } else if let Some(node) = &args.node {
        NodeName::new(node).map_err(|e| BadInput::field("--node", e.to_string()))?
    } else {
        let of = job.backed_up_vmid();
        match entries.iter().find(|e| Some(e.vmid) == of) {
            Some(e) => e.node.clone(),
            None => {
                return Err(BadInput::field(
                    "--node",
                    "is needed: the container the backup was taken of is in no node's inventory".to_owned(),
                )
                .into());
            }
        }
    };
    job.vmid =
        args.to_vmid.map(|v| Vmid::new(v).map_err(|e| BadInput::field("--to-vmid", e.to_string()))).transpose()?;
    job.hostname = args.hostname.clone();
    job.storage = args.storage.clone();
    job.start = args.start;
    job.options.task_timeout =
        args.publish.task_timeout.parse().map_err(|e: String| BadInput::field("--task-timeout", e))?;
    let message = DayTwoJob::Restore(job);
    message.validate()?;
    let (id, json) = submit(&store, &nats, &signer, &message, args.publish.request_id.as_deref()).await?;
    follow::print_then_follow(cli, &id, &json, args.publish.json, args.publish.watch).await
}
