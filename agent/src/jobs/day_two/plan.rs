//! What a day-two job would find and send, changing nothing (`pvefleet update|resize|start|…
//! --plan`): the container and its marker, the diff of an update (and what a running
//! container would leave pending, so whether its restart policy reboots it), a resize's sizes,
//! a power job's state; and the exact PVE calls. All reads.

use pvefleet_schemas::trust::Grant;
use pvefleet_schemas::{DayTwoJob, PlanCheck, PlanReply, PlannedCall, PowerAction, RestartPolicy};
use serde_json::Value;

use super::Planned;
use super::update::{Want, config_params, wanted};
use crate::config::Config;
use crate::proxmox::PveClient;

fn check(name: &str, ok: bool, detail: impl Into<String>) -> PlanCheck {
    PlanCheck { check: name.into(), ok, detail: detail.into() }
}

/// Whether PVE applies a change of `key` to a running container at once (LXC's hotplug:
/// the options it takes live, memory, swap, CPU limits, NICs, new mount points); anything
/// else waits for the next start.
fn applied_live(key: &str, want: &Want, cfg: &Value) -> bool {
    const AT_ONCE: [&str; 12] = [
        "description",
        "onboot",
        "startup",
        "protection",
        "hostname",
        "hookscript",
        "cores",
        "tags",
        "memory",
        "swap",
        "cpulimit",
        "cpuunits",
    ];
    AT_ONCE.contains(&key)
        || key.starts_with("net")
        || (key.starts_with("mp") && matches!(want, Want::Set(_)) && cfg.get(key).is_none())
}

pub async fn plan(pve: &PveClient, config: &Config, job: &DayTwoJob, grant: &Grant) -> PlanReply {
    let node = &config.node;
    let mut planned = Planned::default();
    // A move's plan is asked of the agent of the node it would go to.
    if let DayTwoJob::Move(j) = job
        && j.to == *node
    {
        planned.admitted(job, grant);
        super::migrate::plan_arrival(pve, j, &mut planned).await;
        return planned.reply(node, Some(j.target.vmid));
    }
    if job.node() != node {
        return super::super::plan::refused(
            node,
            format!("the plan is for node {}, this agent runs {node}", job.node()),
        );
    }
    planned.admitted(job, grant);
    let Some(target) = job.target() else {
        let DayTwoJob::Restore(j) = job else { unreachable!("only a restore as a new container has no target") };
        let vmid = super::restore::plan_new(pve, j, &mut planned).await;
        return planned.reply(node, vmid);
    };
    let vmid = target.vmid;
    let Planned { mut checks, mut calls } = planned;
    let marker = match job {
        DayTwoJob::Restore(j) => j.marker(),
        _ => super::marker_of(target),
    };
    let cfg = match pve.container_config(vmid).await {
        Ok(Some(cfg)) if crate::jobs::container::carries_marker(&cfg, &marker) => {
            let name = cfg.get("hostname").and_then(Value::as_str).unwrap_or("?").to_owned();
            checks.push(check("container", true, format!("{vmid} ({name}) on {node}, with its marker")));
            Some(cfg)
        }
        Ok(Some(_)) => {
            checks.push(check(
                "container",
                false,
                format!("{vmid} on {node} does not carry its marker: not pvefleet's"),
            ));
            None
        }
        Ok(None) => {
            let elsewhere = pve.guest_node(vmid).await.ok().flatten();
            let why = match elsewhere {
                Some(other) => format!("{vmid} is on {other} now, not {node} (moved)"),
                None => format!("{vmid} does not exist on {node} or any other node"),
            };
            checks.push(check("container", false, why));
            None
        }
        Err(e) => {
            checks.push(check("container", false, e.to_string()));
            None
        }
    };
    let path = |rest: &str| format!("/nodes/{node}/lxc/{vmid}{rest}");
    if let Some(cfg) = &cfg {
        let running = pve.status(vmid).await.map(|s| s.status == "running").unwrap_or(false);
        match job {
            DayTwoJob::Update(j) => {
                let wants = wanted(&j.change, cfg);
                let text = |k: &str| match cfg.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "(unset)".into(),
                };
                let diff: Vec<String> = wants
                    .iter()
                    .map(|(k, w)| match w {
                        Want::Set(v) => format!("{k}: {} → {v}", text(k)),
                        Want::Delete => format!("{k}: {} → (removed)", text(k)),
                    })
                    .collect();
                checks.push(if diff.is_empty() {
                    check("change", true, "already as asked: nothing would be sent")
                } else {
                    check("change", true, diff.join("; "))
                });
                if !wants.is_empty() {
                    let parameters = config_params(&wants, cfg);
                    calls.push(PlannedCall { call: format!("PUT {}", path("/config")), parameters });
                }
                let pending: Vec<&String> =
                    wants.iter().filter(|(k, w)| running && !applied_live(k, w, cfg)).map(|(k, _)| k).collect();
                let reboot = running
                    && match j.restart {
                        RestartPolicy::Never => false,
                        RestartPolicy::IfNeeded => !pending.is_empty(),
                        RestartPolicy::Always => true,
                    };
                let names = pending.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
                let detail = match (running, reboot, pending.is_empty()) {
                    (false, _, _) => "not running: PVE applies the change at once, no restart".to_owned(),
                    (true, true, false) => {
                        format!("{names} would wait for a restart: one reboot ({})", j.restart.as_str())
                    }
                    (true, true, true) => format!("one reboot ({})", j.restart.as_str()),
                    (true, false, false) => format!("{names} would stay pending until its next restart (never)"),
                    (true, false, true) => "applied at once while it runs: no restart".to_owned(),
                };
                checks.push(check("restart", true, detail));
                if reboot {
                    let timeout = j.options.shutdown_timeout.0.as_secs().max(1).to_string();
                    calls.push(PlannedCall {
                        call: format!("POST {}", path("/status/reboot")),
                        parameters: vec![("timeout".into(), timeout)],
                    });
                }
            }
            DayTwoJob::Resize(j) => {
                let size = super::resize::disk_size(cfg, &j.disk);
                let asked = j.size_text();
                checks.push(match size {
                    None => {
                        check("disk", false, format!("disk: container {vmid} has no disk `{}` with a size", j.disk))
                    }
                    Some(now) if now > j.size_bytes => check(
                        "disk",
                        false,
                        format!(
                            "size_bytes: {asked} is smaller than {}'s {} now; a disk only grows",
                            j.disk,
                            pvefleet_schemas::day_two::size_text(now)
                        ),
                    ),
                    Some(now) if now == j.size_bytes => {
                        check("disk", true, format!("{} is already {asked}: nothing would be sent", j.disk))
                    }
                    Some(now) => {
                        calls.push(PlannedCall {
                            call: format!("PUT {}", path("/resize")),
                            parameters: vec![("disk".into(), j.disk.clone()), ("size".into(), asked.clone())],
                        });
                        check(
                            "disk",
                            true,
                            format!("{}: {} → {asked}", j.disk, pvefleet_schemas::day_two::size_text(now)),
                        )
                    }
                });
            }
            DayTwoJob::Power(j) => {
                let state = if running { "running" } else { "stopped" };
                let sent = match (j.action, running) {
                    (PowerAction::Start, false) => Some(("/status/start", vec![])),
                    (PowerAction::Stop, true) => Some(("/status/stop", vec![])),
                    (PowerAction::Shutdown, true) => {
                        let timeout = j.options.shutdown_timeout.0.as_secs().max(1).to_string();
                        Some(("/status/shutdown", vec![("timeout".to_owned(), timeout)]))
                    }
                    (PowerAction::Reboot, true) => {
                        let timeout = j.options.shutdown_timeout.0.as_secs().max(1).to_string();
                        Some(("/status/reboot", vec![("timeout".to_owned(), timeout)]))
                    }
                    _ => None,
                };
                let refused = j.action == PowerAction::Reboot && !running;
                checks.push(match (&sent, refused) {
                    (_, true) => {
                        check("state", false, format!("{vmid} is stopped: nothing to reboot; start it instead"))
                    }
                    (None, _) => check("state", true, format!("{vmid} is already {state}: nothing would be sent")),
                    (Some(_), _) => check("state", true, format!("{vmid} is {state}: {} it", j.action)),
                });
                if let Some((rest, parameters)) = sent {
                    calls.push(PlannedCall { call: format!("POST {}", path(rest)), parameters });
                }
            }
            other => {
                let mut planned = Planned { checks, calls };
                match other {
                    DayTwoJob::Snapshot(j) => super::snapshot::plan(pve, j, &mut planned).await,
                    DayTwoJob::Rollback(j) => super::rollback::plan(pve, j, &mut planned).await,
                    DayTwoJob::Backup(j) => super::backup::plan(pve, j, &mut planned).await,
                    DayTwoJob::Restore(j) => super::restore::plan_over(pve, j, &mut planned).await,
                    DayTwoJob::Move(j) => planned.check(
                        "move",
                        false,
                        format!("a move's plan is asked of the agent of the node it goes to ({})", j.to),
                    ),
                    DayTwoJob::Update(_) | DayTwoJob::Resize(_) | DayTwoJob::Power(_) => unreachable!("above"),
                }
                Planned { checks, calls } = planned;
            }
        }
    }
    Planned { checks, calls }.reply(node, Some(vmid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_running_container_takes_at_once_is_told_from_what_waits() {
        let cfg = serde_json::json!({"net0": "name=eth0", "mp0": "local-lvm:vm-1-disk-1,mp=/a"});
        let set = Want::Set("x".into());
        assert!(applied_live("memory", &set, &cfg) && applied_live("net1", &set, &cfg));
        assert!(applied_live("mp1", &set, &cfg), "a new mount point is hotplugged");
        assert!(!applied_live("mp0", &set, &cfg), "a changed one waits");
        assert!(!applied_live("nameserver", &set, &cfg) && !applied_live("features", &set, &cfg));
    }
}
