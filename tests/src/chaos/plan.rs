//! The generator: from a seed, the whole run as a list of timed actions — each job's
//! submission (through the wire or `pvefleet submit`, some twice) and each fault with its
//! end. Pure and repeatable: the same seed and options give the same plan.
//!
//! Adding a fault class: a variant of [`Action`] (and its end, if it has one), a weight in
//! [`FAULT_WEIGHTS`], a line in [`Plan::fault`], and its execution in `world.rs`.

use std::net::Ipv4Addr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{RngExt as _, SeedableRng as _};

use pvefleet_schemas::PowerAction;

use super::Options;

/// How one job is submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Published on the wire as the coordinator would; `twice`: published again (same id).
    Wire { twice: bool },
    /// `pvefleet submit --request-id KEY`, run `runs` times (a repeated request).
    Cli { request_id: String, runs: u8 },
}

/// A day-two job on a create job's container, submitted once the create has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Memory (applied at once) and nameservers (left pending, so one reboot); with
    /// `concurrent_edit`, another PVE user edits the container's description while it runs.
    Update {
        memory: u32,
        concurrent_edit: bool,
    },
    /// The root disk grown to this many GiB (from 8).
    Resize {
        gib: u32,
    },
    Power(PowerAction),
    /// A snapshot named after its job.
    Snapshot,
    /// A snapshot (a `Snapshot` job of its own first), then a rollback to it.
    Rollback,
    /// A backup to `local`.
    Backup,
    /// A move to the node of this index (another than the container's).
    Move {
        to: usize,
    },
}

impl Then {
    /// The kind of job it is, for the report.
    pub fn kind(self) -> &'static str {
        match self {
            Then::Update { .. } => "update",
            Then::Resize { .. } => "resize",
            Then::Power(_) => "power",
            Then::Snapshot => "snapshot",
            Then::Rollback => "rollback",
            Then::Backup => "backup",
            Then::Move { .. } => "move",
        }
    }
}

/// One job of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    pub index: usize,
    pub node: usize,
    pub via: Via,
    /// A vmid fixed by the spec; otherwise the agent allocates one.
    pub vmid: Option<u32>,
    pub ip: Ipv4Addr,
    /// The day-two job on its container, if any.
    pub then: Option<Then>,
}

/// The container pvefleet did not make (no marker): day-two jobs aimed at it must be refused
/// and it must never be written to.
pub const STRANGER_VMID: u32 = 9000;

/// A Proxmox request, as fakepve's fault rules name it (a schema path template).
pub type Request = (&'static str, &'static str);

/// Requests a 5xx may hit before fakepve acts on them.
const FAILABLE: [Request; 13] = [
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot"),
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback"),
    ("POST", "/nodes/{node}/vzdump"),
    ("POST", "/nodes/{node}/lxc/{vmid}/migrate"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/config"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/resize"),
    ("POST", "/nodes/{node}/lxc"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"),
    ("GET", "/nodes/{node}/lxc/{vmid}/config"),
    ("GET", "/nodes/{node}/lxc/{vmid}/status/current"),
    ("GET", "/nodes/{node}/tasks/{upid}/status"),
    ("GET", "/cluster/nextid"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}"),
];

/// Requests whose answer may be lost after fakepve carried them out.
const LOSABLE: [Request; 10] = [
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot"),
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback"),
    ("POST", "/nodes/{node}/vzdump"),
    ("POST", "/nodes/{node}/lxc/{vmid}/migrate"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/config"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/resize"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/reboot"),
    ("POST", "/nodes/{node}/lxc"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}"),
];

/// Everything the harness does, at its time.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Submit(usize),
    /// A day-two job (an update) aimed at the stranger's container by vmid.
    Stranger(usize),
    /// SIGKILL an agent; `StartAgent` brings it back.
    KillAgent(usize),
    /// SIGTERM an agent (it hands its jobs back); `StartAgent` brings it back.
    TermAgent(usize),
    StartAgent(usize),
    /// SIGKILL one NATS member; `StartNats` brings it back.
    KillNats(usize),
    StartNats(usize),
    /// Every NATS member down, for longer than the agents' `ack_wait`.
    Blackout,
    EndBlackout,
    /// The next `times` matching requests get a 500 before fakepve acts.
    Pve5xx {
        request: Request,
        times: u32,
    },
    /// The next matching request is carried out, then its answer lost (`drop`: the
    /// connection; else a 500).
    LoseAnswer {
        request: Request,
        drop: bool,
    },
    /// The next task of this type ends in `TASK ERROR`.
    TaskError {
        task: &'static str,
    },
    /// Requests to fakepve dropped (before acting) and hung, until `FlakyOff`.
    FlakyOn,
    FlakyOff,
    /// `pvefleet cancel` of a job already submitted.
    Cancel(usize),
    /// SIGKILL the recorder; `StartRecorder` brings it back.
    KillRecorder,
    StartRecorder,
}

impl Action {
    /// The fault class an action counts under in the report (none for submissions and ends).
    pub fn class(&self) -> Option<&'static str> {
        Some(match self {
            Action::KillAgent(_) => "agent_kill",
            Action::TermAgent(_) => "agent_term",
            Action::KillNats(_) => "nats_kill",
            Action::Blackout => "blackout",
            Action::Pve5xx { .. } => "pve_5xx",
            Action::LoseAnswer { .. } => "lost_answer",
            Action::TaskError { .. } => "task_error",
            Action::FlakyOn => "flaky_network",
            Action::Cancel(_) => "cancel",
            Action::KillRecorder => "recorder_kill",
            _ => return None,
        })
    }
}

/// Fault classes and how often each is drawn (the blackout is placed on its own).
const FAULT_WEIGHTS: [(&str, u32); 9] = [
    ("agent_kill", 20),
    ("agent_term", 8),
    ("nats_kill", 8),
    ("pve_5xx", 14),
    ("lost_answer", 14),
    ("task_error", 4),
    ("flaky_network", 6),
    ("cancel", 12),
    ("recorder_kill", 4),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    pub at: Duration,
    pub action: Action,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub jobs: Vec<JobPlan>,
    /// Sorted by time.
    pub actions: Vec<Timed>,
}

/// When each resource is free again, so faults on one thing do not overlap.
#[derive(Default)]
struct Busy {
    agents: Vec<Duration>,
    nats: Duration,
    recorder: Duration,
    flaky: Duration,
}

impl Plan {
    pub fn generate(opts: &Options) -> Self {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let window = Duration::from_secs(opts.seconds);
        let submit_until = window.mul_f64(0.6);
        let mut actions = Vec::new();
        let mut jobs = Vec::new();
        for index in 0..opts.jobs {
            let via = if rng.random_bool(0.35) {
                Via::Cli { request_id: format!("chaos-{}-{index}", opts.seed), runs: rng.random_range(1..=2) }
            } else {
                Via::Wire { twice: rng.random_bool(0.15) }
            };
            let vmid = rng.random_bool(0.1).then(|| 5000 + index as u32);
            let ip = Ipv4Addr::new(10, 77, (index / 250) as u8, (index % 250) as u8 + 1);
            let node = rng.random_range(0..opts.nodes);
            let then = rng.random_bool(0.5).then(|| match rng.random_range(0..14) {
                0..=2 => Then::Update { memory: 256 * rng.random_range(3..=5), concurrent_edit: rng.random_bool(0.3) },
                3..=4 => Then::Resize { gib: rng.random_range(9..=12) },
                5 => Then::Power(PowerAction::Stop),
                6 => Then::Power(PowerAction::Shutdown),
                7 => Then::Power(PowerAction::Reboot),
                8 => Then::Snapshot,
                9..=10 => Then::Rollback,
                11 => Then::Backup,
                _ if opts.nodes > 1 => Then::Move { to: (node + rng.random_range(1..opts.nodes)) % opts.nodes },
                _ => Then::Backup,
            });
            jobs.push(JobPlan { index, node, via, vmid, ip, then });
            let at = submit_until.mul_f64(index as f64 / opts.jobs.max(1) as f64);
            actions.push(Timed { at, action: Action::Submit(index) });
        }

        for k in 0..3 {
            let at = submit_until.mul_f64(rng.random_range(0.1..1.0));
            actions.push(Timed { at, action: Action::Stranger(k) });
        }
        let mut busy = Busy { agents: vec![Duration::ZERO; opts.nodes], ..Default::default() };
        if opts.seconds >= 30 {
            // One whole-cluster blackout, longer than the agents' ack_wait, mid-run.
            let at = window.mul_f64(rng.random_range(0.3..0.6));
            let lasts = opts.ack_wait + Duration::from_secs(rng.random_range(2..6));
            actions.push(Timed { at, action: Action::Blackout });
            actions.push(Timed { at: at + lasts, action: Action::EndBlackout });
            busy.nats = at + lasts + Duration::from_secs(2);
        }
        let mut at = Duration::ZERO;
        loop {
            at += Duration::from_secs_f64(rng.random_range(0.5..4.5) * opts.fault_spacing);
            if at >= window {
                break;
            }
            let class = choose_weighted(&mut rng);
            let submitted = actions
                .iter()
                .filter_map(|t| match t.action {
                    Action::Submit(i) if t.at < at => Some(i),
                    _ => None,
                })
                .collect::<Vec<_>>();
            actions.extend(Self::fault(&mut rng, class, at, opts, &mut busy, &submitted));
        }
        actions.sort_by_key(|t| t.at);
        Self { jobs, actions }
    }

    /// The actions of one fault of `class` at `at`: none when what it would hit is busy.
    fn fault(
        rng: &mut StdRng,
        class: &str,
        at: Duration,
        opts: &Options,
        busy: &mut Busy,
        submitted: &[usize],
    ) -> Vec<Timed> {
        let secs = |rng: &mut StdRng, lo: f64, hi: f64| Duration::from_secs_f64(rng.random_range(lo..hi));
        let pair = |start: Action, end: Action, lasts: Duration| {
            vec![Timed { at, action: start }, Timed { at: at + lasts, action: end }]
        };
        match class {
            "agent_kill" | "agent_term" => {
                let node = rng.random_range(0..opts.nodes);
                if busy.agents[node] > at {
                    return vec![];
                }
                let lasts = secs(rng, 0.3, 3.0);
                // A SIGTERMed agent takes up to its grace period to hand back and exit.
                busy.agents[node] = at + lasts + opts.shutdown_grace;
                let stop = if class == "agent_kill" { Action::KillAgent(node) } else { Action::TermAgent(node) };
                pair(stop, Action::StartAgent(node), lasts)
            }
            "nats_kill" => {
                if busy.nats > at {
                    return vec![];
                }
                let lasts = secs(rng, 1.0, 6.0);
                busy.nats = at + lasts + Duration::from_secs(3);
                let member = rng.random_range(0..3);
                pair(Action::KillNats(member), Action::StartNats(member), lasts)
            }
            "pve_5xx" => {
                let request = *FAILABLE.choose(rng).expect("not empty");
                vec![Timed { at, action: Action::Pve5xx { request, times: rng.random_range(1..=3) } }]
            }
            "lost_answer" => {
                let request = *LOSABLE.choose(rng).expect("not empty");
                vec![Timed { at, action: Action::LoseAnswer { request, drop: rng.random_bool(0.5) } }]
            }
            "task_error" => {
                let tasks = ["vzcreate", "vzstart", "vzsnapshot", "vzrollback", "vzdump", "vzmigrate"];
                let task = *tasks.choose(rng).expect("not empty");
                vec![Timed { at, action: Action::TaskError { task } }]
            }
            "flaky_network" => {
                if busy.flaky > at {
                    return vec![];
                }
                let lasts = secs(rng, 2.0, 6.0);
                busy.flaky = at + lasts;
                pair(Action::FlakyOn, Action::FlakyOff, lasts)
            }
            "cancel" => match submitted.choose(rng) {
                Some(&job) => vec![Timed { at, action: Action::Cancel(job) }],
                None => vec![],
            },
            "recorder_kill" => {
                if busy.recorder > at {
                    return vec![];
                }
                let lasts = secs(rng, 0.5, 4.0);
                busy.recorder = at + lasts;
                pair(Action::KillRecorder, Action::StartRecorder, lasts)
            }
            other => unreachable!("fault class {other} has no generator"),
        }
    }
}

fn choose_weighted(rng: &mut StdRng) -> &'static str {
    let total: u32 = FAULT_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (class, weight) in FAULT_WEIGHTS {
        if pick < weight {
            return class;
        }
        pick -= weight;
    }
    unreachable!("the pick is below the total")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_plan_and_every_fault_has_its_end() {
        let opts = Options { seed: 7, jobs: 60, seconds: 120, ..Options::default() };
        let plan = Plan::generate(&opts);
        assert_eq!(plan, Plan::generate(&opts));
        assert_ne!(plan, Plan::generate(&Options { seed: 8, ..opts.clone() }));
        assert_eq!(plan.jobs.len(), 60);
        let count = |f: &dyn Fn(&Action) -> bool| plan.actions.iter().filter(|t| f(&t.action)).count();
        assert_eq!(count(&|a| matches!(a, Action::Submit(_))), 60);
        assert_eq!(
            count(&|a| matches!(a, Action::KillAgent(_) | Action::TermAgent(_))),
            count(&|a| matches!(a, Action::StartAgent(_)))
        );
        assert_eq!(count(&|a| matches!(a, Action::KillNats(_))), count(&|a| matches!(a, Action::StartNats(_))));
        assert_eq!(count(&|a| matches!(a, Action::Blackout)), 1);
        assert!(plan.actions.windows(2).all(|w| w[0].at <= w[1].at));
        // Every class turns up in a few runs this long.
        let classes: std::collections::BTreeSet<_> = (7..10)
            .flat_map(|seed| Plan::generate(&Options { seed, ..opts.clone() }).actions)
            .filter_map(|t| t.action.class())
            .collect();
        assert_eq!(classes.len(), FAULT_WEIGHTS.len() + 1, "{classes:?}");
    }
}
