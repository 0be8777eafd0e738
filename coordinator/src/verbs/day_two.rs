//! `pvefleet update`, `resize`, `start`, `shutdown`, `stop`, `reboot`: a day-two job for one
//! container, routed to the node the inventory says it is on now, or (`--select`) a rollout
//! over many ([`crate::rollout`]). Published like every job (recorded first, dedup id,
//! `--request-id`), signed by the operator.

use std::collections::BTreeMap;

use pvefleet_schemas::day_two::parse_size;
use pvefleet_schemas::lxc::{Features, MountPoint, Nic, Startup};
use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{ConfigChange, DayTwoOptions, HumanDuration, PowerAction};

use crate::bus::Nats;
use crate::cli::{Cli, PowerArgs, ResizeArgs, TargetArgs, UpdateArgs};
use crate::day_two::{Ask, make, submit};
use crate::inventory::{self, Naming};
use crate::publishing;
use crate::spec::BadInput;
use crate::store::Store;
use crate::{Failure, Outcome, follow};

pub async fn update(cli: &Cli, args: &UpdateArgs) -> Outcome {
    let guard = if args.snapshot_before {
        let on_failure = match &args.on_failure {
            Some(text) => text.parse().map_err(|e: String| BadInput::field("--on-failure", e))?,
            None => pvefleet_schemas::OnFailure::Rollback,
        };
        Some(pvefleet_schemas::Guard { on_failure, keep_snapshot: args.keep_snapshot })
    } else {
        None
    };
    let ask = Ask::Update {
        change: Box::new(change_of(args)?),
        restart: args.restart.parse().map_err(|e: String| BadInput::field("--restart", e))?,
        guard,
    };
    run(cli, &args.target, &ask, &args.shutdown_timeout).await
}

pub async fn resize(cli: &Cli, args: &ResizeArgs) -> Outcome {
    // `resize --node N --vmid V rootfs=20G`: the size is the only word.
    let mut target = args.target.clone();
    let size = match (&args.size, &target.target) {
        (Some(size), _) => size.clone(),
        (None, Some(only)) if only.contains('=') => target.target.take().expect("just matched"),
        (None, _) => return Err(BadInput::field("DISK=SIZE", "is required, e.g. `rootfs=20G`").into()),
    };
    let (disk, size) = size
        .split_once('=')
        .ok_or_else(|| BadInput::field("DISK=SIZE", format!("`{size}` is not like `rootfs=20G`")))?;
    let size_bytes = parse_size(size).map_err(|e| BadInput::field("DISK=SIZE", e))?;
    let ask = Ask::Resize { disk: disk.trim().to_owned(), size_bytes };
    run(cli, &target, &ask, "60s").await
}

pub async fn power(cli: &Cli, args: &PowerArgs, action: PowerAction) -> Outcome {
    if args.force && action != PowerAction::Shutdown {
        return Err(BadInput::field("--force", "only a shutdown can be forced").into());
    }
    run(cli, &args.target, &Ask::Power { action, force: args.force }, &args.timeout).await
}

/// The change `update`'s flags ask for; a bad flag is named.
fn change_of(args: &UpdateArgs) -> Result<ConfigChange, Failure> {
    let mut nics = BTreeMap::new();
    for net in &args.nets {
        let (key, spec) =
            net.split_once('=').ok_or_else(|| BadInput::field("--net", format!("`{net}` is not `netN=SPEC`")))?;
        let nic = if spec == "none" {
            None
        } else {
            Some(Nic::from_pve(spec).map_err(|e| BadInput::field("--net", format!("{key}: {e}")))?)
        };
        nics.insert(key.to_owned(), nic);
    }
    let mut mounts = BTreeMap::new();
    for mount in &args.mounts {
        let (key, spec) =
            mount.split_once('=').ok_or_else(|| BadInput::field("--mount", format!("`{mount}` is not `mpN=SPEC`")))?;
        let mp = MountPoint::from_pve(spec).map_err(|e| BadInput::field("--mount", format!("{key}: {e}")))?;
        mounts.insert(key.to_owned(), mp);
    }
    let nameservers = match args.nameservers.as_deref() {
        None => None,
        Some("none") => Some(Vec::new()),
        Some(list) => Some(
            list.split(',')
                .map(|s| s.trim().parse().map_err(|_| BadInput::field("--nameservers", format!("`{s}` is not an IP"))))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let tags =
        args.tags.as_ref().map(|t| t.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect());
    let startup = args
        .startup
        .as_deref()
        .map(|s| Startup::from_pve(s).map_err(|e| BadInput::field("--startup", e)))
        .transpose()?;
    let features = args
        .features
        .as_deref()
        .map(|s| Features::from_pve(s).map_err(|e| BadInput::field("--features", e)))
        .transpose()?;
    Ok(ConfigChange {
        memory: args.memory,
        swap: args.swap,
        cores: args.cores,
        cpulimit: args.cpulimit,
        cpuunits: args.cpuunits,
        nics,
        nameservers,
        tags,
        description: args.description.clone(),
        onboot: args.onboot,
        startup,
        protection: args.protection,
        mounts,
        features,
    })
}

fn options(t: &TargetArgs, shutdown: &str) -> Result<DayTwoOptions, Failure> {
    let task: HumanDuration =
        t.publish.task_timeout.parse().map_err(|e: String| BadInput::field("--task-timeout", e))?;
    let shutdown: HumanDuration = shutdown.parse().map_err(|e: String| BadInput::field("--timeout", e))?;
    Ok(DayTwoOptions { shutdown_timeout: shutdown, task_timeout: task })
}

pub(crate) async fn run(cli: &Cli, t: &TargetArgs, ask: &Ask, shutdown: &str) -> Outcome {
    let options = options(t, shutdown)?;
    let store = crate::open_store(cli).await?;
    let (_, signer) = crate::identity::load(cli)?;
    let nats = Nats::new(cli);
    if let Some(selection) = &t.select {
        if t.target.is_some() {
            return Err(BadInput::field("--select", "names many containers: give it or a TARGET, not both").into());
        }
        let selection: inventory::Selection = selection.parse().map_err(|e: String| BadInput::field("--select", e))?;
        if t.plan {
            let chosen = inventory::select(nats.js().await?, &selection).await?;
            let mut ok = true;
            for (i, entry) in chosen.iter().enumerate() {
                let (node, target) = inventory::target_of(&store, entry, t.force_marker).await?;
                ok &= plan(&nats, &signer, &make(ask, node, target, options), t.publish.json, (i + 1, chosen.len()))
                    .await?;
            }
            return if ok { Ok(()) } else { Err(Failure::Quiet) };
        }
        let plan = crate::rollout::Rollout {
            selection,
            max_parallel: t.max_parallel,
            canary: t.canary,
            keep_going: t.keep_going,
            dry_run: t.dry_run,
            request_id: t.publish.request_id.clone(),
            force_marker: t.force_marker,
            json: t.publish.json,
        };
        return crate::rollout::run(&store, &nats, &signer, &plan, ask, options).await;
    }
    if let Some(key) = &t.publish.request_id
        && let Some(row) = earlier(&store, &nats, key, &signer).await?
    {
        return finish(cli, t, &row.job_id, &row.spec).await;
    }
    let entries = inventory::read(nats.js().await?).await?;
    let naming = Naming { target: t.target.clone(), node: t.node.clone(), vmid: t.vmid };
    let entry = inventory::find(&entries, &naming)?;
    let (node, target) = inventory::target_of(&store, entry, t.force_marker).await?;
    let message = make(ask, node, target, options);
    if t.plan {
        return if plan(&nats, &signer, &message, t.publish.json, (1, 1)).await? {
            Ok(())
        } else {
            Err(Failure::Quiet)
        };
    }
    message.validate()?;
    let (id, json) = submit(&store, &nats, &signer, &message, t.publish.request_id.as_deref()).await?;
    finish(cli, t, &id, &json).await
}

/// Asks the container's agent what `message` would find and send, and shows it; whether
/// every check passed.
pub(crate) async fn plan(
    nats: &Nats<'_>,
    me: &Identity,
    message: &pvefleet_schemas::DayTwoJob,
    json: bool,
    (n, of): (usize, usize),
) -> Result<bool, Failure> {
    let request = pvefleet_schemas::ChangePlanRequest::new(message.clone());
    // A move's plan is asked of the node it would go to.
    let node = match message {
        pvefleet_schemas::DayTwoJob::Move(m) => &m.to,
        other => other.node(),
    };
    let reply = crate::plans::ask(nats.client().await?, me, node, &request).await?;
    if json {
        println!("{}", serde_json::to_string(&reply).expect("a plan serializes"));
    } else {
        let name = match message.target() {
            Some(t) => t.hostname.clone().unwrap_or_else(|| t.vmid.to_string()),
            None => message.vmid().map_or_else(|| "a new container".to_owned(), |v| v.to_string()),
        };
        crate::plans::show(&reply, &name, n, u32::try_from(of).unwrap_or(u32::MAX));
    }
    Ok(reply.ok)
}

/// The job recorded before under request `key`, published again if that was never confirmed.
pub(crate) async fn earlier(
    store: &Store,
    nats: &Nats<'_>,
    key: &str,
    signer: &Identity,
) -> Result<Option<crate::store::job::Model>, Failure> {
    if let Some(row) = store.job_by_request(key).await?
        && !row.kind.is_day_two()
    {
        return Err(BadInput::field(
            "--request-id",
            format!("`{key}` is the request of {} job {}", row.kind, row.job_id),
        )
        .into());
    }
    let again = async |row: &crate::store::job::Model, _: &async_nats::jetstream::Context| {
        let message = crate::day_two::decode(row.kind, &row.spec)
            .map_err(|e| anyhow::anyhow!("stored job {}: {e}", row.job_id))?;
        crate::day_two::outgoing(&message, signer)
    };
    publishing::earlier(store, nats, key, again).await
}

pub(crate) async fn finish(cli: &Cli, t: &TargetArgs, job_id: &str, json: &str) -> Outcome {
    follow::print_then_follow(cli, job_id, json, t.publish.json, t.publish.watch).await
}
