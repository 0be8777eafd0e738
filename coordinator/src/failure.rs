//! How a verb ends ([`Failure`], [`Outcome`], and the exit code each means), and the two
//! arguments every verb reads alike: the store and a job id.

use crate::cli::Cli;
use crate::{spec, store};

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
