//! pvefleet-coordinator: the `pvefleet` CLI an operator uses to submit, follow, list and
//! cancel container jobs, manage templates, see the fleet, and record events into a store.
//!
//! # Layout
//! Each verb is a thin file in [`verbs`] (and [`web`] for `serve`); what verbs share is a
//! library module below them, and no verb uses another
//! (`cargo test -p pvefleet-testbed --test layout` proves there is no circle):
//! - [`verbs`]: one file per verb: read the arguments, call the library, print.
//! - [`web`]: `pvefleet serve`: the gate (logins, sessions, CSRF, roles), the pages, the
//!   actions (the CLI's verbs run for a user), their live events and `/metrics`.
//! - [`batch`]: `submit --count N`: N jobs, all placed before any is published.
//! - [`requests`]: a create request from a template, a spec file and flags: the job(s) it
//!   makes, validated, and the root password given.
//! - [`placement`]: `--node auto`: the freest live node that fits, counting earlier placements.
//! - [`rollout`]: a day-two verb over `--select`: canary, max-parallel, stop at a failure.
//! - [`day_two`]: a day-two job as made here (update, resize, power), recorded and published.
//! - [`inventory`]: the agents' inventory read; a container named by job, hostname, node+vmid.
//! - [`plans`]: a plan asked of an agent and shown.
//! - [`secrets`]: sealing a job's secrets to the key trusted for its node, and only that key.
//! - [`publishing`]: a job on the work queue once per request id: recorded, published with its
//!   id as the dedup id, published again (never twice) when its publish was not confirmed.
//! - [`follow`]: a job's events replayed and followed to its end, printed safely.
//! - [`identity`]: the operator's signing key on disk: made once (0600), read only when private.
//! - [`users`]: the web view's users: roles, names, argon2id password hashes.
//! - [`trust`]: the admin-signed policy in the trust bucket, admin actions recorded, and the
//!   audit stream read back.
//! - [`recorder`]: every node's events into the store, each once, job states moved forward;
//!   the audit trail; the inventory's containers (gone ones kept).
//! - [`spec`]: building the container spec from a template, a spec file and flags.
//! - [`store`]: the sea-orm store (SQLite or Postgres): entities, migrations, queries.
//! - [`bus`]: NATS: connecting, the registry, and reading a job's events.
//! - [`failure`]: how a verb ends, and the exit code; [`shutdown`]: the signals that stop
//!   `record` and `serve`; [`cli`]: the command line.

pub mod batch;
pub mod bus;
pub mod cli;
pub mod day_two;
pub mod failure;
pub mod follow;
pub mod identity;
pub mod inventory;
pub mod placement;
pub mod plans;
pub mod publishing;
pub mod recorder;
pub mod requests;
pub mod rollout;
pub mod secrets;
pub mod shutdown;
pub mod spec;
pub mod store;
pub mod trust;
pub mod users;
pub mod verbs;
pub mod web;

pub use failure::{Failure, Outcome, job_id, open_store};

use std::process::ExitCode;

use cli::{Cli, IdentityVerb, PolicyVerb, TemplateVerb, UsersVerb, Verb};

pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match trust::parse_admin_keys(cli.admin_keys.as_deref().unwrap_or_default()) {
        Ok(keys) => {
            trust::set_admin_keys(keys);
            match &cli.acting_user {
                Some(user) => match users::check_name(user) {
                    Ok(()) => {
                        let _ = publishing::ACTING_USER.set(user.clone());
                        dispatch(&cli).await
                    }
                    Err(e) => Err(Failure::Usage(format!("--acting-user: {e}"))),
                },
                None => dispatch(&cli).await,
            }
        }
        Err(e) => Err(Failure::Usage(format!("--admin-keys: {e}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("pvefleet: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("pvefleet: {}", pvefleet_schemas::report::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
        Err(Failure::Quiet) => ExitCode::FAILURE,
    }
}

async fn dispatch(cli: &Cli) -> Outcome {
    match cli.verb {
        Verb::Setup { replicas, ref nodes, events_max_mib } => {
            verbs::setup::run(cli, replicas, nodes, events_max_mib).await
        }
        Verb::Submit(ref args) => verbs::submit::run(cli, args).await,
        Verb::Plan(ref args) => verbs::plan::run(cli, args).await,
        Verb::Watch { ref job, json } => verbs::watch::run(cli, job, json).await,
        Verb::Jobs { ref node, ref state, limit, json } => {
            verbs::jobs::list(cli, node.as_deref(), state.as_deref(), limit, json).await
        }
        Verb::Job { ref job, json } => verbs::jobs::show(cli, job, json).await,
        Verb::Cancel { ref job } => verbs::cancel::run(cli, job).await,
        Verb::Nodes { action: None, json } => verbs::nodes::run(cli, json).await,
        Verb::Nodes {
            action: Some(cli::NodesVerb::Enroll { ref node, ref fingerprint, ref identity_key, ref sealing_key }),
            ..
        } => {
            let keys = identity_key.as_deref().zip(sealing_key.as_deref());
            verbs::nodes::enroll(cli, node, fingerprint.as_deref(), keys).await
        }
        Verb::Template(ref t) => match t {
            TemplateVerb::Add { file } => verbs::template::add(cli, file).await,
            TemplateVerb::List { json } => verbs::template::list(cli, *json).await,
            TemplateVerb::Show { name } => verbs::template::show(cli, name).await,
            TemplateVerb::Rm { name } => verbs::template::rm(cli, name).await,
        },
        Verb::Record => verbs::record::run(cli).await,
        Verb::Identity(IdentityVerb::New { force }) => verbs::identity::new(cli, force),
        Verb::Identity(IdentityVerb::Show) => verbs::identity::show(cli),
        Verb::Sign { valid } => verbs::identity::sign(cli, valid),
        Verb::Whoami => verbs::trust::whoami(cli).await,
        Verb::Policy(PolicyVerb::Show { json }) => verbs::trust::policy_show(cli, json).await,
        Verb::Policy(PolicyVerb::Set { ref file }) => verbs::trust::policy_set(cli, file).await,
        Verb::Audit { ref signer, ref node, ref since, json } => {
            verbs::trust::audit(cli, signer.clone(), node.clone(), since.clone(), json).await
        }
        Verb::Serve(ref args) => web::run(cli, args).await,
        Verb::Users(ref u) => match u {
            UsersVerb::Add { name, role, password_stdin } => verbs::users::add(cli, name, role, *password_stdin).await,
            UsersVerb::Passwd { name, password_stdin } => verbs::users::passwd(cli, name, *password_stdin).await,
            UsersVerb::Disable { name } => verbs::users::disable(cli, name, true).await,
            UsersVerb::Enable { name } => verbs::users::disable(cli, name, false).await,
            UsersVerb::List { json } => verbs::users::list(cli, *json).await,
        },
        Verb::Destroy(ref args) => verbs::destroy::run(cli, args).await,
        Verb::Ls { ref node, ref select, all, limit, json } => {
            verbs::ls::run(cli, node.as_deref(), select.as_deref(), all, limit, json).await
        }
        Verb::Retry(ref args) => verbs::retry::run(cli, args).await,
        Verb::Update(ref args) => verbs::day_two::update(cli, args).await,
        Verb::Resize(ref args) => verbs::day_two::resize(cli, args).await,
        Verb::Start(ref args) => verbs::day_two::power(cli, args, pvefleet_schemas::PowerAction::Start).await,
        Verb::Shutdown(ref args) => verbs::day_two::power(cli, args, pvefleet_schemas::PowerAction::Shutdown).await,
        Verb::Stop(ref args) => verbs::day_two::power(cli, args, pvefleet_schemas::PowerAction::Stop).await,
        Verb::Reboot(ref args) => verbs::day_two::power(cli, args, pvefleet_schemas::PowerAction::Reboot).await,
        Verb::Snapshot(ref args) => verbs::keeping::snapshot(cli, args).await,
        Verb::Snapshots(ref args) => verbs::keeping::list(cli, args, pvefleet_schemas::ListWhat::Snapshots).await,
        Verb::Rollback(ref args) => verbs::keeping::rollback(cli, args).await,
        Verb::Backup(ref args) => verbs::keeping::backup(cli, args).await,
        Verb::Backups(ref args) => verbs::keeping::list(cli, args, pvefleet_schemas::ListWhat::Backups).await,
        Verb::Restore(ref args) => verbs::keeping::restore(cli, args).await,
        Verb::Move(ref args) => verbs::keeping::move_to(cli, args).await,
    }
}
