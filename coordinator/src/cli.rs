//! The command line: global flags and one subcommand per verb, each with an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Create Proxmox VE containers through a fleet of per-node agents driven by NATS JetStream.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// NATS server URL(s), comma separated; credentials may be in the URL.
    #[arg(long, env = "PVEFLEET_NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    pub nats_url: String,
    /// NATS credentials file.
    #[arg(long, env = "PVEFLEET_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// The prefix of this user's reply inboxes (`_INBOX_watcher` for the watcher user of
    /// deploy/nats/auth.conf), so no other user can read the replies meant for it.
    #[arg(long, env = "PVEFLEET_NATS_INBOX_PREFIX", global = true)]
    pub nats_inbox_prefix: Option<String>,
    /// The CA (PEM) that signed the NATS servers' certificates; TLS is then required.
    #[arg(long, env = "PVEFLEET_NATS_CA", global = true)]
    pub nats_ca: Option<PathBuf>,
    /// A client certificate (PEM) for NATS servers that ask for one (with --nats-key).
    #[arg(long, env = "PVEFLEET_NATS_CERT", global = true, requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "PVEFLEET_NATS_KEY", global = true, requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,
    /// The store: a SQLite file path, a sqlite: URL or a postgres:// URL [default: pvefleet.db in
    /// the user's data directory].
    #[arg(long, env = "PVEFLEET_DB", global = true)]
    pub db: Option<String>,
    /// The admin public keys (`ed25519:…`, comma separated) whose signatures make an agent's
    /// enrollment count here: without one, no agent is believed and nothing is sealed.
    #[arg(long, env = "PVEFLEET_ADMIN_KEYS", global = true)]
    pub admin_keys: Option<String>,
    /// Your signing identity, an ed25519 key file that `pvefleet identity new` makes [default:
    /// `identity` in the user's config directory, e.g. ~/.config/pvefleet/identity].
    #[arg(long, env = "PVEFLEET_IDENTITY", global = true)]
    pub identity: Option<PathBuf>,
    /// For a service that signs for a person (the web view): the user named in the signed
    /// request, and so in the audit trail, beside the service's own key.
    #[arg(long, global = true, hide = true)]
    pub acting_user: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum IdentityVerb {
    /// Make a new signing identity (mode 0600) and print its public key and key id.
    #[command(after_help = "Example:\n  pvefleet identity new\n  pvefleet --identity ci.key identity new")]
    New {
        /// Replace an identity already there (its old key then signs nothing more).
        #[arg(long)]
        force: bool,
    },
    /// Print the identity's public key and key id (what an admin's policy names).
    Show,
}

#[derive(Subcommand, Debug)]
pub enum PolicyVerb {
    /// Print the policy agents follow, and the key that signed it.
    #[command(after_help = "Example:\n  pvefleet policy show")]
    Show {
        /// The policy as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign FILE (TOML: one [[signer]] per operator, with its rights) with your identity, the
    /// admin key, and give it to every agent through the trust bucket. Its serial is counted
    /// up from the one there; agents never go back to a lower one.
    #[command(
        after_help = "Example (policy.toml):\n  [[signer]]\n  name = \"alice\"\n  key = \"ed25519:…\"   # pvefleet identity show\n  nodes = [\"pve1\", \"pve2\"]\n  scripts = true\n\n  pvefleet --identity admin.key policy set policy.toml"
    )]
    Set { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum UsersVerb {
    /// Add a web view user with a role (viewer: sees; operator: acts; admin: manages users).
    /// The password is asked for twice, or read from one line of stdin.
    #[command(after_help = "Examples:\n  pvefleet users add alice --role operator\n  \
                            printf '%s\\n' \"$PW\" | pvefleet users add kiosk --role viewer --password-stdin")]
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password (and lift a lock); their sessions end.
    #[command(after_help = "Example:\n  pvefleet users passwd alice")]
    Passwd {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: no login, and every session of theirs ends at once.
    #[command(after_help = "Example:\n  pvefleet users disable alice")]
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// List the users, their roles and whether they are disabled or locked.
    List {
        /// The users as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodesVerb {
    /// Admin: certify a node's agent (its identity key, which signs its heartbeats, and its
    /// sealing key, which secrets are sealed to), once checked on the node itself:
    /// `pvefleet-agent --config … --print-key` there prints the fingerprint to give. The
    /// enrollment is signed with your (admin) identity into the trust bucket, where every
    /// operator's CLI and the web view read it. Without --fingerprint it shows what the live
    /// agent shows.
    #[command(after_help = "Example (on pve1: pvefleet-agent --config /etc/pvefleet/agent.toml --print-key):\n  \
                            pvefleet --identity admin.key nodes enroll pve1 --fingerprint SHA256:3q2+7w…")]
    Enroll {
        node: String,
        /// The fingerprint `pvefleet-agent --print-key` printed on the node; the keys its live
        /// agent shows must have it.
        #[arg(long, conflicts_with = "identity_key")]
        fingerprint: Option<String>,
        /// The identity key `--print-key` printed, enrolled as it is, even before the agent
        /// first runs (with --sealing-key).
        #[arg(long, requires = "sealing_key")]
        identity_key: Option<String>,
        /// The sealing key `--print-key` printed.
        #[arg(long, requires = "identity_key")]
        sealing_key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Create or update the streams and KV buckets (safe to run again).
    #[command(after_help = "Example:\n  pvefleet setup --replicas 3")]
    Setup {
        /// Replicas for streams and buckets (3 on a production cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// A node whose events stream to make (repeatable); the nodes of live agents and of the
        /// store's jobs are made anyway. Agents that may not make their own need it before they
        /// start (as the shipped per-agent permissions are).
        #[arg(long = "node", value_name = "NODE")]
        nodes: Vec<String>,
        /// The size bound of each node's events stream, in MiB (1024 by default): a node's
        /// oldest events go first when its stream reaches it, another node's never.
        #[arg(long, value_name = "MIB")]
        events_max_mib: Option<u32>,
    },
    /// Validate a container spec and queue it for a node's agent; prints the job id.
    #[command(
        after_help = "Examples:\n  pvefleet submit --node pve1 --hostname web-01 --ostemplate local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst --ip 10.0.0.21/24 --gw 10.0.0.1 --watch\n  pvefleet submit --template web --hostname web-02 --node auto --password-file ~/.pvefleet-root\n  pvefleet submit --spec web.toml --request-id deploy-42"
    )]
    Submit(Box<SubmitArgs>),
    /// Check a spec on its node without creating anything: submit's arguments (and --count);
    /// each chosen node's agent checks storage, template, bridges, the vmid, free memory and
    /// its credential's rights against its Proxmox API and shows the exact PVE parameters.
    /// Exit 0 if every check passes, 1 if one fails, 2 for bad input.
    #[command(
        after_help = "Examples:\n  pvefleet plan --node pve1 --hostname web-01 --ostemplate local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst --ip 10.0.0.21/24 --gw 10.0.0.1\n  pvefleet plan --spec web.toml --node auto --count 5 --json"
    )]
    Plan(Box<SubmitArgs>),
    /// Destroy a container pvefleet made, through its node's agent: by the create job that made
    /// it, or by node and vmid. A container without a pvefleet marker, or a protected one, is
    /// refused and left as it is; one already gone is success.
    #[command(
        after_help = "Examples:\n  pvefleet destroy 01JDQ8Z3M4X6T2E9R5W7Y1K0AB --watch\n  pvefleet destroy --node pve1 --vmid 201 --request-id rm-201"
    )]
    Destroy(DestroyArgs),
    /// The containers pvefleet made, where each really is (from the agents' inventory): its
    /// node, vmid, state, address, the job that made it and the last that changed it, and
    /// whether it was changed outside pvefleet since (drift).
    #[command(after_help = "Examples:\n  pvefleet ls\n  pvefleet ls --select tag=web,hostname=web-* --json")]
    Ls {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Only those matching: `tag=T,node=N,hostname=GLOB`.
        #[arg(long)]
        select: Option<String>,
        /// Also those gone (deleted, outside pvefleet or not), as the store keeps them.
        #[arg(long)]
        all: bool,
        /// The first this many, by node and vmid (0: every one).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The containers as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Change a container's settings (only what is given); PVE applies most at once, and what
    /// it leaves pending waits for a restart per --restart.
    #[command(
        after_help = "Examples:\n  pvefleet update web-01 --memory 2048 --cores 4 --watch\n  pvefleet update --select tag=web --memory 1024 --max-parallel 4 --canary 1 --request-id mem-1"
    )]
    Update(Box<UpdateArgs>),
    /// Grow a container's disk to an absolute size (`rootfs=20G`, `mp0=100G`); never shrinks.
    #[command(after_help = "Example:\n  pvefleet resize web-01 rootfs=20G --watch")]
    Resize(ResizeArgs),
    /// Start a container (already running is success).
    #[command(after_help = "Example:\n  pvefleet start web-01 --watch")]
    Start(PowerArgs),
    /// Shut a container down cleanly within --timeout; then stop it hard only with --force.
    #[command(after_help = "Example:\n  pvefleet shutdown web-01 --timeout 2m --force")]
    Shutdown(PowerArgs),
    /// Stop a container hard (already stopped is success).
    #[command(after_help = "Example:\n  pvefleet stop --node pve1 --vmid 101")]
    Stop(PowerArgs),
    /// Reboot a running container (once, whatever happens to the request's answer).
    #[command(after_help = "Example:\n  pvefleet reboot --select tag=web --max-parallel 2")]
    Reboot(PowerArgs),
    /// Take a snapshot of a container (named after the job unless --name), or `snapshot
    /// delete TARGET NAME`; taken once whatever happens to the request's answer.
    #[command(
        after_help = "Examples:\n  pvefleet snapshot web-01 --name before-upgrade --watch\n  pvefleet snapshot delete web-01 before-upgrade"
    )]
    Snapshot(SnapshotArgs),
    /// A container's snapshots, oldest first (asked of its agent).
    #[command(after_help = "Example:\n  pvefleet snapshots web-01")]
    Snapshots(ListArgs),
    /// Roll a container back to a snapshot: what it wrote since is lost; sent once.
    #[command(after_help = "Example:\n  pvefleet rollback web-01 before-upgrade --start --watch")]
    Rollback(RollbackArgs),
    /// Back a container up (vzdump) to a storage; taken once, found again by its notes.
    #[command(after_help = "Example:\n  pvefleet backup web-01 --storage local --mode snapshot --keep-last 3 --watch")]
    Backup(BackupArgs),
    /// A container's backups on its node's backup storages, oldest first.
    #[command(after_help = "Example:\n  pvefleet backups web-01 --storage local")]
    Backups(ListArgs),
    /// Restore a backup as a new container, or --over the container it was taken of.
    #[command(
        after_help = "Examples:\n  pvefleet restore local:backup/vzdump-lxc-101-2026_12_04-10_00_00.tar.zst --hostname web-copy --watch\n  pvefleet restore local:backup/vzdump-lxc-101-2026_12_04-10_00_00.tar.zst --over web-01"
    )]
    Restore(RestoreArgs),
    /// Move (migrate) a container to another node; the node it goes to is asked first
    /// whether it has room, and the container's later jobs go there.
    #[command(name = "move", after_help = "Example:\n  pvefleet move web-01 --to pve2 --watch")]
    Move(MoveArgs),
    /// Try a failed (or cancelled) job again as a new job, linked to it: the same request, its
    /// container found again by the inventory for a day-two job. Anything secret is asked for
    /// again (the store keeps none of it). The same --request-id replays a failure by design;
    /// this is how to try again.
    #[command(
        after_help = "Examples:\n  pvefleet retry 01JDQ8Z3M4X6T2E9R5W7Y1K0AB --password-file ~/.pvefleet-root --watch\n  pvefleet retry 01JDQ8Z3M4X6T2E9R5W7Y1K0AB --secret-file /etc/app/token=./token"
    )]
    Retry(RetryArgs),
    /// Replay a job's events from the first, then follow it to its end (exit 0 on complete,
    /// 1 on error, 2 for an unknown job).
    #[command(after_help = "Example:\n  pvefleet watch 01JDQ8Z3M4X6T2E9R5W7Y1K0AB --json")]
    Watch {
        job: String,
        /// One event per line as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recorded jobs.
    #[command(after_help = "Example:\n  pvefleet jobs --node pve1 --state failed")]
    Jobs {
        /// Only this node's jobs.
        #[arg(long)]
        node: Option<String>,
        /// queued, running, succeeded, failed, cancelled or destroyed (a create job whose
        /// container a destroy job removed).
        #[arg(long)]
        state: Option<String>,
        /// The newest this many jobs (0: every one), oldest of them first.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// The jobs as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: spec, state, result and timings.
    #[command(after_help = "Example:\n  pvefleet job 01JDQ8Z3M4X6T2E9R5W7Y1K0AB")]
    Job {
        job: String,
        /// The job, its spec and its event count as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued one leaves the queue; a running one is stopped by its agent and
    /// rolled back per its policy.
    #[command(after_help = "Example:\n  pvefleet cancel 01JDQ8Z3M4X6T2E9R5W7Y1K0AB")]
    Cancel { job: String },
    /// Live agents from the registry, with their capacity.
    #[command(after_help = "Examples:\n  pvefleet nodes --json\n  pvefleet nodes trust pve1")]
    Nodes {
        #[command(subcommand)]
        action: Option<NodesVerb>,
        /// The nodes as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Manage templates: container defaults plus packages, files and scripts.
    #[command(subcommand)]
    Template(TemplateVerb),
    /// Your signing identity: make one, or show its public key and key id.
    #[command(subcommand)]
    Identity(IdentityVerb),
    /// Sign a job or request (JSON on standard input) with your identity and print it signed,
    /// for scripts and CI; the format is in schemas/SIGNING.md.
    #[command(after_help = "Example:\n  pvefleet sign --valid 30 < job.json > signed.json")]
    Sign {
        /// How many minutes the signed request stays valid (1 to 1440).
        #[arg(long, default_value_t = 60)]
        valid: u32,
    },
    /// Your identity and what the policy lets it do.
    #[command(after_help = "Example:\n  pvefleet whoami")]
    Whoami,
    /// The admin-signed policy: who may ask agents for what (admin key needed to set it).
    #[command(subcommand)]
    Policy(PolicyVerb),
    /// The audit trail: every decision an agent made on a request, every admin action,
    /// oldest first.
    #[command(
        after_help = "Examples:\n  pvefleet audit --node pve1 --since 2h\n  pvefleet audit --signer alice --json"
    )]
    Audit {
        /// Only this signer's (a key id, its beginning, or its name in the policy).
        #[arg(long)]
        signer: Option<String>,
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Only since then: RFC 3339, or a time back from now (`30m`, `2h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// One record per line as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The fleet and every job's live progress in a browser, and /metrics (read-only).
    /// Loopback by default; any other address needs --token-file.
    #[command(
        after_help = "Examples:\n  pvefleet serve\n  pvefleet serve --listen 0.0.0.0:8080 --token-file /etc/pvefleet/web-token"
    )]
    Serve(ServeArgs),
    /// The web view's users (stored in the store, passwords hashed with argon2id).
    #[command(subcommand)]
    Users(UsersVerb),
    /// Record every job's events into the store (long-running; safe to restart).
    #[command(after_help = "Example:\n  pvefleet --db postgres://pvefleet@db/pvefleet record")]
    Record,
}

#[derive(Subcommand, Debug)]
pub enum TemplateVerb {
    /// Add (or replace) a template from a TOML file; files named by `source` are read now.
    #[command(after_help = "Example:\n  pvefleet template add web.toml")]
    Add { file: PathBuf },
    /// List templates.
    #[command(after_help = "Example:\n  pvefleet template list")]
    List {
        /// The templates as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show a template.
    #[command(after_help = "Example:\n  pvefleet template show web")]
    Show { name: String },
    /// Remove a template.
    #[command(after_help = "Example:\n  pvefleet template rm web")]
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where to listen; an address other than loopback needs TLS (or --insecure-http) and a
    /// login: users in the store, or --token-file.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A file holding the bearer token (at least 16 characters) every request must show: a
    /// read-only kiosk, with no logins and no actions.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The server's certificate chain (PEM): serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (behind a TLS-terminating proxy):
    /// without it, serve refuses, since cookies and passwords would cross the network in clear.
    #[arg(long)]
    pub insecure_http: bool,
    /// How long a login lasts, in hours.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(i64).range(1..=720))]
    pub session_hours: i64,
}

#[derive(Args, Debug, Default)]
pub struct DestroyArgs {
    /// The create job whose container to destroy.
    pub job: Option<String>,
    /// The container's node (with --vmid, instead of a job).
    #[arg(long, requires = "vmid", conflicts_with = "job")]
    pub node: Option<String>,
    /// The container's vmid (with --node).
    #[arg(long, requires = "node")]
    pub vmid: Option<u32>,
    /// With --node/--vmid, destroy a container no job in this store made, on its pvefleet
    /// marker tag alone (any PVE user who may tag guests can forge one).
    #[arg(long, requires = "vmid")]
    pub force_marker: bool,
    /// How long a clean shutdown may take before the container is stopped hard.
    #[arg(long, default_value = "60s")]
    pub shutdown_timeout: String,
    /// Makes re-running the same destroy safe: the same key gives the same job.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Follow the job after submitting it.
    #[arg(long)]
    pub watch: bool,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a day-two verb names its container(s), and how it runs.
#[derive(Args, Debug, Default, Clone)]
pub struct TargetArgs {
    /// The container: its create job's id, or its hostname (unique among pvefleet's).
    pub target: Option<String>,
    /// The container's node (with --vmid, instead of TARGET).
    #[arg(long, requires = "vmid", conflicts_with = "select")]
    pub node: Option<String>,
    /// The container's vmid (with --node).
    #[arg(long, requires = "node")]
    pub vmid: Option<u32>,
    /// Many containers from the inventory instead of one: `tag=T,node=N,hostname=GLOB`.
    #[arg(long)]
    pub select: Option<String>,
    /// With --select: list the containers it matches and stop.
    #[arg(long, requires = "select")]
    pub dry_run: bool,
    /// Show what the job would find and send (the diff, the restart, the exact PVE calls),
    /// asked of the container's agent, changing nothing; exit 1 if a check fails. With
    /// --select, for each container.
    #[arg(long, conflicts_with_all = ["watch", "request_id"])]
    pub plan: bool,
    /// With --select: this many jobs at a time.
    #[arg(long, default_value_t = 1, requires = "select")]
    pub max_parallel: usize,
    /// With --select: the first K must succeed before the rest start.
    #[arg(long, default_value_t = 0, requires = "select")]
    pub canary: usize,
    /// With --select: go on past a failure (by default no new job starts after one fails).
    #[arg(long, requires = "select")]
    pub keep_going: bool,
    /// Act on a container no job in this store made, on its pvefleet marker tag alone (any
    /// PVE user who may tag guests can forge one).
    #[arg(long)]
    pub force_marker: bool,
    #[command(flatten)]
    pub publish: PublishArgs,
}

/// How a day-two job is published and followed.
#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Makes re-running the same command safe: the same key gives the same job (with
    /// --select, each container its own, so a rerun redoes only what did not finish).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Follow the job after submitting it.
    #[arg(long)]
    pub watch: bool,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long each Proxmox task may take.
    #[arg(long, default_value = "10m")]
    pub task_timeout: String,
}

impl Default for PublishArgs {
    fn default() -> Self {
        Self { request_id: None, watch: false, json: false, task_timeout: "10m".into() }
    }
}

#[derive(Args, Debug, Default)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Memory in MB.
    #[arg(long)]
    pub memory: Option<u32>,
    /// Swap in MB.
    #[arg(long)]
    pub swap: Option<u32>,
    /// CPU cores.
    #[arg(long)]
    pub cores: Option<u32>,
    /// CPU limit in cores (0: none).
    #[arg(long)]
    pub cpulimit: Option<f64>,
    /// CPU weight, 1..=262144.
    #[arg(long)]
    pub cpuunits: Option<u32>,
    /// A NIC to set, `net0=name=eth0,bridge=vmbr0,ip=dhcp`, or to remove, `net1=none` (repeatable).
    #[arg(long = "net", value_name = "netN=SPEC")]
    pub nets: Vec<String>,
    /// DNS servers, comma separated (`none`: the node's).
    #[arg(long)]
    pub nameservers: Option<String>,
    /// The container's tags, comma separated, replacing its others (its pvefleet marker stays).
    #[arg(long)]
    pub tags: Option<String>,
    /// PVE's notes for it (replacing them).
    #[arg(long)]
    pub description: Option<String>,
    /// Start at the node's boot: true or false.
    #[arg(long)]
    pub onboot: Option<bool>,
    /// Protection from removal: true or false.
    #[arg(long)]
    pub protection: Option<bool>,
    /// Boot order, `order=1,up=30,down=60`.
    #[arg(long)]
    pub startup: Option<String>,
    /// Features in full, `nesting=1,keyctl=1` (what the policy lets you set).
    #[arg(long)]
    pub features: Option<String>,
    /// A mount point to add, `mp0=local-lvm:8,mp=/srv` (repeatable).
    #[arg(long = "mount", value_name = "mpN=SPEC")]
    pub mounts: Vec<String>,
    /// When to restart it: never, if-needed (only when PVE left changes pending), always.
    #[arg(long, default_value = "if-needed")]
    pub restart: String,
    /// How long the clean shutdown inside a reboot may take.
    #[arg(long, default_value = "60s")]
    pub shutdown_timeout: String,
    /// Take a snapshot first (`pf-<job>`), to roll back to if the change fails.
    #[arg(long)]
    pub snapshot_before: bool,
    /// With --snapshot-before, what a failure does: rollback (to the snapshot) or keep (as
    /// the failure left it).
    #[arg(long, requires = "snapshot_before", value_name = "rollback|keep")]
    pub on_failure: Option<String>,
    /// With --snapshot-before, keep the snapshot after a success (deleted by default).
    #[arg(long, requires = "snapshot_before")]
    pub keep_snapshot: bool,
}

/// `pvefleet snapshot TARGET [--name N]`, or `pvefleet snapshot delete TARGET NAME`.
#[derive(Args, Debug, Default)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub delete: Option<SnapshotDelete>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The snapshot's name (`pf-<job>` if none): a letter, then letters, digits, `-`, `_`.
    #[arg(long)]
    pub name: Option<String>,
    /// A note kept in its description.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotDelete {
    /// Delete one snapshot (already gone is success).
    #[command(after_help = "Example:\n  pvefleet snapshot delete web-01 pf-0j3k2m4n5p6q7r8s")]
    Delete {
        #[command(flatten)]
        target: TargetArgs,
        /// The snapshot to delete.
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
}

#[derive(Args, Debug, Default)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The snapshot to roll back to.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Start the container once it is rolled back.
    #[arg(long)]
    pub start: bool,
}

#[derive(Args, Debug, Default)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// A storage of its node that takes backups.
    #[arg(long)]
    pub storage: String,
    /// snapshot (while it runs), suspend, or stop (shut down for the backup, started again).
    #[arg(long, default_value = "snapshot")]
    pub mode: String,
    /// Keep it whatever a retention policy says.
    #[arg(long)]
    pub protected: bool,
    /// Then keep only the newest N unprotected backups of it on the storage.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
}

#[derive(Args, Debug, Default)]
pub struct MoveArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The node it goes to.
    #[arg(long)]
    pub to: String,
    /// Where its volumes go on that node (the same storage otherwise).
    #[arg(long)]
    pub target_storage: Option<String>,
    /// How long its clean shutdown may take (a running container moves in restart mode).
    #[arg(long, default_value = "60s")]
    pub timeout: String,
}

/// `pvefleet snapshots TARGET`, `pvefleet backups TARGET`.
#[derive(Args, Debug, Default)]
pub struct ListArgs {
    /// The container: its create job's id, or its hostname.
    pub target: Option<String>,
    /// The container's node (with --vmid, instead of TARGET).
    #[arg(long, requires = "vmid")]
    pub node: Option<String>,
    /// The container's vmid (with --node).
    #[arg(long, requires = "node")]
    pub vmid: Option<u32>,
    /// Backups on this storage only.
    #[arg(long)]
    pub storage: Option<String>,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Default)]
pub struct RestoreArgs {
    /// The backup's volume id, as `pvefleet backups` lists it.
    pub backup: String,
    /// Over the container it was taken of (stopped first; what it wrote since is lost).
    #[arg(long, conflicts_with_all = ["to_vmid", "hostname"])]
    pub over: Option<String>,
    /// A new container with this vmid (one is allocated otherwise).
    #[arg(long)]
    pub to_vmid: Option<u32>,
    /// A new container's hostname (the backup's otherwise).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The node to restore on (the one the backed-up container is on, otherwise).
    #[arg(long)]
    pub node: Option<String>,
    /// Where its volumes go (the backup's storages otherwise).
    #[arg(long)]
    pub storage: Option<String>,
    /// Start it once restored.
    #[arg(long)]
    pub start: bool,
    /// Act on a container no job in this store made (--over), on its marker alone.
    #[arg(long)]
    pub force_marker: bool,
    #[command(flatten)]
    pub publish: PublishArgs,
}

/// Where the root password comes from (never the command line).
#[derive(Args, Debug, Default, Clone)]
pub struct PasswordArgs {
    /// Read the root password from this file (first line).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Read the root password from this environment variable.
    #[arg(long)]
    pub password_env: Option<String>,
    /// Ask for the root password on the terminal.
    #[arg(long)]
    pub ask_password: bool,
}

#[derive(Args, Debug, Default)]
pub struct RetryArgs {
    /// The failed job.
    pub job: String,
    /// A create job's root password, asked for again.
    #[command(flatten)]
    pub root_password: PasswordArgs,
    /// A secret file of the job (its path in the container) and where to read it now:
    /// `/etc/app/token=./token` (repeatable; its bytes must be those the job was made with).
    #[arg(long = "secret-file", value_name = "PATH=LOCAL")]
    pub secret_files: Vec<String>,
    /// Makes re-running the same retry safe: the same key gives the same new job.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Follow the new job.
    #[arg(long)]
    pub watch: bool,
    /// Print the new job as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Default)]
pub struct ResizeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The disk and its new size: `rootfs=20G`, `mp0=100G` (absolute; growing only).
    #[arg(value_name = "DISK=SIZE")]
    pub size: Option<String>,
}

#[derive(Args, Debug, Default)]
pub struct PowerArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How long a clean shutdown (of a shutdown or a reboot) may take.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// A shutdown that does not end in time is followed by a hard stop.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Default)]
pub struct SubmitArgs {
    /// Node to run on, or `auto` for the live agent with the most free memory that fits.
    #[arg(long)]
    pub node: Option<String>,
    /// A TOML spec file ([container], [deploy], [options]).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Where the spec's `deploy.files[].source` files live (by default the spec file's own
    /// directory); a source outside it, or a dot-file, is refused.
    #[arg(long, requires = "spec")]
    pub files_dir: Option<PathBuf>,
    /// Start from this template; the spec file and flags override it.
    #[arg(long)]
    pub template: Option<String>,
    /// Makes re-running the same submit safe: the same key gives the same job.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Follow the job after submitting it (with --count, all of them at once).
    #[arg(long)]
    pub watch: bool,
    /// Print the job (without its password) as JSON (with --count, one job per line).
    #[arg(long)]
    pub json: bool,
    /// Make N jobs from this one spec: `{n}` (1-based; `{n:02}` pads it) in --hostname, and in
    /// --ip (or a NIC's ip) as a host number (`10.0.0.{n+20}/24`). All N are validated before
    /// any is published; with --request-id K each job's request is K-<n>.
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,

    /// The container's hostname (a DNS name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// A fixed vmid (100..=999999999); left out, the agent allocates the next free one.
    #[arg(long)]
    pub vmid: Option<u32>,
    /// Memory in MB.
    #[arg(long)]
    pub memory: Option<u32>,
    /// Swap in MB.
    #[arg(long)]
    pub swap: Option<u32>,
    /// CPU cores (1..=8192).
    #[arg(long)]
    pub cores: Option<u32>,
    /// Root disk in GB.
    #[arg(long)]
    pub disk: Option<u32>,
    /// The storage for the root disk (default local-lvm).
    #[arg(long)]
    pub storage: Option<String>,
    /// The root disk in PVE's own form (instead of --storage/--disk):
    /// `local-lvm:8,acl=1,quota=1,replicate=0,mountoptions=noatime;nodev`.
    #[arg(long, value_name = "STORAGE:GB,…")]
    pub rootfs: Option<String>,
    /// The bridge of eth0 (default vmbr0); --net gives every NIC instead.
    #[arg(long)]
    pub bridge: Option<String>,
    /// `dhcp` or `a.b.c.d/nn`.
    #[arg(long)]
    pub ip: Option<String>,
    /// The IPv4 gateway of eth0, inside the subnet of --ip.
    #[arg(long)]
    pub gw: Option<String>,
    /// DNS servers, IPv4 or IPv6, space separated (default: the node's).
    #[arg(long)]
    pub nameserver: Option<String>,
    /// The template volume, like local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst
    /// (or one of --download, --appliance, --oci, --clone).
    #[arg(long)]
    pub ostemplate: Option<String>,
    /// Make a privileged container (default: unprivileged).
    #[arg(long)]
    pub privileged: bool,
    /// Turn on the nesting feature (systemd in recent distributions wants it).
    #[arg(long)]
    pub nesting: bool,
    /// A PVE tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// An SSH public key line to authorize for root (repeatable).
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<String>,
    /// A network interface in PVE's own form, repeatable (net0, net1, …; replaces --bridge/--ip/--gw):
    /// `name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,ip6=auto,tag=20,mtu=1500,firewall=1`.
    #[arg(long = "net", value_name = "KEY=VALUE,…")]
    pub nets: Vec<String>,
    /// A mount point in PVE's own form, repeatable (mp0, mp1, …): a new volume
    /// `local-lvm:4,mp=/srv/data,backup=1`, an existing one `local-lvm:vm-100-disk-1,mp=/srv`,
    /// or a host directory `/srv/media,mp=/media,ro=1`.
    #[arg(long = "mp", value_name = "VOLUME,mp=PATH,…")]
    pub mps: Vec<String>,
    /// Notes shown in PVE (the agent adds which job made the container).
    #[arg(long)]
    pub description: Option<String>,
    /// A resource pool to put the container in (it must exist).
    #[arg(long)]
    pub pool: Option<String>,
    /// Protect the container from removal (a rollback still removes its own).
    #[arg(long)]
    pub protection: bool,
    /// Start the container when its node boots.
    #[arg(long)]
    pub onboot: bool,
    /// Boot order in PVE's form: `order=1,up=30,down=60`.
    #[arg(long)]
    pub startup: Option<String>,
    /// Time zone (`Europe/Berlin`, or `host`).
    #[arg(long)]
    pub timezone: Option<String>,
    /// CPU limit in cores (fractions allowed).
    #[arg(long)]
    pub cpulimit: Option<f64>,
    /// CPU weight (1..=262144).
    #[arg(long)]
    pub cpuunits: Option<u32>,
    /// DNS search domains, space separated.
    #[arg(long)]
    pub searchdomain: Option<String>,
    /// Features in PVE's form: `nesting=1,keyctl=1,fuse=1,mount=nfs;cifs`.
    #[arg(long, value_name = "KEY=VALUE,…")]
    pub features: Option<String>,
    /// Download the template first (instead of --ostemplate), checked against its checksum:
    /// `url=https://…,checksum=HEX,filename=NAME.tar.zst[,algorithm=sha256][,storage=local]`.
    #[arg(long, value_name = "url=…,checksum=…,filename=…")]
    pub download: Option<String>,
    /// A template from pveam's catalogue (instead of --ostemplate), fetched when missing:
    /// `NAME[,storage=local]`, NAME as `pveam available` lists it.
    #[arg(long, value_name = "NAME[,storage=S]")]
    pub appliance: Option<String>,
    /// An application container from an OCI image (PVE 9.1), pulled when missing:
    /// `docker.io/library/nginx:1.27[,storage=local][,filename=nginx.tar]`.
    #[arg(long, value_name = "REFERENCE[,storage=S]")]
    pub oci: Option<String>,
    /// Clone a container or template (by vmid or template name) instead of creating one:
    /// `FROM[,full=0][,snapshot=NAME][,storage=S]`.
    #[arg(long = "clone", value_name = "FROM[,full=0]…")]
    pub clone_from: Option<String>,
    /// The command an application container runs (PVE's default: /sbin/init).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// An environment variable of an application container, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<String>,
    /// The NIC (by name) whose address the deploy connects to; the first by default.
    #[arg(long)]
    pub ssh_nic: Option<String>,
    /// `amd64`, `arm64`, … (PVE reads it from the template when left out).
    #[arg(long)]
    pub arch: Option<String>,
    /// `debian`, `ubuntu`, `alpine`, … (PVE reads it from the template when left out).
    #[arg(long)]
    pub ostype: Option<String>,
    /// Console mode: `tty`, `console` or `shell`.
    #[arg(long)]
    pub cmode: Option<String>,
    /// Number of ttys, 0..=6.
    #[arg(long)]
    pub tty: Option<u8>,
    /// Attach a console device (`1`, PVE's default) or not (`0`).
    #[arg(long, value_name = "0|1", value_parser = clap::builder::BoolishValueParser::new())]
    pub console: Option<bool>,
    /// A package to install (repeatable); added to the template's.
    #[arg(long = "package")]
    pub packages: Vec<String>,
    /// `destroy` (default) or `keep` the container when the job fails.
    #[arg(long)]
    pub rollback: Option<String>,

    #[command(flatten)]
    pub root_password: PasswordArgs,
    /// Refused: a password on the command line leaks into process lists and shell history.
    #[arg(long, hide = true)]
    pub password: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn every_flag_of_every_verb_says_what_it_does() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long().is_some_and(|l| l != "help") {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or_default()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "pvefleet", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:#?}");
    }
}
