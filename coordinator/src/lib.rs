//! pvefleet-coordinator: the `pvefleet` CLI an operator uses to submit, follow, list and
//! cancel container jobs, manage templates, see the fleet, and record events into a store.
//!
//! # Layout
//! - [`cli`]: the command line.
//! - [`spec`]: building a job from a template, a spec file and flags.
//! - [`store`]: the sea-orm store (SQLite or Postgres) and its migration.
//! - [`bus`]: NATS: connecting, and reading a job's events.
//! - [`verbs`]: one file per verb.
//! - [`web`]: `pvefleet serve`: the pages, their live events and `/metrics`.

pub mod bus;
pub mod cli;
pub mod spec;
pub mod store;
pub mod verbs;
pub mod web;

use std::process::ExitCode;

use cli::{Cli, TemplateVerb, Verb};

/// How a verb ended, for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input or an unknown job: exit 2, nothing done.
    #[error("{0}")]
    Usage(String),
    /// The verb ran and failed (or its job failed): exit 1.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// The verb already said why (e.g. a watched job's error): exit 1 quietly.
    #[error("")]
    Quiet,
}

impl From<spec::BadInput> for Failure {
    fn from(e: spec::BadInput) -> Self {
        Failure::Usage(e.0)
    }
}

impl From<pvefleet_schemas::FieldError> for Failure {
    fn from(e: pvefleet_schemas::FieldError) -> Self {
        Failure::Usage(format!("invalid {e}"))
    }
}

impl From<pvefleet_schemas::ValidationErrors> for Failure {
    fn from(e: pvefleet_schemas::ValidationErrors) -> Self {
        Failure::Usage(e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

pub type Outcome = Result<(), Failure>;

pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.verb {
        Verb::Setup { replicas, ref nodes, events_max_mib } => {
            verbs::setup::run(&cli, replicas, nodes, events_max_mib).await
        }
        Verb::Submit(ref args) => verbs::submit::run(&cli, args).await,
        Verb::Plan(ref args) => verbs::plan::run(&cli, args).await,
        Verb::Watch { ref job, json } => verbs::watch::run(&cli, job, json).await,
        Verb::Jobs { ref node, ref state, json } => {
            verbs::jobs::list(&cli, node.as_deref(), state.as_deref(), json).await
        }
        Verb::Job { ref job, json } => verbs::jobs::show(&cli, job, json).await,
        Verb::Cancel { ref job } => verbs::cancel::run(&cli, job).await,
        Verb::Nodes { action: None, json } => verbs::nodes::run(&cli, json).await,
        Verb::Nodes { action: Some(cli::NodesVerb::Trust { ref node, ref fingerprint, ref key }), .. } => {
            verbs::nodes::trust(&cli, node, fingerprint.as_deref(), key.as_deref()).await
        }
        Verb::Template(ref t) => match t {
            TemplateVerb::Add { file } => verbs::template::add(&cli, file).await,
            TemplateVerb::List { json } => verbs::template::list(&cli, *json).await,
            TemplateVerb::Show { name } => verbs::template::show(&cli, name).await,
            TemplateVerb::Rm { name } => verbs::template::rm(&cli, name).await,
        },
        Verb::Record => verbs::record::run(&cli).await,
        Verb::Serve(ref args) => web::run(&cli, args).await,
        Verb::Destroy(ref args) => verbs::destroy::run(&cli, args).await,
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

/// Opens the store named by `--db`.
pub async fn open_store(cli: &Cli) -> Result<store::Store, Failure> {
    let url = store::database_url(cli.db.as_deref())?;
    Ok(store::Store::open(&url).await?)
}

/// Parses a job id argument (exit 2 when it is not one).
pub fn job_id(text: &str) -> Result<pvefleet_schemas::JobId, Failure> {
    text.trim()
        .parse()
        .map_err(|e: pvefleet_schemas::FieldError| Failure::Usage(format!("`{text}` is not a job id: {}", e.problem)))
}
