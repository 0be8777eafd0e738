//! `pvefleet update`, `resize`, `start`, `shutdown`, `stop`, `reboot`: a day-two job for one
//! container, routed to the node the inventory says it is on now, or (`--select`) a rollout
//! over many ([`crate::rollout`]). Published like every job (recorded first, dedup id,
//! `--request-id`), signed by the operator.

use std::collections::BTreeMap;

use pvefleet_schemas::day_two::parse_size;
use pvefleet_schemas::lxc::{Features, MountPoint, Nic, Startup};
use pvefleet_schemas::signing::Identity;
use pvefleet_schemas::{
    ConfigChange, ContainerTarget, DayTwoOptions, HumanDuration, JobId, NodeName, PowerAction, PowerJob, ResizeJob,
    RestartPolicy, UpdateJob,
};

use crate::bus::Nats;
use crate::cli::{Cli, PowerArgs, ResizeArgs, TargetArgs, UpdateArgs};
use crate::inventory::{self, Naming};
use crate::publishing::{self, Outgoing};
use crate::spec::BadInput;
use crate::store::{JobKind, Store};
use crate::{Failure, Outcome, follow};

/// What a day-two verb asks of each container it names.
#[derive(Debug, Clone)]
pub enum Ask {
    Update { change: Box<ConfigChange>, restart: RestartPolicy },
    Resize { disk: String, size_bytes: u64 },
    Power { action: PowerAction, force: bool },
}

/// A day-two job message of any kind.
#[derive(Debug, Clone)]
pub enum Message {
    Update(Box<UpdateJob>),
    Resize(ResizeJob),
    Power(PowerJob),
}

impl Message {
    pub fn new(ask: &Ask, node: NodeName, target: ContainerTarget, options: DayTwoOptions) -> Self {
        match ask {
            Ask::Update { change, restart } => {
                let mut job = UpdateJob::new(node, target, (**change).clone());
                job.restart = *restart;
                job.options = options;
                Message::Update(Box::new(job))
            }
            Ask::Resize { disk, size_bytes } => {
                let mut job = ResizeJob::new(node, target, disk, *size_bytes);
                job.options = options;
                Message::Resize(job)
            }
            Ask::Power { action, force } => {
                let mut job = PowerJob::new(node, target, *action);
                job.force = *force;
                job.options = options;
                Message::Power(job)
            }
        }
    }

    /// Reads a stored day-two job of `kind` back.
    pub fn decode(kind: JobKind, spec: &str) -> anyhow::Result<Self> {
        let bytes = spec.as_bytes();
        Ok(match kind {
            JobKind::Update => Message::Update(Box::new(UpdateJob::decode(bytes)?)),
            JobKind::Resize => Message::Resize(ResizeJob::decode(bytes)?),
            JobKind::Power => Message::Power(PowerJob::decode(bytes)?),
            other => anyhow::bail!("a {other} job is not a day-two job"),
        })
    }

    /// The same request as a new job (a new id and time, unsigned) for `node`.
    pub fn renewed(&self, node: NodeName) -> Self {
        let mut out = self.clone();
        let (id, at, to, auth) = match &mut out {
            Message::Update(j) => (&mut j.job_id, &mut j.submitted_at, &mut j.node, &mut j.auth),
            Message::Resize(j) => (&mut j.job_id, &mut j.submitted_at, &mut j.node, &mut j.auth),
            Message::Power(j) => (&mut j.job_id, &mut j.submitted_at, &mut j.node, &mut j.auth),
        };
        *id = JobId::new();
        *at = pvefleet_schemas::Timestamp::now();
        *to = node;
        *auth = None;
        out
    }

    /// The message as a plan request carries it.
    pub fn wire(&self) -> pvefleet_schemas::DayTwoJob {
        match self {
            Message::Update(j) => pvefleet_schemas::DayTwoJob::Update(j.clone()),
            Message::Resize(j) => pvefleet_schemas::DayTwoJob::Resize(j.clone()),
            Message::Power(j) => pvefleet_schemas::DayTwoJob::Power(j.clone()),
        }
    }

    pub fn job_id(&self) -> JobId {
        match self {
            Message::Update(j) => j.job_id,
            Message::Resize(j) => j.job_id,
            Message::Power(j) => j.job_id,
        }
    }

    pub fn node(&self) -> &NodeName {
        match self {
            Message::Update(j) => &j.node,
            Message::Resize(j) => &j.node,
            Message::Power(j) => &j.node,
        }
    }

    pub fn target(&self) -> &ContainerTarget {
        match self {
            Message::Update(j) => &j.target,
            Message::Resize(j) => &j.target,
            Message::Power(j) => &j.target,
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Message::Update(_) => JobKind::Update,
            Message::Resize(_) => JobKind::Resize,
            Message::Power(_) => JobKind::Power,
        }
    }

    fn wire_kind(&self) -> pvefleet_schemas::names::JobKind {
        use pvefleet_schemas::names::JobKind as Wire;
        match self {
            Message::Update(_) => Wire::Update,
            Message::Resize(_) => Wire::Resize,
            Message::Power(_) => Wire::Power,
        }
    }

    pub fn json(&self) -> String {
        match self {
            Message::Update(j) => serde_json::to_string(j),
            Message::Resize(j) => serde_json::to_string(j),
            Message::Power(j) => serde_json::to_string(j),
        }
        .expect("a job serializes")
    }

    pub fn validate(&self) -> Result<(), pvefleet_schemas::ValidationErrors> {
        match self {
            Message::Update(j) => j.validate(),
            Message::Resize(j) => j.validate(),
            Message::Power(j) => j.validate(),
        }
    }

    pub fn outgoing(&self, signer: &Identity) -> Result<Outgoing, Failure> {
        let kind = self.wire_kind();
        match self {
            Message::Update(j) => Outgoing::day_two(j.job_id, &j.node, kind, j, signer),
            Message::Resize(j) => Outgoing::day_two(j.job_id, &j.node, kind, j, signer),
            Message::Power(j) => Outgoing::day_two(j.job_id, &j.node, kind, j, signer),
        }
    }
}

pub async fn update(cli: &Cli, args: &UpdateArgs) -> Outcome {
    let ask = Ask::Update {
        change: Box::new(change_of(args)?),
        restart: args.restart.parse().map_err(|e: String| BadInput::field("--restart", e))?,
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
    let task: HumanDuration = t.task_timeout.parse().map_err(|e: String| BadInput::field("--task-timeout", e))?;
    let shutdown: HumanDuration = shutdown.parse().map_err(|e: String| BadInput::field("--timeout", e))?;
    Ok(DayTwoOptions { shutdown_timeout: shutdown, task_timeout: task })
}

async fn run(cli: &Cli, t: &TargetArgs, ask: &Ask, shutdown: &str) -> Outcome {
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
            let entries = inventory::read(nats.js().await?).await?;
            let chosen: Vec<_> = entries.iter().filter(|e| selection.matches(e)).collect();
            if chosen.is_empty() {
                return Err(Failure::Usage(
                    "--select matches no container in the inventory (see `pvefleet ls`)".into(),
                ));
            }
            let mut ok = true;
            for (i, entry) in chosen.iter().enumerate() {
                let (node, target) = inventory::target_of(&store, entry, t.force_marker).await?;
                ok &= plan(&nats, &signer, &Message::new(ask, node, target, options), t.json, (i + 1, chosen.len()))
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
            request_id: t.request_id.clone(),
            force_marker: t.force_marker,
            json: t.json,
        };
        return crate::rollout::run(&store, &nats, &signer, &plan, ask, options).await;
    }
    if let Some(key) = &t.request_id
        && let Some(row) = earlier(&store, &nats, key, &signer).await?
    {
        return finish(cli, t, &row.job_id, &row.spec).await;
    }
    let entries = inventory::read(nats.js().await?).await?;
    let naming = Naming { target: t.target.clone(), node: t.node.clone(), vmid: t.vmid };
    let entry = inventory::find(&entries, &naming)?;
    let (node, target) = inventory::target_of(&store, entry, t.force_marker).await?;
    let message = Message::new(ask, node, target, options);
    if t.plan {
        return if plan(&nats, &signer, &message, t.json, (1, 1)).await? { Ok(()) } else { Err(Failure::Quiet) };
    }
    message.validate()?;
    let (id, json) = submit(&store, &nats, &signer, &message, t.request_id.as_deref()).await?;
    finish(cli, t, &id, &json).await
}

/// Asks the container's agent what `message` would find and send, and shows it; whether
/// every check passed.
async fn plan(
    nats: &Nats<'_>,
    me: &Identity,
    message: &Message,
    json: bool,
    (n, of): (usize, usize),
) -> Result<bool, Failure> {
    let request = pvefleet_schemas::ChangePlanRequest::new(message.wire());
    let reply = crate::verbs::plan::ask(nats.client().await?, me, message.node(), &request).await?;
    if json {
        println!("{}", serde_json::to_string(&reply).expect("a plan serializes"));
    } else {
        let name = message.target().hostname.clone().unwrap_or_else(|| message.target().vmid.to_string());
        crate::verbs::plan::show(&reply, &name, n, u32::try_from(of).unwrap_or(u32::MAX));
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
        && !matches!(row.kind, JobKind::Update | JobKind::Resize | JobKind::Power)
    {
        return Err(BadInput::field(
            "--request-id",
            format!("`{key}` is the request of {} job {}", row.kind, row.job_id),
        )
        .into());
    }
    let again = async |row: &crate::store::job::Model, _: &async_nats::jetstream::Context| {
        let message =
            Message::decode(row.kind, &row.spec).map_err(|e| anyhow::anyhow!("stored job {}: {e}", row.job_id))?;
        message.outgoing(signer)
    };
    publishing::earlier(store, nats, key, again).await
}

/// Records and publishes one day-two job (or finds the one its request made before); its id
/// and JSON.
pub(crate) async fn submit(
    store: &Store,
    nats: &Nats<'_>,
    signer: &Identity,
    message: &Message,
    request_id: Option<&str>,
) -> Result<(String, String), Failure> {
    let json = message.json();
    let recorded = store.insert_day_two_job(&message.wire(), request_id).await?;
    if let Err(existing) = recorded {
        return Ok((existing.job_id, existing.spec));
    }
    publishing::publish_recorded(store, nats.js().await?, &message.outgoing(signer)?, request_id).await?;
    Ok((message.job_id().to_string(), json))
}

async fn finish(cli: &Cli, t: &TargetArgs, job_id: &str, json: &str) -> Outcome {
    if t.json {
        println!("{json}");
    } else {
        println!("{job_id}");
    }
    if t.watch {
        return follow::follow(cli, crate::job_id(job_id)?, t.json).await;
    }
    Ok(())
}
