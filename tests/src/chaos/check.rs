//! The checker: the whole history against what the world holds at the end. Pure, so each
//! rule can be read (and tested) on its own.
//!
//! Per job: exactly one terminal event, last; `seq` 1..n; percent never down; a completed job
//! has exactly one container with its marker, with the vmid its result names, on its node; a
//! failed or cancelled one has none; it did not fail for a transient fault; the store agrees.
//! A day-two job: its events as any job's; completed, its container is as it asked (an
//! update's memory and nameservers, a resize's size, a power job's state) and was rebooted or
//! resized at most once; one aimed at the stranger's container was refused (`conflict`).
//! Across jobs: no guest belongs to no job (but the stranger's, which nothing wrote to); a
//! cancel that printed success ended its job as cancelled; every run of one request printed
//! the same job; nothing submitted was lost.

use std::collections::{BTreeMap, BTreeSet};

use pvefleet_schemas::{ErrorKind, Event, EventType, JobId};

use super::history::{DayTwo, History};
use super::observe::{Container, Guest, Observed};
use super::plan::{STRANGER_VMID, Then};

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub job: Option<JobId>,
    pub detail: String,
}

/// How the jobs ended, for the summary.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub jobs: usize,
    pub completed: usize,
    /// Error kind (as on the wire) → jobs that failed with it.
    pub failed: BTreeMap<String, usize>,
    /// Job kind → how many of it the run had.
    pub kinds: BTreeMap<&'static str, usize>,
}

/// Error kinds a job may end with in a run: what the harness caused on purpose.
const EXPECTED_FAILURES: [ErrorKind; 2] = [ErrorKind::Cancelled, ErrorKind::Task];

pub fn check(history: &History, seen: &Observed) -> (Outcomes, Vec<Violation>) {
    let mut v = Vec::new();
    let mut outcomes = Outcomes::default();
    let ids: BTreeSet<JobId> =
        history.jobs.keys().chain(seen.events.keys()).chain(seen.store.keys()).copied().collect();
    let mut guests_of: BTreeMap<JobId, Vec<&Guest>> = BTreeMap::new();
    for guest in seen.guests.iter().filter(|g| g.vmid != STRANGER_VMID) {
        match ids.iter().find(|id| guest.tags.iter().any(|t| t.eq_ignore_ascii_case(&id.marker_tag()))) {
            Some(id) => guests_of.entry(*id).or_default().push(guest),
            None => v.push(Violation {
                kind: "orphan_container",
                job: None,
                detail: format!("container {} on {} belongs to no job (tags {:?})", guest.vmid, guest.node, guest.tags),
            }),
        }
    }
    for id in &ids {
        outcomes.jobs += 1;
        let kind = match history.jobs.get(id).and_then(|s| s.day_two) {
            Some(DayTwo { then: Some(then), .. }) => then.kind(),
            Some(DayTwo { then: None, .. }) => "stranger",
            None => "create",
        };
        *outcomes.kinds.entry(kind).or_default() += 1;
        let events = seen.events.get(id).map(Vec::as_slice).unwrap_or_default();
        let mut bad = |kind: &'static str, detail: String| v.push(Violation { kind, job: Some(*id), detail });
        let end = check_events(events, &mut bad);
        let guests = guests_of.get(id).map(Vec::as_slice).unwrap_or_default();
        if let Some(submitted) = history.jobs.get(id)
            && events.iter().any(|e| e.node.as_str() != submitted.node)
        {
            bad("wrong_node", format!("events from another node than {}", submitted.node));
        }
        if let Some(day_two) = history.jobs.get(id).and_then(|s| s.day_two) {
            if let Some(end) = end {
                let container = seen.containers.get(&day_two.vmid);
                check_day_two(*id, day_two, end, container, &mut outcomes, &mut bad);
                check_store(seen, id, end, &mut bad);
            }
            continue;
        }
        let Some(end) = end else {
            if !guests.is_empty() {
                bad("container_of_unended_job", format!("containers {:?}", vmids(guests)));
            }
            continue;
        };
        let result = end.result.as_ref();
        match end.kind {
            EventType::Complete => {
                outcomes.completed += 1;
                let want = result.and_then(|r| r.vmid).map(pvefleet_schemas::Vmid::get);
                match guests {
                    [one] if Some(one.vmid) == want && moved_to(history, one.vmid, end.node.as_str(), &one.node) => {}
                    [one] => bad(
                        "wrong_container",
                        format!("container {} on {}, the result says {want:?} on {}", one.vmid, one.node, end.node),
                    ),
                    [] => bad(
                        "missing_container",
                        format!("completed with vmid {want:?}, no container carries its marker"),
                    ),
                    many => bad("duplicate_containers", format!("{} containers: {:?}", many.len(), vmids(many))),
                }
            }
            _ => {
                let error = result.and_then(|r| r.error.as_ref());
                let kind = error.map_or("none".to_owned(), |e| wire(&e.kind));
                *outcomes.failed.entry(kind.clone()).or_default() += 1;
                if !guests.is_empty() {
                    bad("left_behind", format!("failed ({kind}) but left containers {:?}", vmids(guests)));
                }
                let caused = error.is_some_and(|e| {
                    EXPECTED_FAILURES.contains(&e.kind)
                        && (e.kind != ErrorKind::Task || e.message.contains("injected failure"))
                });
                if !caused {
                    bad("failed_by_transient_fault", format!("{kind}: {}", end.message));
                }
            }
        }
        check_store(seen, id, end, &mut bad);
    }
    match seen.containers.get(&STRANGER_VMID) {
        Some(c) if c.config["digest"].as_str() == Some(seen.stranger_digest_before.as_str()) => {}
        other => v.push(Violation {
            kind: "stranger_written",
            job: None,
            detail: format!(
                "the stranger's container {STRANGER_VMID} changed (digest {} at the start): {:?}",
                seen.stranger_digest_before,
                other.map(|c| &c.config)
            ),
        }),
    }
    for cancel in history.cancels.iter().filter(|c| c.code == Some(0)) {
        let end = seen.events.get(&cancel.job).and_then(|e| e.iter().rev().find(|e| e.is_terminal()));
        let cancelled =
            end.and_then(|e| e.result.as_ref()?.error.as_ref()).is_some_and(|e| e.kind == ErrorKind::Cancelled);
        if !cancelled {
            v.push(Violation {
                kind: "cancel_said_done_but_was_not",
                job: Some(cancel.job),
                detail: format!("`pvefleet cancel` said: {}", cancel.said.trim()),
            });
        }
    }
    for (request, printed) in &history.requests {
        let distinct: BTreeSet<&JobId> = printed.iter().collect();
        let stored = seen.store.values().filter(|r| r.request_id.as_deref() == Some(request.as_str())).count();
        if distinct.len() != 1 || stored != 1 {
            v.push(Violation {
                kind: "request_made_two_jobs",
                job: printed.first().copied(),
                detail: format!("request {request}: submit printed {distinct:?}; the store has {stored} jobs for it"),
            });
        }
    }
    for what in &history.unsubmitted {
        v.push(Violation { kind: "submit_never_went_through", job: None, detail: what.clone() });
    }
    for what in &seen.unreadable {
        v.push(Violation { kind: "unreadable_event", job: None, detail: what.clone() });
    }
    (outcomes, v)
}

/// Whether container `vmid`, made on `made_on`, is where it may be: there, or on a node a move
/// job of the harness sent it to (whether that move ended or not: a cancelled one may have
/// gone through).
fn moved_to(history: &History, vmid: u32, made_on: &str, now_on: &str) -> bool {
    made_on == now_on
        || history
            .jobs
            .values()
            .filter_map(|s| s.day_two)
            .any(|d| d.vmid == vmid && matches!(d.then, Some(Then::Move { to }) if format!("pve{}", to + 1) == now_on))
}

/// The store's row of a job agrees with how its events ended.
fn check_store(seen: &Observed, id: &JobId, end: &Event, bad: &mut impl FnMut(&'static str, String)) {
    let result = end.result.as_ref();
    match seen.store.get(id) {
        None => bad("store_missing", "the store has no such job".into()),
        Some(row) => {
            let state = match (end.kind, result.and_then(|r| r.error.as_ref()).map(|e| e.kind)) {
                (EventType::Complete, _) => "succeeded",
                (_, Some(ErrorKind::Cancelled)) => "cancelled",
                _ => "failed",
            };
            let vmid = result.and_then(|r| r.vmid).map(|v| i64::from(v.get()));
            if row.state != state || row.vmid != vmid {
                bad(
                    "store_disagrees",
                    format!("store: {} vmid {:?}; events: {state} vmid {vmid:?}", row.state, row.vmid),
                );
            }
        }
    }
}

/// A day-two job's end against its container as PVE has it at the end.
fn check_day_two(
    id: JobId,
    job: DayTwo,
    end: &Event,
    container: Option<&Container>,
    outcomes: &mut Outcomes,
    bad: &mut impl FnMut(&'static str, String),
) {
    let error = end.result.as_ref().and_then(|r| r.error.as_ref());
    let Some(then) = job.then else {
        // Aimed at the stranger's container: refused, whatever else happened.
        match error {
            Some(e) if e.kind == ErrorKind::Conflict || e.kind == ErrorKind::Cancelled => {
                *outcomes.failed.entry(wire(&e.kind)).or_default() += 1;
            }
            _ => bad("stranger_job_not_refused", format!("{:?}: {}", end.kind, end.message)),
        }
        return;
    };
    if let Some(c) = container {
        if c.reboots > 1 {
            bad("rebooted_twice", format!("container {} rebooted {} times", job.vmid, c.reboots));
        }
        if c.resizes > 1 {
            bad("resized_twice", format!("container {} resized {} times", job.vmid, c.resizes));
        }
        if c.rollbacks > 1 {
            bad("rolled_back_twice", format!("container {} rolled back {} times", job.vmid, c.rollbacks));
        }
        let made = |notes: &[String]| notes.iter().filter(|n| pvefleet_schemas::day_two::made_by(n, id)).count();
        if made(&c.backups) > 1 {
            bad("backed_up_twice", format!("container {} has {} backups of this job", job.vmid, made(&c.backups)));
        }
        if c.nodes != 1 {
            bad("move_split", format!("container {} is listed on {} nodes", job.vmid, c.nodes));
        }
    }
    if let Some(e) = error {
        *outcomes.failed.entry(wire(&e.kind)).or_default() += 1;
        let caused = EXPECTED_FAILURES.contains(&e.kind)
            && (e.kind != ErrorKind::Task || e.message.contains("injected failure"));
        if !caused {
            bad("failed_by_transient_fault", format!("{}: {}", wire(&e.kind), end.message));
        }
        return;
    }
    outcomes.completed += 1;
    let Some(c) = container else {
        bad("missing_container", format!("completed, but container {} is gone", job.vmid));
        return;
    };
    let cfg = &c.config;
    let number = |key: &str| cfg[key].as_u64().or_else(|| cfg[key].as_str().and_then(|s| s.parse().ok()));
    match then {
        Then::Update { memory, .. } => {
            let ns = cfg["nameserver"].as_str().unwrap_or_default();
            if number("memory") != Some(u64::from(memory)) || ns != "9.9.9.9" {
                bad("update_not_as_asked", format!("asked memory {memory}, nameserver 9.9.9.9; has {cfg}"));
            }
        }
        Then::Resize { gib } => {
            let rootfs = cfg["rootfs"].as_str().unwrap_or_default();
            if !rootfs.split(',').any(|p| p == format!("size={gib}G")) {
                bad("resize_not_as_asked", format!("asked {gib}G; rootfs {rootfs}"));
            }
        }
        Then::Power(action) => {
            use pvefleet_schemas::PowerAction;
            let want = match action {
                PowerAction::Start | PowerAction::Reboot => "running",
                PowerAction::Stop | PowerAction::Shutdown => "stopped",
            };
            if c.status != want {
                bad("power_not_as_asked", format!("{action} completed; the container is {}", c.status));
            }
            if action == PowerAction::Reboot && c.reboots != 1 {
                bad("reboot_not_once", format!("a reboot completed; {} reboot tasks ran", c.reboots));
            }
        }
        Then::Snapshot => {
            let ours = c.snapshots.iter().filter(|d| pvefleet_schemas::day_two::made_by(d, id)).count();
            if ours != 1 {
                bad("snapshot_not_once", format!("a snapshot completed; {ours} snapshots carry its job"));
            }
        }
        Then::Rollback => {
            if c.rollbacks != 1 {
                bad("rollback_not_once", format!("a rollback completed; {} rollback tasks ran", c.rollbacks));
            }
        }
        Then::Backup => {
            let ours = c.backups.iter().filter(|n| pvefleet_schemas::day_two::made_by(n, id)).count();
            if ours != 1 {
                bad("backup_not_once", format!("a backup completed; {ours} backups carry its job"));
            }
        }
        Then::Move { to } => {
            let want = format!("pve{}", to + 1);
            if c.node != want {
                bad("move_not_as_asked", format!("moved to {want} (completed); the container is on {}", c.node));
            }
        }
    }
}

/// Checks one job's events in stream order and returns its terminal event, if it has one.
fn check_events<'e>(events: &'e [Event], bad: &mut impl FnMut(&'static str, String)) -> Option<&'e Event> {
    if events.is_empty() {
        bad("lost", "no event at all".into());
        return None;
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    if seqs.iter().enumerate().any(|(i, s)| *s != i as u64 + 1) {
        bad("seq_not_1_to_n", format!("seqs {seqs:?}"));
    }
    if events.windows(2).any(|w| w[1].percent < w[0].percent) {
        bad("percent_went_down", format!("{:?}", events.iter().map(|e| e.percent).collect::<Vec<_>>()));
    }
    let terminals: Vec<&Event> = events.iter().filter(|e| e.is_terminal()).collect();
    match terminals.as_slice() {
        [] => {
            bad("lost", "no terminal event".into());
            None
        }
        [one] => {
            if !events.last().is_some_and(Event::is_terminal) {
                bad("event_after_terminal", "events follow the terminal one".into());
            }
            Some(one)
        }
        [first, ..] => {
            bad("two_terminal_events", format!("{} terminal events", terminals.len()));
            Some(first)
        }
    }
}

fn vmids(guests: &[&Guest]) -> Vec<u32> {
    guests.iter().map(|g| g.vmid).collect()
}

/// An enum's wire name (`task`, `cancelled`).
fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::history::Submitted;
    use super::super::observe::Row;
    use super::*;
    use pvefleet_schemas::{ErrorInfo, JobResult, NodeName, Step, Timestamp, V1, Vmid};

    fn event(job: JobId, seq: u64, kind: EventType, result: Option<JobResult>) -> Event {
        Event {
            v: V1,
            job_id: job,
            node: NodeName::new("pve1").unwrap(),
            seq,
            kind,
            step: None,
            percent: seq as u8,
            message: format!("event {seq}"),
            timestamp: Timestamp::now(),
            stream: None,
            result,
            job_seq: None,
        }
    }

    fn result(job: JobId, vmid: u32, error: Option<ErrorKind>) -> JobResult {
        JobResult {
            success: error.is_none(),
            job_id: job,
            node: NodeName::new("pve1").unwrap(),
            vmid: Some(Vmid::new(vmid).unwrap()),
            ip: None,
            error: error.map(|kind| ErrorInfo { kind, step: Step::Creating, message: "boom".into() }),
            rolled_back: false,
            host_key: None,
            moved_to: None,
        }
    }

    fn world(job: JobId, events: Vec<Event>, guests: Vec<u32>, state: &str) -> (History, Observed) {
        let mut history = History::default();
        history.jobs.insert(job, Submitted { index: 0, node: "pve1".into(), request_id: None, day_two: None });
        let mut seen = Observed::default();
        seen.events.insert(job, events);
        seen.guests =
            guests.into_iter().map(|vmid| Guest { vmid, node: "pve1".into(), tags: vec![job.marker_tag()] }).collect();
        seen.store.insert(job, Row { state: state.into(), vmid: Some(100), request_id: None });
        seen.stranger_digest_before = "d0".into();
        let stranger = Container { config: serde_json::json!({"digest": "d0"}), ..Container::default() };
        seen.containers.insert(STRANGER_VMID, stranger);
        (history, seen)
    }

    fn kinds(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn a_clean_completed_job_passes() {
        let job = JobId::new();
        let events = vec![
            event(job, 1, EventType::Accepted, None),
            event(job, 2, EventType::Complete, Some(result(job, 100, None))),
        ];
        let (history, seen) = world(job, events, vec![100], "succeeded");
        let (outcomes, violations) = check(&history, &seen);
        assert_eq!(violations, []);
        assert_eq!((outcomes.jobs, outcomes.completed), (1, 1));
    }

    #[test]
    fn each_broken_promise_is_named() {
        let job = JobId::new();
        // Two containers for one job, seq with a gap, two terminal events, the store behind.
        let events = vec![
            event(job, 1, EventType::Accepted, None),
            event(job, 3, EventType::Complete, Some(result(job, 100, None))),
            event(job, 4, EventType::Error, Some(result(job, 100, Some(ErrorKind::Proxmox)))),
        ];
        let (mut history, mut seen) = world(job, events, vec![100, 101], "running");
        seen.guests.push(Guest { vmid: 300, node: "pve1".into(), tags: vec!["pvefleet-nobody".into()] });
        history.requests.insert("r".into(), vec![job, JobId::new()]);
        let (_, violations) = check(&history, &seen);
        assert_eq!(
            kinds(&violations),
            [
                "orphan_container",
                "seq_not_1_to_n",
                "two_terminal_events",
                "duplicate_containers",
                "store_disagrees",
                "request_made_two_jobs"
            ]
        );
    }

    #[test]
    fn a_failure_must_be_one_the_harness_caused_and_leave_nothing() {
        let job = JobId::new();
        let events = vec![
            event(job, 1, EventType::Accepted, None),
            event(job, 2, EventType::Error, Some(result(job, 100, Some(ErrorKind::Timeout)))),
        ];
        let (history, seen) = world(job, events, vec![100], "failed");
        let (outcomes, violations) = check(&history, &seen);
        assert_eq!(kinds(&violations), ["left_behind", "failed_by_transient_fault"]);
        assert_eq!(outcomes.failed.get("timeout"), Some(&1));
    }

    #[test]
    fn a_day_two_job_is_held_to_what_it_asked_and_the_stranger_to_being_untouched() {
        let create = JobId::new();
        let events = vec![
            event(create, 1, EventType::Accepted, None),
            event(create, 2, EventType::Complete, Some(result(create, 100, None))),
        ];
        let (mut history, mut seen) = world(create, events, vec![100], "succeeded");
        let (update, stranger) = (JobId::new(), JobId::new());
        let asked = DayTwo { vmid: 100, then: Some(Then::Update { memory: 768, concurrent_edit: false }) };
        let aimed = DayTwo { vmid: STRANGER_VMID, then: None };
        for (id, day_two) in [(update, asked), (stranger, aimed)] {
            let submitted = Submitted { index: 0, node: "pve1".into(), request_id: None, day_two: Some(day_two) };
            history.jobs.insert(id, submitted);
            let done = vec![
                event(id, 1, EventType::Accepted, None),
                event(id, 2, EventType::Complete, Some(result(id, 100, None))),
            ];
            seen.events.insert(id, done);
            seen.store.insert(id, Row { state: "succeeded".into(), vmid: Some(100), request_id: None });
        }
        let config = serde_json::json!({"memory": 512, "nameserver": "9.9.9.9"});
        let (status, node, nodes) = ("running".to_owned(), "pve1".to_owned(), 1);
        seen.containers.insert(100, Container { config, status, node, nodes, reboots: 2, ..Default::default() });
        seen.containers.get_mut(&STRANGER_VMID).unwrap().config["digest"] = "d1".into();
        let (_, violations) = check(&history, &seen);
        let mut found = kinds(&violations);
        found.sort_unstable();
        assert_eq!(
            found,
            ["rebooted_twice", "stranger_job_not_refused", "stranger_written", "update_not_as_asked"],
            "{violations:#?}"
        );
    }

    #[test]
    fn a_rollback_or_backup_made_twice_and_a_move_gone_wrong_are_found() {
        let create = JobId::new();
        let events = vec![
            event(create, 1, EventType::Accepted, None),
            event(create, 2, EventType::Complete, Some(result(create, 100, None))),
        ];
        let (mut history, mut seen) = world(create, events, vec![100], "succeeded");
        let (rollback, backup, moved) = (JobId::new(), JobId::new(), JobId::new());
        let note = |job: JobId| pvefleet_schemas::day_two::made_by_line(job, "pvefleet-x");
        for (id, then) in [(rollback, Then::Rollback), (backup, Then::Backup), (moved, Then::Move { to: 1 })] {
            let day_two = DayTwo { vmid: 100, then: Some(then) };
            let submitted = Submitted { index: 0, node: "pve1".into(), request_id: None, day_two: Some(day_two) };
            history.jobs.insert(id, submitted);
            let done = vec![
                event(id, 1, EventType::Accepted, None),
                event(id, 2, EventType::Complete, Some(result(id, 100, None))),
            ];
            seen.events.insert(id, done);
            seen.store.insert(id, Row { state: "succeeded".into(), vmid: Some(100), request_id: None });
        }
        let container = Container {
            status: "running".into(),
            node: "pve1".into(),
            nodes: 2,
            rollbacks: 2,
            backups: vec![note(backup), note(backup)],
            ..Default::default()
        };
        seen.containers.insert(100, container);
        let (_, violations) = check(&history, &seen);
        let mut found: Vec<&str> = kinds(&violations);
        found.sort_unstable();
        found.dedup();
        for kind in ["rolled_back_twice", "rollback_not_once", "backed_up_twice", "backup_not_once", "move_split"] {
            assert!(found.contains(&kind), "{kind} in {found:?}");
        }
        assert!(found.contains(&"move_not_as_asked"), "{found:?}");
    }

    #[test]
    fn a_lost_job_and_a_lying_cancel_are_found() {
        let job = JobId::new();
        let (mut history, mut seen) = world(job, vec![event(job, 1, EventType::Accepted, None)], vec![], "running");
        seen.store.clear();
        history.cancels.push(super::super::history::CancelRun { job, code: Some(0), said: "cancelled".into() });
        let (_, violations) = check(&history, &seen);
        assert_eq!(kinds(&violations), ["lost", "cancel_said_done_but_was_not"]);
    }
}
