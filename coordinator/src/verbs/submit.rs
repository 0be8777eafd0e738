//! `pvefleet submit`: build the job (template, then spec file, then flags), validate it, pick
//! the node, publish it with its id as the dedup id, record it, print its id.

use std::io::IsTerminal as _;

use async_nats::jetstream::{self, message::PublishMessage};
use pvefleet_schemas::names::{JobKind, job_subject};
use pvefleet_schemas::seal::PublicKey;
use pvefleet_schemas::{DeploySpec, Job, JobId, NodeName, RollbackPolicy, Secret, Timestamp, V1};

use crate::cli::{Cli, SubmitArgs};
use crate::spec::{BadInput, SpecFile, container_from, extend_deploy, overlay};
use crate::{Failure, Outcome};

pub async fn run(cli: &Cli, args: &SubmitArgs) -> Outcome {
    if args.password.is_some() {
        return Err(BadInput::field(
            "--password",
            "a password on the command line leaks into process lists and shell history; use --password-file, --password-env or --ask-password",
        )
        .into());
    }
    let store = crate::open_store(cli).await?;
    if let Some(count) = args.count {
        // Each of the N jobs has its own request id (`<request-id>-<n>`).
        let parts = gather(args, &store).await?;
        return super::batch::run(cli, args, &store, parts, count).await;
    }
    if let Some(key) = &args.request_id
        && let Some(existing) = store.job_by_request(key).await?
    {
        // The same request again: the same job, never a second one.
        eprintln!("request {key} was submitted before as job {}", existing.job_id);
        if existing.stream_seq.is_none() && existing.state == crate::store::JobState::Queued {
            // Recorded, but its publish was never confirmed (an error, a lost ack, a crash):
            // publish that same job again; the stream drops it if it had landed after all.
            return republish(cli, args, &store, &existing).await;
        }
        return finish_existing(cli, args, &existing).await;
    }

    let parts = gather(args, &store).await?;
    // Kept in memory only, and sealed to the chosen node's agent once the node is known.
    let clear_password = password(args)?;
    let node_arg = parts.node.clone();
    let mut job = parts.job(container_from(parts.container.clone())?, &node_arg)?;

    let client = crate::bus::connect(cli).await?;
    let js = jetstream::new(client);
    if node_arg == "auto" {
        job.node = place(&js, &job).await?;
    }
    seal_secrets(&store, &js, &mut job, clear_password.as_ref()).await?;
    if let Err(existing) = store.insert_job(&job, args.request_id.as_deref()).await? {
        // A concurrent submit of the same request won the reservation.
        return finish_existing(cli, args, &existing).await;
    }
    let subject = job_subject(&job.node, JobKind::Create);
    let seq = publish_recorded(&js, &store, subject, job.job_id, job.encode(), args.request_id.as_deref()).await?;
    store.set_stream_seq(&job.job_id, seq).await?;
    finish(cli, args, job.job_id, &serde_json::to_string(&job.public()).expect("a job serializes")).await
}

/// What a submit's template, spec file and flags say, before the container is read.
pub(crate) struct Parts {
    /// The container table, overlaid in order; `--count` expands `{n}` in it per job.
    pub(crate) container: toml::Table,
    pub(crate) deploy: DeploySpec,
    pub(crate) options: pvefleet_schemas::JobOptions,
    pub(crate) template: Option<String>,
    /// `--node` (or the spec file's node): a name or `auto`.
    pub(crate) node: String,
}

impl Parts {
    /// The job for `container`, on `node` (`auto` stands until placement chooses).
    pub(crate) fn job(&self, container: pvefleet_schemas::ContainerSpec, node: &str) -> Result<Job, Failure> {
        let job = Job {
            v: V1,
            kind: pvefleet_schemas::JobMessageKind::Create,
            job_id: JobId::new(),
            node: NodeName::new(node)?,
            submitted_at: Timestamp::now(),
            container,
            deploy: self.deploy.clone(),
            template: self.template.clone(),
            options: self.options,
        };
        job.validate()?;
        Ok(job)
    }
}

/// Reads the template, the spec file and the flags into the parts of a job.
pub(crate) async fn gather(args: &SubmitArgs, store: &crate::store::Store) -> Result<Parts, Failure> {
    let mut container = toml::Table::new();
    let mut deploy = DeploySpec::default();
    let mut options = None;
    let mut node = None;
    let mut template_name = args.template.clone();
    let spec_file = args.spec.as_deref().map(|s| SpecFile::read(s, args.files_dir.as_deref())).transpose()?;
    if template_name.is_none() {
        template_name = spec_file.as_ref().and_then(|s| s.template.clone());
    }
    if let Some(name) = &template_name {
        let row = store.template(name).await?.ok_or_else(|| {
            BadInput::field("--template", format!("no template named `{name}` (see `pvefleet template list`)"))
        })?;
        let template: SpecFile =
            serde_json::from_str(&row.spec).map_err(|e| anyhow::anyhow!("stored template {name}: {e}"))?;
        overlay(&mut container, template.container);
        extend_deploy(&mut deploy, template.deploy);
        options = template.options;
    }
    if let Some(spec) = spec_file {
        overlay(&mut container, spec.container);
        extend_deploy(&mut deploy, spec.deploy);
        options = spec.options.or(options);
        node = spec.node;
    }
    overlay(&mut container, flags(args));
    if args.rootfs.is_some() && (args.disk.is_some() || args.storage.is_some()) {
        let other = if args.disk.is_some() { "--disk" } else { "--storage" };
        return Err(BadInput::field("--rootfs", format!("give --rootfs or {other}, not both")).into());
    }
    overlay(
        &mut container,
        crate::spec::pve_flags(&args.nets, &args.mps, args.startup.as_deref(), args.rootfs.as_deref())?,
    );
    overlay(&mut container, crate::spec::source_flags(args)?);
    if args.rootfs.is_none() {
        crate::spec::disk_flags_onto_rootfs(&mut container, args.disk, args.storage.as_deref());
    }
    deploy.packages.extend(args.packages.iter().cloned());
    let mut options = options.unwrap_or_default();
    if let Some(r) = &args.rollback {
        options.rollback = match r.as_str() {
            "destroy" => RollbackPolicy::Destroy,
            "keep" => RollbackPolicy::Keep,
            other => {
                return Err(BadInput::field("--rollback", format!("`{other}` is neither `destroy` nor `keep`")).into());
            }
        };
    }
    let node =
        args.node.clone().or(node).ok_or_else(|| BadInput::field("--node", "give --node NAME or --node auto"))?;
    Ok(Parts { container, deploy, options, template: template_name, node })
}

/// Publishes a job whose record the store holds. If the publish cannot be confirmed, a job
/// with a request id keeps its record (the job may or may not be in the stream: the same
/// command again publishes this job, never a second one); one without is forgotten.
pub(crate) async fn publish_recorded(
    js: &jetstream::Context,
    store: &crate::store::Store,
    subject: String,
    job_id: JobId,
    payload: Vec<u8>,
    request_id: Option<&str>,
) -> Result<u64, Failure> {
    match publish_job(js, subject, job_id, payload).await {
        Ok(seq) => Ok(seq),
        Err(e) => {
            match request_id {
                Some(key) => eprintln!(
                    "job {job_id} is recorded but not confirmed queued; run the same command (--request-id {key}) again"
                ),
                None => store.delete_job(&job_id).await?,
            }
            Err(e.into())
        }
    }
}

/// Publishes `job` with its id as the dedup id and returns its stream sequence.
pub(crate) async fn publish(js: &jetstream::Context, job: &Job) -> anyhow::Result<u64> {
    publish_job(js, job_subject(&job.node, JobKind::Create), job.job_id, job.encode()).await
}

/// Publishes a job message on `subject` with its id as the dedup id and returns its stream
/// sequence. A publish that times out (a cluster electing a leader) is tried again: the same
/// id makes that safe.
pub(crate) async fn publish_job(
    js: &jetstream::Context,
    subject: String,
    job_id: JobId,
    payload: Vec<u8>,
) -> anyhow::Result<u64> {
    use async_nats::jetstream::context::PublishErrorKind;
    use backon::{ExponentialBuilder, Retryable as _};
    let payload: bytes::Bytes = payload.into();
    // The job's events go to its node's events stream: it must be there before the job is.
    if let Some(node) = subject.split('.').nth(2).and_then(|n| NodeName::new(n).ok()) {
        crate::bus::ensure_events_stream(js, &node).await?;
    }
    let retry = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(3))
        .with_total_delay(Some(std::time::Duration::from_secs(30)))
        .without_max_times();
    let ack = (|| async {
        js.send_publish(
            subject.clone(),
            PublishMessage::build().payload(payload.clone()).message_id(job_id.to_string()),
        )
        .await?
        .await
    })
    .retry(retry)
    .when(|e| {
        matches!(e.kind(), PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe) && crate::bus::refused().is_none()
    })
    .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "publishing the job failed; retrying"))
    .await
    .map_err(|e| match crate::bus::refused() {
        Some(why) => anyhow::anyhow!("NATS refused to take the job for this user: {why}"),
        None => anyhow::anyhow!("the jobs stream did not take the job (run `pvefleet setup`?): {e}"),
    })?;
    Ok(ack.sequence)
}

/// Publishes a recorded job whose publish was never confirmed, with the password given now.
async fn republish(
    cli: &Cli,
    args: &SubmitArgs,
    store: &crate::store::Store,
    existing: &crate::store::job::Model,
) -> Outcome {
    let mut job =
        Job::decode(existing.spec.as_bytes()).map_err(|e| anyhow::anyhow!("stored job {}: {e}", existing.job_id))?;
    let js = jetstream::new(crate::bus::connect(cli).await?);
    if job.deploy.files.iter().any(|f| f.secret) {
        refill_secrets(&mut job, &gather(args, store).await?.deploy)?;
    }
    seal_secrets(store, &js, &mut job, password(args)?.as_ref()).await?;
    let seq = publish(&js, &job).await?;
    store.set_stream_seq(&job.job_id, seq).await?;
    finish_existing(cli, args, existing).await
}

/// Answers with a job recorded before (the same request id).
async fn finish_existing(cli: &Cli, args: &SubmitArgs, existing: &crate::store::job::Model) -> Outcome {
    let id =
        existing.job_id.parse().map_err(|_| anyhow::anyhow!("stored job id `{}` is not a ULID", existing.job_id))?;
    finish(cli, args, id, &existing.spec).await
}

async fn finish(cli: &Cli, args: &SubmitArgs, job_id: JobId, public_json: &str) -> Outcome {
    if args.json {
        println!("{public_json}");
    } else {
        println!("{job_id}");
    }
    if args.watch {
        return super::watch::run(cli, &job_id.to_string(), args.json).await;
    }
    Ok(())
}

/// The container fields given as flags, as a table to overlay.
fn flags(a: &SubmitArgs) -> toml::Table {
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            t.insert(k.into(), v);
        }
    };
    put("hostname", a.hostname.clone().map(Into::into));
    put("vmid", a.vmid.map(|v| i64::from(v).into()));
    put("memory", a.memory.map(|v| i64::from(v).into()));
    put("swap", a.swap.map(|v| i64::from(v).into()));
    put("cores", a.cores.map(|v| i64::from(v).into()));
    put("disk", a.disk.map(|v| i64::from(v).into()));
    put("storage", a.storage.clone().map(Into::into));
    put("bridge", a.bridge.clone().map(Into::into));
    put("ip", a.ip.clone().map(Into::into));
    put("gw", a.gw.clone().map(Into::into));
    put("nameserver", a.nameserver.clone().map(Into::into));
    put("ostemplate", a.ostemplate.clone().map(Into::into));
    put("unprivileged", a.privileged.then_some(false.into()));
    put("nesting", a.nesting.then_some(true.into()));
    put("tags", (!a.tags.is_empty()).then(|| a.tags.iter().cloned().map(toml::Value::from).collect::<Vec<_>>().into()));
    put("description", a.description.clone().map(Into::into));
    put("pool", a.pool.clone().map(Into::into));
    put("protection", a.protection.then_some(true.into()));
    put("onboot", a.onboot.then_some(true.into()));
    put("timezone", a.timezone.clone().map(Into::into));
    put("cpulimit", a.cpulimit.map(Into::into));
    put("cpuunits", a.cpuunits.map(|v| i64::from(v).into()));
    put("searchdomain", a.searchdomain.clone().map(Into::into));
    put("entrypoint", a.entrypoint.clone().map(Into::into));
    put("ssh_nic", a.ssh_nic.clone().map(Into::into));
    put("arch", a.arch.clone().map(Into::into));
    put("ostype", a.ostype.clone().map(Into::into));
    put("cmode", a.cmode.clone().map(Into::into));
    put("tty", a.tty.map(|v| i64::from(v).into()));
    put("console", a.console.map(Into::into));
    put(
        "ssh_public_keys",
        (!a.ssh_keys.is_empty()).then(|| a.ssh_keys.iter().cloned().map(toml::Value::from).collect::<Vec<_>>().into()),
    );
    t
}

/// The sealing key of `node`'s agent that secrets may be sealed to: the one pinned for it (after
/// an operator checked it on the node: `pvefleet nodes trust`). The registry's key is never
/// trusted on sight, since the node's agent user writes it; a key that differs from the pinned
/// one is refused, naming both.
pub(crate) async fn trusted_key(
    store: &crate::store::Store,
    js: &jetstream::Context,
    node: &NodeName,
) -> Result<PublicKey, Failure> {
    let live = crate::bus::heartbeats(js).await?.into_iter().find(|b| &b.node == node).and_then(|b| b.sealing_key);
    let live: Option<PublicKey> = live
        .map(|k| k.parse())
        .transpose()
        .map_err(|e| anyhow::anyhow!("the agent of {node} shows a sealing key that cannot be read: {e}"))?;
    let pinned: Option<PublicKey> = match store.node_key(node.as_str()).await? {
        Some(row) => Some(row.public_key.parse().map_err(|e| anyhow::anyhow!("the key pinned for {node}: {e}"))?),
        None => None,
    };
    let key = match (pinned, live) {
        (Some(pinned), Some(live)) if pinned != live => {
            return Err(anyhow::anyhow!(
                "the sealing key of {node}'s agent has changed: pinned {}, the agent now shows {}; nothing was \
                 sent. If you know why (a reinstalled agent), check it on the node (`pvefleet-agent --print-key`) \
                 and trust it with `pvefleet nodes trust {node} --fingerprint …`",
                pinned.fingerprint(),
                live.fingerprint()
            )
            .into());
        }
        (Some(pinned), _) => pinned,
        (None, live) => {
            let shown = live.map(|k| format!(" (its agent shows {} now)", k.fingerprint())).unwrap_or_default();
            return Err(anyhow::anyhow!(
                "no sealing key is trusted for {node} yet{shown}, so nothing secret can be sent to it; nothing was \
                 published. Run `pvefleet-agent --config /etc/pvefleet/agent.toml --print-key` on {node}, then \
                 `pvefleet nodes trust {node} --fingerprint SHA256:…` with what it prints"
            )
            .into());
        }
    };
    Ok(key)
}

/// Seals what a job carries for its agent alone, each for this job only, to the key trusted for
/// its node: the root password, and every secret file's bytes (which keep their size and
/// SHA-256 for the store and the pages to show). Nothing secret is left in clear in the job.
pub(crate) async fn seal_secrets(
    store: &crate::store::Store,
    js: &jetstream::Context,
    job: &mut Job,
    password: Option<&Secret>,
) -> Result<(), Failure> {
    let files = job.deploy.files.iter().any(|f| f.secret && f.content.is_some());
    if password.is_none() && !files {
        return Ok(());
    }
    let key = trusted_key(store, js, &job.node).await?;
    if let Some(pw) = password {
        job.container.root_password = Some(key.seal_for_job(&job.job_id, pw.expose().as_bytes()));
    }
    for file in &mut job.deploy.files {
        if file.secret
            && let Some(content) = file.content.take()
        {
            let content = Secret::new(content);
            file.digest = Some(pvefleet_schemas::FileDigest::of(content.expose().as_bytes()));
            file.sealed = Some(key.seal_for_job(&job.job_id, content.expose().as_bytes()));
        }
    }
    Ok(())
}

/// Gives a recorded job (the store keeps no secret file's bytes) its secret files again, from
/// what the same command reads now; a file whose bytes changed since is refused, naming it.
pub(crate) fn refill_secrets(job: &mut Job, now: &DeploySpec) -> Result<(), Failure> {
    for (i, file) in job.deploy.files.iter_mut().enumerate() {
        if !file.secret || file.content.is_some() || file.sealed.is_some() {
            continue;
        }
        let again = now.files.iter().find(|f| f.path == file.path && f.secret).and_then(|f| f.content.clone());
        let Some(content) = again else {
            return Err(BadInput::field(
                &format!("deploy.files[{i}]"),
                format!("the recorded job has the secret file {}, which this command does not give", file.path),
            )
            .into());
        };
        if file.digest.as_ref() != Some(&pvefleet_schemas::FileDigest::of(content.as_bytes())) {
            return Err(BadInput::field(
                &format!("deploy.files[{i}]"),
                format!(
                    "the secret file {} has changed since the job was recorded; submit it as a new request",
                    file.path
                ),
            )
            .into());
        }
        file.content = Some(content);
    }
    Ok(())
}

/// The root password the operator gave, checked against PVE's minimum length.
pub(crate) fn password(a: &SubmitArgs) -> Result<Option<Secret>, BadInput> {
    let given = given_password(a)?;
    if let Some((flag, pw)) = &given
        && pw.expose().chars().count() < 5
    {
        // PVE's own minimum for `password` on create.
        return Err(BadInput::field(flag, "the root password must be at least 5 characters"));
    }
    Ok(given.map(|(_, pw)| pw))
}

fn given_password(a: &SubmitArgs) -> Result<Option<(&'static str, Secret)>, BadInput> {
    let given = [a.password_file.is_some(), a.password_env.is_some(), a.ask_password].iter().filter(|g| **g).count();
    if given > 1 {
        return Err(BadInput::field(
            "--password-file",
            "give one of --password-file, --password-env and --ask-password",
        ));
    }
    if let Some(path) = &a.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput::field("--password-file", format!("cannot read {}: {e}", path.display())))?;
        let first = text.lines().next().unwrap_or_default().to_owned();
        return Ok(Some(("--password-file", Secret::new(first))));
    }
    if let Some(var) = &a.password_env {
        let value = std::env::var(var)
            .map_err(|_| BadInput::field("--password-env", format!("the variable {var} is not set")))?;
        return Ok(Some(("--password-env", Secret::new(value))));
    }
    if a.ask_password {
        if !std::io::stdin().is_terminal() {
            return Err(BadInput::field(
                "--ask-password",
                "standard input is not a terminal; use --password-file or --password-env",
            ));
        }
        let pw = rpassword::prompt_password("root password for the container: ")
            .map_err(|e| BadInput::field("--ask-password", e))?;
        return Ok(Some(("--ask-password", Secret::new(pw))));
    }
    Ok(None)
}

/// `--node auto`: the live agent with the most free memory whose node fits the container.
async fn place(js: &jetstream::Context, job: &Job) -> Result<NodeName, Failure> {
    let beats = crate::bus::heartbeats(js).await?;
    choose_node(&beats, job, &Placed::new())
}

/// Memory and disk bytes already given to jobs placed by this command, per node.
pub(crate) type Placed = std::collections::BTreeMap<NodeName, (u64, u64)>;

/// Places job `n` of `count` (on the freest node that fits it, with `--node auto`) and counts
/// what it takes against its node, so each later choice sees the jobs placed before it.
pub(crate) fn place_job(
    job: &mut Job,
    auto: bool,
    beats: &[pvefleet_schemas::Heartbeat],
    placed: &mut Placed,
    (n, count): (usize, u32),
) -> Result<(), Failure> {
    if auto {
        job.node = choose_node(beats, job, placed).map_err(|e| match e {
            Failure::Usage(m) if count > 1 => Failure::Usage(format!("job {n} of {count}: {m}")),
            other => other,
        })?;
    }
    take_share(placed, job);
    Ok(())
}

/// Counts `job`'s memory and root disk against its node.
pub(crate) fn take_share(placed: &mut Placed, job: &Job) {
    let entry = placed.entry(job.node.clone()).or_default();
    entry.0 += u64::from(job.container.memory) << 20;
    entry.1 += u64::from(job.container.effective_rootfs().size) << 30;
}

/// `--node auto`: the live agent with the most free memory that fits `job`, counting what
/// the jobs placed before it by the same command take.
pub(crate) fn choose_node(
    beats: &[pvefleet_schemas::Heartbeat],
    job: &Job,
    placed: &Placed,
) -> Result<NodeName, Failure> {
    let spec = &job.container;
    let rootfs = spec.effective_rootfs();
    let (need_mem, need_disk) = (u64::from(spec.memory) << 20, u64::from(rootfs.size) << 30);
    let mut best: Option<(u64, NodeName)> = None;
    let mut refused = Vec::new();
    for beat in beats {
        let Some(cap) = &beat.capacity else {
            refused.push(format!("{}: its Proxmox API did not answer", beat.node));
            continue;
        };
        let (mem_taken, disk_taken) = placed.get(&beat.node).copied().unwrap_or_default();
        let mem_free = cap.memory_free_bytes.saturating_sub(mem_taken);
        let storage = cap.storages.iter().find(|s| s.storage == rootfs.storage);
        match storage {
            None => refused.push(format!("{}: no storage `{}`", beat.node, rootfs.storage)),
            Some(s) if s.avail_bytes.saturating_sub(disk_taken) < need_disk => refused.push(format!(
                "{}: `{}` has {} GB free, needs {}",
                beat.node,
                rootfs.storage,
                s.avail_bytes.saturating_sub(disk_taken) >> 30,
                rootfs.size
            )),
            Some(_) if mem_free < need_mem => {
                refused.push(format!("{}: {} MB memory free, needs {}", beat.node, mem_free >> 20, spec.memory))
            }
            Some(_) => {
                if best.as_ref().is_none_or(|(free, _)| mem_free > *free) {
                    best = Some((mem_free, beat.node.clone()));
                }
            }
        }
    }
    best.map(|(_, node)| node).ok_or_else(|| {
        Failure::Usage(if refused.is_empty() {
            "--node auto: no live agent in the registry".into()
        } else {
            format!("--node auto: no live agent fits: {}", refused.join("; "))
        })
    })
}
