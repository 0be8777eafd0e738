//! The restore job: a backup restored as a new container (its own marker, its vmid given or
//! allocated as a create's is) or over the container it was taken of (stopped first; what was
//! written since the backup is lost, and the job says so). The restore is sent once
//! ([`Core::once`]); a new container whose restore's answer was lost is found by this job's
//! marker, one restored over by the `vzrestore` task begun since the job asked.
//!
//! | step      | does                                                                   | undo |
//! |-----------|------------------------------------------------------------------------|------|
//! | finding   | the backup on its storage, its config read; over: the container here with its marker, and the backup is of it; new: the vmid chosen | none |
//! | stopping  | (over) the container stopped if it runs                                 | none |
//! | restoring | `POST /nodes/{node}/lxc` with `restore=1` (`force=1` over; `unique=1`, this job's marker and note for a new one), once | none |

use pvefleet_schemas::lxc::{Features, MountPoint};
use pvefleet_schemas::{ErrorInfo, ErrorKind, JobResult, LogStream, RestoreJob, Step, Vmid};
use tokio_util::sync::CancellationToken;

use super::Planned;
use crate::jobs::once::Once;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, Whose, always};
use crate::proxmox::{PveClient, Refusal};

fn over(job: &RestoreJob) -> bool {
    job.over.is_some()
}

const STEPS: [StepRow<RestoreJob>; 3] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the backup", runs: always },
    StepRow { step: Step::Stopping, percent: 10, what: "stopping the container restored over", runs: over },
    StepRow { step: Step::Restoring, percent: 20, what: "restoring the backup", runs: always },
];

pub async fn run(job: &RestoreJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let core = Core::new(job.job_id, &job.node, claimed, env, job.marker(), job.options.task_timeout.0);
    let mut saga = RestoreRun { core, job, grant: env.grant.clone(), already: false };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "restore").await
}

struct RestoreRun<'a> {
    core: Core,
    job: &'a RestoreJob,
    /// What the job's signer may do: a new container restored is held to it as a create is.
    grant: pvefleet_schemas::trust::Grant,
    already: bool,
}

/// A backed-up config as PVE prints it: its `key: value` lines (up to the first snapshot
/// section) and its description (the `#` lines).
pub(crate) struct BackedUp {
    pub keys: Vec<(String, String)>,
    pub description: Vec<String>,
}

impl BackedUp {
    pub(crate) fn parse(text: &str) -> Self {
        let mut keys = Vec::new();
        let mut description = Vec::new();
        for line in text.lines() {
            if line.starts_with('[') {
                break;
            }
            if let Some(d) = line.strip_prefix('#') {
                description.push(d.to_owned());
            } else if let Some((k, v)) = line.split_once(':') {
                keys.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Self { keys, description }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// What a create of it would need granted: whether it is unprivileged, its features, its
    /// bind mounts (host paths).
    fn rights_it_needs(&self) -> (bool, Option<Features>, Vec<(String, MountPoint)>) {
        let unprivileged = self.get("unprivileged").is_some_and(|u| u == "1");
        let features = self.get("features").and_then(|f| Features::from_pve(f).ok());
        let binds = self
            .keys
            .iter()
            .filter(|(k, v)| k.starts_with("mp") && v.starts_with('/'))
            .filter_map(|(k, v)| Some((k.clone(), MountPoint::from_pve(v).ok()?)))
            .collect();
        (unprivileged, features, binds)
    }

    /// Its tags without any pvefleet marker.
    fn tags_unmarked(&self) -> Vec<String> {
        crate::proxmox::tags(self.get("tags").unwrap_or_default())
            .filter(|t| !t.starts_with(pvefleet_schemas::MARKER_TAG_PREFIX))
            .collect()
    }
}

/// The `POST /nodes/{node}/lxc` parameters of a restore: over a container, the backup as it
/// is; a new container gets new MACs, the backup's tags but for its markers with this job's
/// marker instead, and a description whose pvefleet lines name this job.
pub(crate) fn restore_params(
    job: &RestoreJob,
    vmid: Vmid,
    backed_up: &BackedUp,
    start: bool,
) -> Vec<(&'static str, String)> {
    let mut params = vec![("ostemplate", job.backup.clone()), ("vmid", vmid.to_string()), ("restore", "1".to_owned())];
    if job.over.is_some() {
        params.push(("force", "1".to_owned()));
    } else {
        params.push(("unique", "1".to_owned()));
        let mut tags = backed_up.tags_unmarked();
        tags.push(job.job_id.marker_tag());
        params.push(("tags", tags.join(";")));
        let mut description: Vec<String> = backed_up
            .description
            .iter()
            .filter(|l| {
                !["Created", "Cloned", "Restored"].iter().any(|v| l.starts_with(&format!("{v} by pvefleet job ")))
            })
            .cloned()
            .collect();
        description.push(format!("Restored by pvefleet job {} from {}", job.job_id, job.backup));
        params.push(("description", description.join("\n")));
        if let Some(h) = &job.hostname {
            params.push(("hostname", h.clone()));
        }
    }
    // PVE restores every volume to `storage`, `local` when none is given: the backed-up root
    // disk's storage unless the job names another.
    let storage = job.storage.clone().or_else(|| {
        let rootfs = backed_up.get("rootfs")?;
        Some(rootfs.split(',').next()?.split_once(':')?.0.to_owned())
    });
    if let Some(s) = storage {
        params.push(("storage", s));
    }
    if start {
        params.push(("start", "1".to_owned()));
    }
    params
}

impl RestoreRun<'_> {
    /// The backup is on its storage here; its config.
    async fn backup(&mut self) -> Result<BackedUp, StepError> {
        let volid = &self.job.backup;
        let storage = volid.split(':').next().unwrap_or_default();
        let listed = match self.core.pve.backups(storage, None).await {
            Ok(l) => l,
            Err(e) if e.refusal() == Some(Refusal::Missing) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if !listed.iter().any(|b| b.volid == *volid) {
            return Err(StepError::failed(
                ErrorKind::Validation,
                format!("backup: `{volid}` is not among the backups on storage {storage} of {}", self.core.node),
            ));
        }
        Ok(BackedUp::parse(&self.core.pve.backup_config(volid).await?))
    }

    async fn find(&mut self) -> StepResult {
        let backed_up = self.backup().await?;
        match &self.job.over {
            Some(target) => {
                super::find(&mut self.core, target).await?;
                let vmid = target.vmid;
                let marker = self.core.marker.clone();
                let tags = backed_up.get("tags").unwrap_or_default();
                let of_it = if marker.is_empty() {
                    crate::proxmox::has_marker_tag(tags)
                } else {
                    crate::proxmox::has_tag(tags, &marker)
                };
                if !of_it {
                    return Err(StepError::failed(
                        ErrorKind::Conflict,
                        format!(
                            "backup: `{}` is of another container that had vmid {vmid} (it does not carry {}): \
                             container {vmid} left untouched",
                            self.job.backup,
                            if marker.is_empty() { "a pvefleet marker".to_owned() } else { marker }
                        ),
                    ));
                }
                let running = self.core.pve.status(vmid).await?.status == "running";
                self.core.cp.was_running = Some(running);
                Ok(())
            }
            None => {
                if !crate::proxmox::has_marker_tag(backed_up.get("tags").unwrap_or_default()) {
                    return Err(StepError::failed(ErrorKind::Conflict, stranger_backup(&self.job.backup)));
                }
                let (unprivileged, features, binds) = backed_up.rights_it_needs();
                if let Err(refusal) = self.grant.allows_restored(unprivileged, features.as_ref(), &binds) {
                    return Err(StepError::failed(ErrorKind::Unauthorized, refusal.to_string()));
                }
                self.choose_vmid().await
            }
        }
    }

    /// A new container's vmid: found by this job's marker after a lost checkpoint, else the
    /// job's, else allocated and reserved for the job as a create's.
    async fn choose_vmid(&mut self) -> StepResult {
        let marker = self.core.marker.clone();
        if self.core.resumed
            && let Some(l) = self
                .core
                .pve
                .containers_here()
                .await?
                .into_iter()
                .find(|l| l.tags.as_deref().is_some_and(|t| crate::proxmox::has_tag(t, &marker)))
        {
            self.core.cp.vmid = Some(l.vmid);
            return Ok(());
        }
        let vmid = match self.job.vmid {
            Some(vmid) => {
                match self.core.whose(vmid).await? {
                    Whose::Strangers => return Err(taken(vmid)),
                    Whose::Nobody if !self.core.pve.vmid_is_free(vmid).await? => return Err(taken(vmid)),
                    _ => {}
                }
                vmid
            }
            None => {
                let deadline = std::time::Instant::now() + self.core.task_timeout;
                // A restore has no "already exists" to fall back on for a guest made since the
                // node's facts were read: it allocates on fresh ones.
                self.core.pve.forget_facts();
                let (pve, vmids) = (&self.core.pve, &self.core.bus.vmids);
                crate::jobs::create::vmid::allocate(pve, vmids, self.job.job_id, &self.job.node, deadline).await?
            }
        };
        self.core.cp.vmid = Some(vmid);
        Ok(())
    }

    async fn stop(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        super::ours(&mut self.core, vmid).await?;
        let lost = format!(
            "restoring {} over container {vmid}: whatever was written to it since that backup is lost",
            self.job.backup
        );
        self.core.events.warning(lost).await?;
        if let Some(upid) = self.core.pending_task("vzstop") {
            return self.core.wait_task(&upid).await;
        }
        if self.core.pve.status(vmid).await?.status != "running" {
            return Ok(());
        }
        match self.core.pve.stop(vmid).await {
            Ok(upid) => {
                self.core.cp.upid = Some(upid.to_string());
                self.core.save().await?;
                self.core.wait_task(&upid).await
            }
            Err(e) if e.refusal() == Some(Refusal::NotRunning) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn restore(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let sent = self.core.pending_task("vzrestore").is_some() || self.core.asked("vzrestore");
        if !sent && self.job.over.is_some() {
            super::ours(&mut self.core, vmid).await?;
            if self.core.pve.status(vmid).await?.status == "running" {
                return Err(StepError::failed(
                    ErrorKind::Conflict,
                    format!("container {vmid} was started again while the restore over it waited: not restored"),
                ));
            }
        } else if !sent {
            match self.core.whose(vmid).await? {
                Whose::Ours => {
                    self.already = true;
                    return Ok(());
                }
                Whose::Strangers => return Err(taken(vmid)),
                Whose::Nobody => {}
            }
        }
        let backed_up = self.backup().await?;
        let start = self.job.start || self.core.cp.was_running == Some(true);
        let params = restore_params(self.job, vmid, &backed_up, start);
        let over = self.job.over.is_some();
        self.core.once(vmid, Once::Restore { params: &params, over }).await?;
        super::ours(&mut self.core, vmid).await?;
        self.core.events.log(LogStream::Task, format!("container {vmid} restored from {}", self.job.backup)).await?;
        Ok(())
    }
}

/// Why a backup of a container pvefleet did not make is not restored: it would copy a
/// stranger's container (as a clone of one would).
fn stranger_backup(volid: &str) -> String {
    format!(
        "backup: `{volid}` is of a container pvefleet did not make (its backed-up config carries no pvefleet marker): \
         restoring it would copy a stranger's container; nothing was restored"
    )
}

fn taken(vmid: Vmid) -> StepError {
    StepError::failed(
        ErrorKind::Conflict,
        format!("vmid {vmid} is taken by a guest pvefleet did not make here: nothing was restored"),
    )
}

impl Saga for RestoreRun<'_> {
    crate::jobs::saga_parts!(RestoreJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::Stopping => self.stop().await,
            Step::Restoring => self.restore().await,
            other => unreachable!("{other} is not a step of a restore job"),
        }
    }

    fn result(&mut self, error: Option<ErrorInfo>, _rolled_back: bool) -> JobResult {
        super::result(self.job.job_id, &self.job.node, &self.core, error)
    }

    fn completed(&mut self) -> String {
        let vmid = self.core.vmid();
        match (&self.job.over, self.already) {
            (Some(_), _) => format!("container {vmid} restored over from {}", self.job.backup),
            (None, false) => format!("{} restored as container {vmid}", self.job.backup),
            (None, true) => format!("{} was restored as container {vmid} by this job already", self.job.backup),
        }
    }
}

/// The backup's part of a restore's plan: on its storage, and its config.
async fn plan_backup(pve: &PveClient, job: &RestoreJob, out: &mut Planned) -> Option<BackedUp> {
    let storage = job.backup.split(':').next().unwrap_or_default();
    match pve.backups(storage, None).await {
        Ok(list) if list.iter().any(|b| b.volid == job.backup) => {}
        Ok(_) => {
            out.check("backup", false, format!("{} is not among the backups on {storage}", job.backup));
            return None;
        }
        Err(e) => {
            out.check("backup", false, e.to_string());
            return None;
        }
    }
    match pve.backup_config(&job.backup).await {
        Ok(text) => {
            let backed_up = BackedUp::parse(&text);
            let name = backed_up.get("hostname").unwrap_or("?").to_owned();
            out.check("backup", true, format!("{} holds container {name}", job.backup));
            Some(backed_up)
        }
        Err(e) => {
            out.check("backup", false, e.to_string());
            None
        }
    }
}

/// What a restore as a new container would find and send; the vmid it would take.
pub(crate) async fn plan_new(pve: &PveClient, job: &RestoreJob, out: &mut Planned) -> Option<Vmid> {
    let backed_up = plan_backup(pve, job, out).await?;
    if !crate::proxmox::has_marker_tag(backed_up.get("tags").unwrap_or_default()) {
        out.check("of pvefleet's", false, stranger_backup(&job.backup));
        return None;
    }
    let vmid = match job.vmid {
        Some(v) => match pve.vmid_is_free(v).await {
            Ok(true) => Some(v),
            Ok(false) => {
                out.check("vmid", false, format!("{v} is taken"));
                None
            }
            Err(e) => {
                out.check("vmid", false, e.to_string());
                None
            }
        },
        None => pve.next_vmid().await.map_err(|e| out.check("vmid", false, e.to_string())).ok(),
    }?;
    out.check("vmid", true, format!("{vmid} (a new container with this job's marker)"));
    out.call(format!("POST /nodes/{}/lxc", job.node), restore_params(job, vmid, &backed_up, job.start));
    Some(vmid)
}

/// What a restore over a container would find and send.
pub(crate) async fn plan_over(pve: &PveClient, job: &RestoreJob, out: &mut Planned) {
    let Some(target) = &job.over else { return };
    let vmid = target.vmid;
    let Some(backed_up) = plan_backup(pve, job, out).await else { return };
    let marker = job.marker();
    let tags = backed_up.get("tags").unwrap_or_default();
    let of_it =
        if marker.is_empty() { crate::proxmox::has_marker_tag(tags) } else { crate::proxmox::has_tag(tags, &marker) };
    out.check(
        "of it",
        of_it,
        if of_it {
            format!("the backup is of container {vmid}")
        } else {
            format!("the backup is of another container {vmid}")
        },
    );
    let running = pve.status(vmid).await.is_ok_and(|s| s.status == "running");
    out.check("lost", true, format!("whatever was written to container {vmid} since the backup would be lost"));
    if running {
        out.call(format!("POST /nodes/{}/lxc/{vmid}/status/stop", job.node), vec![]);
    }
    out.call(format!("POST /nodes/{}/lxc", job.node), restore_params(job, vmid, &backed_up, job.start || running));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvefleet_schemas::NodeName;

    #[test]
    fn a_new_container_gets_this_jobs_marker_and_note() {
        let text = "#web server\n#Created by pvefleet job 01J0000000000000000000000A\nhostname: web\nrootfs: local-lvm:vm-101-disk-0,size=8G\ntags: pvefleet-abc;web\n\n[pf-1]\ntags: old\n";
        let backed_up = BackedUp::parse(text);
        assert_eq!(backed_up.get("hostname"), Some("web"));
        let job = RestoreJob::new(NodeName::new("pve1").unwrap(), "local:backup/vzdump-lxc-101-x.tar.zst".into());
        let params = restore_params(&job, Vmid::new(120).unwrap(), &backed_up, false);
        let get = |k: &str| params.iter().find(|(p, _)| *p == k).map(|(_, v)| v.clone());
        assert_eq!(get("tags"), Some(format!("web;{}", job.job_id.marker_tag())));
        let description = get("description").unwrap();
        assert!(description.starts_with("web server\n") && description.contains("Restored by pvefleet job"));
        assert!(!description.contains("Created by"), "{description}");
        assert_eq!(get("unique").as_deref(), Some("1"));
        assert_eq!(get("force"), None);
        assert_eq!(get("storage").as_deref(), Some("local-lvm"), "where it was");
    }

    #[test]
    fn a_restored_container_needs_what_a_create_of_it_would() {
        let text = "hostname: web\nunprivileged: 1\nfeatures: keyctl=1,nesting=1\nmp0: /srv/data,mp=/data\nmp1: local-lvm:vm-101-disk-1,mp=/var,size=8G\n";
        let (unprivileged, features, binds) = BackedUp::parse(text).rights_it_needs();
        assert!(unprivileged);
        assert!(features.is_some_and(|f| f.keyctl && f.nesting));
        assert_eq!(binds.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["mp0"], "a volume is allocated anew");
        let (unprivileged, ..) = BackedUp::parse("hostname: web\n").rights_it_needs();
        assert!(!unprivileged, "PVE's default is privileged");
    }
}
