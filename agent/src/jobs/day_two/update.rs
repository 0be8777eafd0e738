//! The update job: a change to a container's settings, made against the config it was
//! computed from, then the restart its policy asks for, then checked.
//!
//! | step        | does                                                                  | undo |
//! |-------------|-----------------------------------------------------------------------|------|
//! | finding     | the container here, with its marker                                    | none |
//! | configuring | read the config, diff, `PUT config` with its digest: a digest another user changed meanwhile is read again and diffed again (never overwritten blindly); after 3 tries, `conflict` naming the keys | none |
//! | restarting  | `GET …/pending`; a reboot under `always`, or under `if-needed` when PVE left changes pending (the event names them); sent once | none |
//! | verifying   | the config (with what is pending) is as asked                          | none |
//!
//! A guarded update (`guard`) begins with `snapshotting` (a snapshot `pf-<short id>`, taken
//! once, see [`super::snapshot::take`]) and ends with `cleaning_up` (the snapshot deleted,
//! unless kept); a failure after the snapshot is undone by a rollback to it (sent once, and
//! started again if it ran), unless `on_failure` is `keep`.
//!
//! Nothing to change is success ("already as asked"); a change whose answer was lost is found
//! done when the config is read again.

use std::collections::{BTreeMap, BTreeSet};

use pvefleet_schemas::{
    ConfigChange, ErrorInfo, ErrorKind, JobResult, LogStream, OnFailure, RestartPolicy, Step, UpdateJob,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::jobs::once::Once;
use crate::jobs::{Claimed, Core, Env, JobEnd, Saga, StepError, StepResult, StepRow, Undone, always};
use crate::proxmox::Refusal;
use crate::retry;

fn guarded(job: &UpdateJob) -> bool {
    job.guard.is_some()
}

fn cleans_up(job: &UpdateJob) -> bool {
    job.guard.is_some_and(|g| !g.keep_snapshot)
}

const STEPS: [StepRow<UpdateJob>; 6] = [
    StepRow { step: Step::Finding, percent: 5, what: "finding the container", runs: always },
    StepRow { step: Step::Snapshotting, percent: 10, what: "taking a snapshot to roll back to", runs: guarded },
    StepRow { step: Step::Configuring, percent: 20, what: "changing its config", runs: always },
    StepRow { step: Step::Restarting, percent: 50, what: "applying what PVE left pending", runs: always },
    StepRow { step: Step::Verifying, percent: 80, what: "checking the config is as asked", runs: always },
    StepRow { step: Step::CleaningUp, percent: 90, what: "deleting the snapshot taken before", runs: cleans_up },
];

pub async fn run(job: &UpdateJob, claimed: Claimed, env: Env<'_>, cancel: &CancellationToken) -> JobEnd {
    let marker = super::marker_of(&job.target);
    let core = Core::new(job.job_id, &job.node, claimed, env, marker, job.options.task_timeout.0);
    let snapshot = pvefleet_schemas::day_two::default_snapshot_name(job.job_id);
    let mut saga = UpdateRun { core, job, changed: Vec::new(), pending: Vec::new(), rebooted: false, snapshot };
    crate::jobs::run_in_span(&mut saga, env.stop, cancel, "update").await
}

struct UpdateRun<'a> {
    core: Core,
    job: &'a UpdateJob,
    /// The keys this run wrote.
    changed: Vec<String>,
    /// The keys PVE keeps pending after the restart step (under `never`).
    pending: Vec<String>,
    rebooted: bool,
    /// The snapshot a guarded update takes (`pf-<short id>`).
    snapshot: String,
}

/// One key's change: the value to send, or a delete.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Want {
    Set(String),
    Delete,
}

/// A property string (`name=eth0,bridge=vmbr0`) as a map; `ignore` keys left out.
fn props(text: &str, ignore: &[&str]) -> BTreeMap<String, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or((p.to_owned(), String::new()), |(k, v)| (k.to_owned(), v.to_owned())))
        .filter(|(k, _)| !ignore.contains(&k.as_str()))
        .collect()
}

fn text_of(cfg: &Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn number_of(cfg: &Value, key: &str) -> Option<f64> {
    text_of(cfg, key).and_then(|t| t.parse().ok())
}

fn flag_of(cfg: &Value, key: &str) -> bool {
    text_of(cfg, key).is_some_and(|t| t == "1" || t == "true")
}

/// Tags as PVE keeps them: lowercased, de-duplicated, sorted.
fn tag_set(text: &str) -> BTreeSet<String> {
    crate::proxmox::tags(text).collect()
}

/// What must be sent for the container whose config (pending included) is `cfg` to be as
/// `change` asks: only the keys that differ, so a second run, or a run after a lost answer,
/// sends nothing.
pub(crate) fn wanted(change: &ConfigChange, cfg: &Value) -> BTreeMap<String, Want> {
    let mut out = BTreeMap::new();
    let mut number = |key: &str, want: Option<f64>, unset: Option<f64>| {
        if let Some(want) = want
            && number_of(cfg, key).or(unset) != Some(want)
        {
            out.insert(key.to_owned(), Want::Set(format_number(want)));
        }
    };
    number("memory", change.memory.map(f64::from), None);
    number("swap", change.swap.map(f64::from), None);
    number("cores", change.cores.map(f64::from), None);
    number("cpulimit", change.cpulimit, Some(0.0));
    number("cpuunits", change.cpuunits.map(f64::from), None);
    for (key, nic) in &change.nics {
        let now = text_of(cfg, key);
        match (nic, now) {
            (None, Some(_)) => {
                out.insert(key.clone(), Want::Delete);
            }
            (None, None) => {}
            (Some(nic), now) => {
                let mut nic = nic.clone();
                // A changed NIC keeps its MAC address unless the change names one.
                let current = now.as_deref().map(|n| props(n, &[])).unwrap_or_default();
                if nic.hwaddr.is_none()
                    && let Some(mac) = current.get("hwaddr")
                {
                    nic.hwaddr = Some(mac.clone());
                }
                let want = nic.to_pve();
                if props(&want, &["type"]) != props(now.as_deref().unwrap_or_default(), &["type"]) {
                    out.insert(key.clone(), Want::Set(want));
                }
            }
        }
    }
    if let Some(servers) = &change.nameservers {
        let now: Vec<String> =
            text_of(cfg, "nameserver").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        let want: Vec<String> = servers.iter().map(ToString::to_string).collect();
        if want.is_empty() && !now.is_empty() {
            out.insert("nameserver".into(), Want::Delete);
        } else if !want.is_empty() && want != now {
            out.insert("nameserver".into(), Want::Set(want.join(" ")));
        }
    }
    if let Some(tags) = &change.tags {
        let now = tag_set(&text_of(cfg, "tags").unwrap_or_default());
        // The markers always stay: they are how pvefleet knows the container is its own.
        let mut want: BTreeSet<String> = tags.iter().map(|t| t.to_ascii_lowercase()).collect();
        want.extend(now.iter().filter(|t| t.starts_with(pvefleet_schemas::MARKER_TAG_PREFIX)).cloned());
        if want != now {
            out.insert("tags".into(), Want::Set(want.into_iter().collect::<Vec<_>>().join(";")));
        }
    }
    if let Some(d) = &change.description
        && text_of(cfg, "description").unwrap_or_default().trim_end() != d.trim_end()
    {
        out.insert("description".into(), Want::Set(d.clone()));
    }
    for (key, want) in [("onboot", change.onboot), ("protection", change.protection)] {
        if let Some(want) = want
            && flag_of(cfg, key) != want
        {
            out.insert(key.into(), Want::Set(if want { "1" } else { "0" }.into()));
        }
    }
    if let Some(startup) = &change.startup {
        let want = startup.to_pve();
        if props(&want, &[]) != props(&text_of(cfg, "startup").unwrap_or_default(), &[]) {
            out.insert("startup".into(), if want.is_empty() { Want::Delete } else { Want::Set(want) });
        }
    }
    for (key, mount) in &change.mounts {
        if cfg.get(key).is_none() {
            out.insert(key.clone(), Want::Set(mount.to_pve()));
        }
    }
    if let Some(features) = &change.features {
        let want = features.to_pve();
        if props(&want, &[]) != props(&text_of(cfg, "features").unwrap_or_default(), &[]) {
            out.insert("features".into(), if want.is_empty() { Want::Delete } else { Want::Set(want) });
        }
    }
    out
}

/// The `PUT …/config` parameters that make `wants` so on the config read (`cfg`): the keys to
/// set, those to delete, and the digest it must still have.
pub(crate) fn config_params(wants: &BTreeMap<String, Want>, cfg: &Value) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut deletes = Vec::new();
    for (key, want) in wants {
        match want {
            Want::Set(value) => params.push((key.clone(), value.clone())),
            Want::Delete => deletes.push(key.clone()),
        }
    }
    if !deletes.is_empty() {
        params.push(("delete".to_owned(), deletes.join(",")));
    }
    if let Some(digest) = cfg.get("digest").and_then(Value::as_str) {
        params.push(("digest".to_owned(), digest.to_owned()));
    }
    params
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 { format!("{}", n as i64) } else { n.to_string() }
}

fn keys_of(wants: &BTreeMap<String, Want>) -> String {
    wants.keys().cloned().collect::<Vec<_>>().join(", ")
}

impl UpdateRun<'_> {
    /// The container, and nothing in the change that PVE keeps for root@pam when the agent
    /// signs in with a token (a bind mount, features beyond nesting).
    async fn find(&mut self) -> StepResult {
        let cfg = super::find(&mut self.core, &self.job.target).await?;
        let unprivileged = cfg.get("unprivileged").is_some_and(|u| u == 1 || u == "1");
        let change = &self.job.change;
        let mounts: Vec<(String, &pvefleet_schemas::lxc::MountPoint)> =
            change.mounts.iter().map(|(k, m)| (format!("change.mounts.{k}"), m)).collect();
        let features = change.features.as_ref().map(|f| ("change.features", f));
        crate::jobs::checks::root_only(&mounts, features, unprivileged, self.core.pve.is_root_login())?;
        if self.job.guard.is_some() {
            let vmid = self.core.vmid();
            super::snapshot::can_snapshot(&mut self.core, vmid).await?;
        }
        Ok(())
    }

    /// The guard's snapshot, and whether the container runs (to start it again after a
    /// rollback).
    async fn take_snapshot(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        if self.core.cp.was_running.is_none() {
            self.core.cp.was_running = Some(self.core.pve.status(vmid).await?.status == "running");
            self.core.save().await?;
        }
        let name = self.snapshot.clone();
        super::snapshot::take(&mut self.core, vmid, &name, Some("before an update; rolled back to if it fails"))
            .await?;
        Ok(())
    }

    /// The guard's snapshot deleted once the change is made: a failure here is a warning (the
    /// change stands).
    async fn clean_up(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let name = self.snapshot.clone();
        match super::snapshot::delete(&mut self.core, vmid, &name).await {
            Err(StepError::Failed { message, .. }) => {
                let warning = format!("the change is made, but snapshot {name} could not be deleted: {message}");
                self.core.events.warning(warning).await?;
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Checkpoints whether a change may have been written (what the undo goes by).
    async fn wrote(&mut self, wrote: bool) -> StepResult {
        if self.core.cp.wrote != wrote {
            self.core.cp.wrote = wrote;
            self.core.save().await?;
        }
        Ok(())
    }

    async fn config(&mut self) -> Result<Value, StepError> {
        let vmid = self.core.vmid();
        super::ours(&mut self.core, vmid).await
    }

    async fn configure(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let (mut digest_tries, mut lost_tries) = (0, 0);
        let mut pause = retry::CONFIG_UNANSWERED.first;
        // Whether a write may have been made (by an earlier delivery, or a request of this run
        // whose answer never came): a refused one was not.
        let mut maybe_written = self.core.cp.wrote;
        loop {
            let cfg = self.config().await?;
            let wants = wanted(&self.job.change, &cfg);
            if wants.is_empty() {
                return Ok(());
            }
            let params = config_params(&wants, &cfg);
            let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let keys = keys_of(&wants);
            self.core.events.log(LogStream::Task, format!("changing {keys} of container {vmid}")).await?;
            self.wrote(true).await?;
            let sent = self.core.pve.put_config(vmid, &params).await;
            if let Err(e) = &sent
                && !e.is_transient()
            {
                self.wrote(maybe_written).await?;
            }
            match sent {
                Ok(()) => {
                    self.changed = wants.into_keys().collect();
                    return Ok(());
                }
                Err(e) if e.refusal() == Some(Refusal::DigestChanged) => {
                    digest_tries += 1;
                    if digest_tries >= retry::CONFIG_DIGEST_ATTEMPTS {
                        return Err(StepError::failed(
                            ErrorKind::Conflict,
                            format!(
                                "the config of container {vmid} was changed by someone else while this job changed \
                                 {keys}, {digest_tries} times in a row; nothing of this job was written"
                            ),
                        ));
                    }
                    self.core
                        .events
                        .warning(format!(
                            "the config of container {vmid} changed while this job read it (another user?); reading \
                             it again"
                        ))
                        .await?;
                }
                Err(e) if e.is_transient() && lost_tries + 1 < retry::CONFIG_UNANSWERED_ATTEMPTS => {
                    // Carried out or not: the config read again says which.
                    maybe_written = true;
                    lost_tries += 1;
                    tracing::warn!(error = %e, retry_in = ?pause, "config change unanswered; reading the config again");
                    tokio::time::sleep(pause).await;
                    pause = retry::CONFIG_UNANSWERED.after(pause);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn restart(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let resumed_reboot = self.core.pending_task("vzreboot").is_some() || self.core.asked("vzreboot");
        let running = self.core.pve.status(vmid).await?.status == "running";
        let pending = if running { self.core.pve.pending(vmid).await? } else { Vec::new() };
        let reboot = resumed_reboot
            || running
                && match self.job.restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::IfNeeded => !pending.is_empty(),
                    // Once: a redelivery after the reboot finds its task (`reboot_once`).
                    RestartPolicy::Always => true,
                };
        if !reboot {
            if !pending.is_empty() {
                self.core
                    .events
                    .warning(format!(
                        "PVE keeps {} pending until container {vmid} restarts (restart policy {})",
                        pending.join(", "),
                        self.job.restart.as_str()
                    ))
                    .await?;
            }
            self.pending = pending;
            return Ok(());
        }
        if !pending.is_empty() {
            let message = format!("rebooting container {vmid} to apply {} (pending)", pending.join(", "));
            self.core.events.log(LogStream::Task, message).await?;
        }
        super::ours(&mut self.core, vmid).await?;
        self.rebooted = self.core.reboot_once(vmid, self.job.options.shutdown_timeout.0).await?;
        Ok(())
    }

    async fn verify(&mut self) -> StepResult {
        let vmid = self.core.vmid();
        let cfg = self.config().await?;
        let left = wanted(&self.job.change, &cfg);
        if !left.is_empty() {
            return Err(StepError::failed(
                ErrorKind::Conflict,
                format!(
                    "after the change, container {vmid}'s {} is not as asked (changed again by someone else?)",
                    keys_of(&left)
                ),
            ));
        }
        Ok(())
    }
}

impl Saga for UpdateRun<'_> {
    crate::jobs::saga_parts!(UpdateJob);

    async fn step(&mut self, step: Step) -> StepResult {
        match step {
            Step::Finding => self.find().await,
            Step::Snapshotting => self.take_snapshot().await,
            Step::Configuring => self.configure().await,
            Step::Restarting => self.restart().await,
            Step::Verifying => self.verify().await,
            Step::CleaningUp => self.clean_up().await,
            other => unreachable!("{other} is not a step of an update job"),
        }
    }

    /// A guarded update that failed after sending its change rolls back to its snapshot
    /// (unless `keep`). Decided by what the checkpoint says was done, not by the failing step:
    /// nothing sent (a digest conflict, a refusal, a cancel before the write) is nothing to
    /// undo, and a change already verified stands.
    async fn undo(&mut self) -> Result<Undone, StepError> {
        let Some(guard) = self.job.guard else { return Ok(Undone::Nothing(None)) };
        let name = self.snapshot.clone();
        if !self.core.cp.wrote {
            return Ok(Undone::Nothing(Some("nothing was changed".into())));
        }
        if self.core.cp.done.is_some_and(|done| done >= Step::Verifying) {
            return Ok(Undone::Nothing(Some(format!("the change is made; snapshot {name} stays"))));
        }
        if guard.on_failure == OnFailure::Keep {
            let vmid = self.core.vmid();
            return Ok(Undone::Nothing(Some(format!(
                "left as the failure left it (--on-failure keep); snapshot {name} is kept: `pvefleet rollback` to it \
                 restores container {vmid} as it was"
            ))));
        }
        let vmid = self.core.vmid();
        let start = self.core.cp.was_running == Some(true);
        let what = format!("rolling back: container {vmid} to snapshot {name}, taken before the change");
        self.core.events.step_event(Step::RollingBack, 0, what).await?;
        self.core.once(vmid, Once::Rollback { name: &name, start }).await?;
        Ok(Undone::RolledBack(format!("container {vmid} rolled back to snapshot {name} (kept), as it was before")))
    }

    fn result(&mut self, error: Option<ErrorInfo>, rolled_back: bool) -> JobResult {
        JobResult { rolled_back, ..super::result(self.job.job_id, &self.job.node, &self.core, error) }
    }

    fn completed(&mut self) -> String {
        let vmid = self.core.vmid();
        let mut message = if self.changed.is_empty() && !self.core.resumed {
            format!("container {vmid} is already as asked: nothing changed")
        } else if self.changed.is_empty() {
            format!("container {vmid} is as asked")
        } else {
            format!("container {vmid} updated: {}", self.changed.join(", "))
        };
        if self.rebooted {
            message.push_str("; rebooted to apply it");
        }
        if !self.pending.is_empty() {
            message.push_str(&format!("; pending until its next restart: {}", self.pending.join(", ")));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvefleet_schemas::lxc::{Ipv4Setting, Nic};

    fn cfg() -> Value {
        serde_json::json!({
            "memory": 1024, "swap": 512, "cores": 2, "hostname": "web",
            "tags": "pvefleet-abc;web",
            "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:F7:BD:95,ip=dhcp,type=veth",
            "nameserver": "1.1.1.1", "features": "nesting=1", "digest": "x"
        })
    }

    #[test]
    fn only_what_differs_is_sent() {
        let same = ConfigChange { memory: Some(1024), cores: Some(2), ..Default::default() };
        assert!(wanted(&same, &cfg()).is_empty());
        let more = ConfigChange { memory: Some(2048), cores: Some(2), ..Default::default() };
        assert_eq!(wanted(&more, &cfg()), [("memory".to_owned(), Want::Set("2048".into()))].into());
    }

    #[test]
    fn the_markers_stay_whatever_the_tags_say() {
        let change = ConfigChange { tags: Some(vec!["db".into()]), ..Default::default() };
        assert_eq!(wanted(&change, &cfg())["tags"], Want::Set("db;pvefleet-abc".into()));
        let same = ConfigChange { tags: Some(vec!["WEB".into()]), ..Default::default() };
        assert!(wanted(&same, &cfg()).is_empty());
    }

    #[test]
    fn a_changed_nic_keeps_its_mac_and_a_removed_one_is_deleted() {
        let nic = Nic::new("eth0", "vmbr1", Ipv4Setting::Dhcp);
        let change = ConfigChange {
            nics: [("net0".to_owned(), Some(nic)), ("net1".to_owned(), None)].into(),
            ..Default::default()
        };
        let wants = wanted(&change, &cfg());
        let Want::Set(net0) = &wants["net0"] else { panic!("{wants:?}") };
        assert!(net0.contains("bridge=vmbr1") && net0.contains("hwaddr=BC:24:11:F7:BD:95"), "{net0}");
        assert!(!wants.contains_key("net1"), "absent already: nothing to delete");
        let same = ConfigChange {
            nics: [("net0".to_owned(), Some(Nic::new("eth0", "vmbr0", Ipv4Setting::Dhcp)))].into(),
            ..Default::default()
        };
        assert!(wanted(&same, &cfg()).is_empty());
        let gone = ConfigChange { nics: [("net0".to_owned(), None)].into(), ..Default::default() };
        assert_eq!(wanted(&gone, &cfg())["net0"], Want::Delete);
    }

    #[test]
    fn nameservers_and_flags_compare_as_pve_writes_them() {
        let change = ConfigChange {
            nameservers: Some(vec!["1.1.1.1".parse().unwrap()]),
            onboot: Some(false),
            cpulimit: Some(0.0),
            ..Default::default()
        };
        assert!(wanted(&change, &cfg()).is_empty());
        let change = ConfigChange { nameservers: Some(vec![]), onboot: Some(true), ..Default::default() };
        let wants = wanted(&change, &cfg());
        assert_eq!(wants["nameserver"], Want::Delete);
        assert_eq!(wants["onboot"], Want::Set("1".into()));
    }

    #[test]
    fn the_step_table_configures_then_restarts_then_verifies() {
        assert_eq!(
            STEPS.map(|r| r.step),
            [Step::Finding, Step::Snapshotting, Step::Configuring, Step::Restarting, Step::Verifying, Step::CleaningUp]
        );
        assert!(STEPS.windows(2).all(|w| w[0].percent < w[1].percent && w[0].step < w[1].step));
    }
}
