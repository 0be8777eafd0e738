//! The coordinator's store (sea-orm): templates, jobs and their event log, on SQLite by
//! default or Postgres by URL, with the same code and migrations. Secrets are never stored:
//! a job's spec is kept without its root password.

use sea_orm::sea_query::{Alias, ColumnDef, Index, OnConflict, Table};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    Set, TransactionTrait,
};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager, async_trait};

use pvefleet_schemas::{Event, EventType, Job, JobId};

pub mod template {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "templates")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The template as JSON (container defaults, deploy spec, options).
        #[sea_orm(column_type = "Text")]
        pub spec: String,
        pub created_at: String,
        pub updated_at: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod job {
    use sea_orm::entity::prelude::*;

    /// Where a job stands: queued → running → succeeded | failed | cancelled, and a create job
    /// whose container a destroy job removed → destroyed; only ever forward. Stored as its
    /// name: a row holding any other text fails to decode, never passes for a state.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, serde::Serialize)]
    #[sea_orm(rs_type = "String", db_type = "Text")]
    #[serde(rename_all = "snake_case")]
    pub enum JobState {
        #[sea_orm(string_value = "queued")]
        Queued,
        #[sea_orm(string_value = "running")]
        Running,
        #[sea_orm(string_value = "succeeded")]
        Succeeded,
        #[sea_orm(string_value = "failed")]
        Failed,
        #[sea_orm(string_value = "cancelled")]
        Cancelled,
        #[sea_orm(string_value = "destroyed")]
        Destroyed,
    }

    impl JobState {
        pub const ALL: [JobState; 6] = [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Destroyed,
        ];

        pub fn as_str(self) -> &'static str {
            match self {
                JobState::Queued => "queued",
                JobState::Running => "running",
                JobState::Succeeded => "succeeded",
                JobState::Failed => "failed",
                JobState::Cancelled => "cancelled",
                JobState::Destroyed => "destroyed",
            }
        }

        /// The state named `text`, if it is one.
        pub fn parse(text: &str) -> Option<Self> {
            Self::ALL.into_iter().find(|s| s.as_str() == text)
        }

        /// Whether the job has not ended yet.
        pub fn is_live(self) -> bool {
            matches!(self, JobState::Queued | JobState::Running)
        }

        /// How far along the job is: a state moves only to one of higher rank.
        pub(crate) fn rank(self) -> u8 {
            match self {
                JobState::Queued => 0,
                JobState::Running => 1,
                JobState::Succeeded | JobState::Failed | JobState::Cancelled => 2,
                JobState::Destroyed => 3,
            }
        }
    }

    impl std::fmt::Display for JobState {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// What a job does. Stored as its name, decoded strictly like [`JobState`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, serde::Serialize)]
    #[sea_orm(rs_type = "String", db_type = "Text")]
    #[serde(rename_all = "snake_case")]
    pub enum JobKind {
        #[sea_orm(string_value = "create")]
        Create,
        #[sea_orm(string_value = "destroy")]
        Destroy,
    }

    impl std::fmt::Display for JobKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                JobKind::Create => "create",
                JobKind::Destroy => "destroy",
            })
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "jobs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: String,
        pub node: String,
        pub state: JobState,
        pub hostname: String,
        /// The job as published, without its root password.
        #[sea_orm(column_type = "Text")]
        pub spec: String,
        pub template: Option<String>,
        #[sea_orm(unique)]
        pub request_id: Option<String>,
        pub vmid: Option<i64>,
        pub ip: Option<String>,
        pub error_kind: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub error_message: Option<String>,
        pub submitted_at: String,
        pub started_at: Option<String>,
        pub finished_at: Option<String>,
        /// The job message's sequence in PVEFLEET_JOBS (to remove it while queued).
        pub stream_seq: Option<i64>,
        pub kind: JobKind,
        /// For a destroy job: the create job whose container it removes, if named by one.
        pub target_job: Option<String>,
        /// For a create job: the destroy job that removed its container.
        pub destroyed_by: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod node_key {
    use sea_orm::entity::prelude::*;

    /// The sealing key pinned for a node's agent: root passwords for the node are sealed to it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "node_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub node: String,
        pub public_key: String,
        pub fingerprint: String,
        pub pinned_at: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub job_id: String,
        pub seq: i64,
        pub kind: String,
        pub step: Option<String>,
        pub percent: i32,
        #[sea_orm(column_type = "Text")]
        pub message: String,
        pub stream: Option<String>,
        pub timestamp: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// Recorded before: nothing changed.
    Seen,
    /// Not this job's: nothing changed, and why.
    Refused(String),
}

pub use job::{JobKind, JobState};

/// The state an event moves its job to.
fn state_after(event: &Event) -> JobState {
    match event.kind {
        EventType::Complete => JobState::Succeeded,
        EventType::Error => match event.result.as_ref().and_then(|r| r.error.as_ref()).map(|e| e.kind) {
            Some(pvefleet_schemas::ErrorKind::Cancelled) => JobState::Cancelled,
            _ => JobState::Failed,
        },
        _ => JobState::Running,
    }
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261127_000001_init"
    }
}

/// The first schema, written out column by column: a migration must create the same tables
/// whatever the entities above say later. A change of an entity is a new migration.
#[async_trait::async_trait]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("templates"))
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("name")).string().not_null().primary_key())
                    .col(ColumnDef::new(Alias::new("spec")).text().not_null())
                    .col(ColumnDef::new(Alias::new("created_at")).string().not_null())
                    .col(ColumnDef::new(Alias::new("updated_at")).string().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("jobs"))
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("job_id")).string().not_null().primary_key())
                    .col(ColumnDef::new(Alias::new("node")).string().not_null())
                    .col(ColumnDef::new(Alias::new("state")).string().not_null())
                    .col(ColumnDef::new(Alias::new("hostname")).string().not_null())
                    .col(ColumnDef::new(Alias::new("spec")).text().not_null())
                    .col(ColumnDef::new(Alias::new("template")).string())
                    .col(ColumnDef::new(Alias::new("request_id")).string().unique_key())
                    .col(ColumnDef::new(Alias::new("vmid")).big_integer())
                    .col(ColumnDef::new(Alias::new("ip")).string())
                    .col(ColumnDef::new(Alias::new("error_kind")).string())
                    .col(ColumnDef::new(Alias::new("error_message")).text())
                    .col(ColumnDef::new(Alias::new("submitted_at")).string().not_null())
                    .col(ColumnDef::new(Alias::new("started_at")).string())
                    .col(ColumnDef::new(Alias::new("finished_at")).string())
                    .col(ColumnDef::new(Alias::new("stream_seq")).big_integer())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("events"))
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("id")).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Alias::new("job_id")).string().not_null())
                    .col(ColumnDef::new(Alias::new("seq")).big_integer().not_null())
                    .col(ColumnDef::new(Alias::new("kind")).string().not_null())
                    .col(ColumnDef::new(Alias::new("step")).string())
                    .col(ColumnDef::new(Alias::new("percent")).integer().not_null())
                    .col(ColumnDef::new(Alias::new("message")).text().not_null())
                    .col(ColumnDef::new(Alias::new("stream")).string())
                    .col(ColumnDef::new(Alias::new("timestamp")).string().not_null())
                    .to_owned(),
            )
            .await?;
        // Recording an event twice changes nothing.
        manager
            .create_index(
                Index::create()
                    .name("events_job_seq")
                    .table(Alias::new("events"))
                    .col(Alias::new("job_id"))
                    .col(Alias::new("seq"))
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("jobs_node_state")
                    .table(Alias::new("jobs"))
                    .col(Alias::new("node"))
                    .col(Alias::new("state"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// The pinned sealing keys of the nodes' agents.
struct NodeKeys;

impl MigrationName for NodeKeys {
    fn name(&self) -> &str {
        "m20261127_000002_node_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("node_keys"))
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("node")).string().not_null().primary_key())
                    .col(ColumnDef::new(Alias::new("public_key")).string().not_null())
                    .col(ColumnDef::new(Alias::new("fingerprint")).string().not_null())
                    .col(ColumnDef::new(Alias::new("pinned_at")).string().not_null())
                    .to_owned(),
            )
            .await
    }
}

/// Destroy jobs: a job's kind, what a destroy targets, and which destroy removed a create
/// job's container. One column per statement: SQLite alters one at a time.
struct JobKinds;

impl MigrationName for JobKinds {
    fn name(&self) -> &str {
        "m20261201_000003_job_kinds"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for JobKinds {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let jobs = || Table::alter().table(Alias::new("jobs")).to_owned();
        manager
            .alter_table(
                jobs().add_column(ColumnDef::new(Alias::new("kind")).string().not_null().default("create")).to_owned(),
            )
            .await?;
        manager.alter_table(jobs().add_column(ColumnDef::new(Alias::new("target_job")).string()).to_owned()).await?;
        manager.alter_table(jobs().add_column(ColumnDef::new(Alias::new("destroyed_by")).string()).to_owned()).await
    }
}

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(NodeKeys), Box::new(JobKinds)]
    }
}

/// Brings the schema up to date. Several `pvefleet` processes may open a new store at once
/// (the recorder and a submit): on Postgres an advisory lock serializes them; on SQLite the
/// loser of a race finds the migration applied when it tries again.
async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    let mut last = None;
    for attempt in 0..10u32 {
        let tx = db.begin().await?;
        if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            tx.execute_unprepared("SELECT pg_advisory_xact_lock(7301146612)").await?;
        }
        match Migrator::up(&tx, None).await {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(e) => {
                let _ = tx.rollback().await;
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt + 1))).await;
            }
        }
    }
    Err(anyhow::anyhow!("migrating the store: {}", last.map(|e| e.to_string()).unwrap_or_default()))
}

/// The store, migrated on open.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// `--db` as given: a Postgres URL, a `sqlite:` URL, or a path to a SQLite file; none means
/// the SQLite file in the user's data directory.
pub fn database_url(db: Option<&str>) -> anyhow::Result<String> {
    match db {
        Some(url)
            if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:") =>
        {
            Ok(url.to_owned())
        }
        Some(path) => sqlite_url(std::path::Path::new(path)),
        None => {
            let dir = dirs::data_dir()
                .ok_or_else(|| anyhow::anyhow!("no data directory for this user; give --db or PVEFLEET_DB"))?
                .join("pvefleet");
            sqlite_url(&dir.join("pvefleet.db"))
        }
    }
}

fn sqlite_url(path: &std::path::Path) -> anyhow::Result<String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("creating {} for the store: {e}", parent.display()))?;
    }
    Ok(format!("sqlite://{}?mode=rwc", path.display()))
}

impl Store {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let mut opts = sea_orm::ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false).max_connections(4);
        let db = Database::connect(opts)
            .await
            .map_err(|e| anyhow::anyhow!("opening the store {}: {e}", pvefleet_schemas::redact_url(url)))?;
        migrate(&db).await?;
        Ok(Self { db })
    }

    pub async fn job_by_request(&self, request_id: &str) -> anyhow::Result<Option<job::Model>> {
        Ok(job::Entity::find().filter(job::Column::RequestId.eq(request_id)).one(&self.db).await?)
    }

    pub async fn job(&self, id: &JobId) -> anyhow::Result<Option<job::Model>> {
        Ok(job::Entity::find_by_id(id.to_string()).one(&self.db).await?)
    }

    /// Records a job about to be published; its spec is stored without the root password and
    /// without any secret file's bytes (`Job::public`).
    /// With a request id, the row is the reservation: a second submit of the same request
    /// finds it (the unique index decides between concurrent ones) and publishes nothing.
    pub async fn insert_job(&self, job: &Job, request_id: Option<&str>) -> anyhow::Result<Result<(), job::Model>> {
        let public = job.public();
        let model = job::ActiveModel {
            job_id: Set(job.job_id.to_string()),
            node: Set(job.node.to_string()),
            state: Set(JobState::Queued),
            hostname: Set(job.container.hostname.clone()),
            spec: Set(serde_json::to_string(&public)?),
            template: Set(job.template.clone()),
            request_id: Set(request_id.map(str::to_owned)),
            vmid: Set(None),
            ip: Set(None),
            error_kind: Set(None),
            error_message: Set(None),
            submitted_at: Set(job.submitted_at.to_string()),
            started_at: Set(None),
            finished_at: Set(None),
            stream_seq: Set(None),
            kind: Set(JobKind::Create),
            target_job: Set(None),
            destroyed_by: Set(None),
        };
        self.reserve(model, request_id).await
    }

    /// Records a destroy job about to be published, under `hostname` (its target's, if known).
    pub async fn insert_destroy_job(
        &self,
        job: &pvefleet_schemas::DestroyJob,
        hostname: &str,
        request_id: Option<&str>,
    ) -> anyhow::Result<Result<(), job::Model>> {
        let model = job::ActiveModel {
            job_id: Set(job.job_id.to_string()),
            node: Set(job.node.to_string()),
            state: Set(JobState::Queued),
            hostname: Set(hostname.to_owned()),
            spec: Set(serde_json::to_string(job)?),
            template: Set(None),
            request_id: Set(request_id.map(str::to_owned)),
            vmid: Set(job.target.vmid.map(|v| i64::from(v.get()))),
            ip: Set(None),
            error_kind: Set(None),
            error_message: Set(None),
            submitted_at: Set(job.submitted_at.to_string()),
            started_at: Set(None),
            finished_at: Set(None),
            stream_seq: Set(None),
            kind: Set(JobKind::Destroy),
            target_job: Set(job.target.create_job.map(|j| j.to_string())),
            destroyed_by: Set(None),
        };
        self.reserve(model, request_id).await
    }

    /// Inserts a job's row; with a request id already taken, answers with the job that has it.
    async fn reserve(
        &self,
        model: job::ActiveModel,
        request_id: Option<&str>,
    ) -> anyhow::Result<Result<(), job::Model>> {
        match job::Entity::insert(model).exec_without_returning(&self.db).await {
            Ok(_) => Ok(Ok(())),
            Err(e) => match request_id {
                Some(key) => match self.job_by_request(key).await? {
                    Some(existing) => Ok(Err(existing)),
                    None => Err(e.into()),
                },
                None => Err(e.into()),
            },
        }
    }

    pub async fn set_stream_seq(&self, id: &JobId, seq: u64) -> anyhow::Result<()> {
        job::Entity::update_many()
            .col_expr(job::Column::StreamSeq, sea_orm::sea_query::Expr::value(seq as i64))
            .filter(job::Column::JobId.eq(id.to_string()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets a job whose publish failed.
    pub async fn delete_job(&self, id: &JobId) -> anyhow::Result<()> {
        job::Entity::delete_by_id(id.to_string()).exec(&self.db).await?;
        Ok(())
    }

    pub async fn jobs(&self, node: Option<&str>, state: Option<JobState>) -> anyhow::Result<Vec<job::Model>> {
        let mut q = job::Entity::find().order_by_asc(job::Column::JobId);
        if let Some(node) = node {
            q = q.filter(job::Column::Node.eq(node));
        }
        if let Some(state) = state {
            q = q.filter(job::Column::State.eq(state));
        }
        Ok(q.all(&self.db).await?)
    }

    /// One page of jobs, newest first, filtered by node, state and a part of the hostname;
    /// with how many match in all.
    pub async fn jobs_page(
        &self,
        node: Option<&str>,
        state: Option<&str>,
        hostname: Option<&str>,
        page: u64,
        per_page: u64,
    ) -> anyhow::Result<(Vec<job::Model>, u64)> {
        use sea_orm::PaginatorTrait as _;
        let mut q = job::Entity::find().order_by_desc(job::Column::JobId);
        if let Some(node) = node {
            q = q.filter(job::Column::Node.eq(node));
        }
        if let Some(state) = state {
            q = q.filter(job::Column::State.eq(state));
        }
        if let Some(part) = hostname {
            q = q.filter(job::Column::Hostname.contains(part));
        }
        let pages = q.paginate(&self.db, per_page);
        let total = pages.num_items().await?;
        // Past the last page is the last page (and no offset that overflows).
        let page = page.min(total.div_ceil(per_page.max(1)).saturating_sub(1));
        Ok((pages.fetch_page(page).await?, total))
    }

    /// How many jobs the store holds, by state and node, counted by the database.
    pub async fn job_counts(&self) -> anyhow::Result<Vec<(String, String, i64)>> {
        use sea_orm::{FromQueryResult, QuerySelect as _};
        #[derive(FromQueryResult)]
        struct Count {
            state: String,
            node: String,
            n: i64,
        }
        let rows = job::Entity::find()
            .select_only()
            .column(job::Column::State)
            .column(job::Column::Node)
            .column_as(job::Column::JobId.count(), "n")
            .group_by(job::Column::State)
            .group_by(job::Column::Node)
            .into_model::<Count>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|c| (c.state, c.node, c.n)).collect())
    }

    /// The jobs that finished at or after `since` (every finished one without it), oldest
    /// end first: what `/metrics` adds to its histograms since its last scrape.
    pub async fn finished_since(&self, since: Option<&str>) -> anyhow::Result<Vec<job::Model>> {
        let mut q = job::Entity::find().filter(job::Column::FinishedAt.is_not_null());
        if let Some(since) = since {
            q = q.filter(job::Column::FinishedAt.gte(since));
        }
        Ok(q.order_by_asc(job::Column::FinishedAt).all(&self.db).await?)
    }

    /// The step, complete and error events of `jobs`, ordered by job and seq: what their step
    /// durations are measured from.
    pub async fn step_marks_of(&self, jobs: &[String]) -> anyhow::Result<Vec<event::Model>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut marks = Vec::new();
        // Bounded IN lists, whatever the batch.
        for chunk in jobs.chunks(500) {
            marks.extend(
                event::Entity::find()
                    .filter(event::Column::Kind.is_in(["step", "complete", "error"]))
                    .filter(event::Column::JobId.is_in(chunk.iter().cloned()))
                    .order_by_asc(event::Column::JobId)
                    .order_by_asc(event::Column::Seq)
                    .all(&self.db)
                    .await?,
            );
        }
        Ok(marks)
    }

    pub async fn events(&self, id: &JobId) -> anyhow::Result<Vec<event::Model>> {
        Ok(event::Entity::find()
            .filter(event::Column::JobId.eq(id.to_string()))
            .order_by_asc(event::Column::Seq)
            .all(&self.db)
            .await?)
    }

    /// Records one event and moves its job's state forward. An event recorded before changes
    /// nothing; one naming another node than the job's is refused.
    pub async fn record_event(&self, e: &Event) -> anyhow::Result<Recorded> {
        let tx = self.db.begin().await?;
        let Some(known) = job::Entity::find_by_id(e.job_id.to_string()).one(&tx).await? else {
            // A job no coordinator of this store queued: an agent's user may publish anything
            // on its own node's subjects, made-up jobs included. Coordinators that should see
            // each other's jobs share one store (Postgres).
            return Ok(Recorded::Refused(format!("job {} was never queued through this store", e.job_id)));
        };
        if known.node != e.node.as_str() {
            return Ok(Recorded::Refused(format!(
                "job {} runs on {}, the event says {}",
                e.job_id, known.node, e.node
            )));
        }
        let row = event::ActiveModel {
            id: sea_orm::NotSet,
            job_id: Set(e.job_id.to_string()),
            seq: Set(e.seq as i64),
            kind: Set(enum_text(&e.kind)),
            step: Set(e.step.map(|s| s.as_str().to_owned())),
            percent: Set(i32::from(e.percent)),
            message: Set(e.message.clone()),
            stream: Set(e.stream.as_ref().map(enum_text)),
            timestamp: Set(e.timestamp.to_string()),
        };
        let inserted = event::Entity::insert(row)
            .on_conflict(OnConflict::columns([event::Column::JobId, event::Column::Seq]).do_nothing().to_owned())
            .exec_without_returning(&tx)
            .await?;
        if inserted == 0 {
            tx.commit().await?;
            return Ok(Recorded::Seen);
        }
        let mut model: job::ActiveModel = known.into();
        let current = *model.state.as_ref();
        let next = state_after(e);
        if next.rank() > current.rank() {
            model.state = Set(next);
        }
        if model.started_at.as_ref().is_none() && e.kind != EventType::Error {
            model.started_at = Set(Some(e.timestamp.to_string()));
        }
        // The first terminal event is the job's end; a later one (a forgery, a second writer)
        // changes nothing.
        let finished = !current.is_live();
        if let Some(result) = e.result.as_ref().filter(|_| !finished) {
            model.vmid = Set(result.vmid.map(|v| i64::from(v.get())));
            model.ip = Set(result.ip.map(|ip| ip.to_string()));
            if let Some(err) = &result.error {
                model.error_kind = Set(Some(enum_text(&err.kind)));
                model.error_message = Set(Some(e.message.clone()));
            }
            model.finished_at = Set(Some(e.timestamp.to_string()));
        }
        let job = model.update(&tx).await?;
        // A destroy job that succeeded: the create job it names no longer has a container.
        if job.kind == JobKind::Destroy
            && !finished
            && e.kind == EventType::Complete
            && let Some(target) = &job.target_job
        {
            job::Entity::update_many()
                .col_expr(job::Column::State, sea_orm::sea_query::Expr::value(JobState::Destroyed.as_str()))
                .col_expr(job::Column::DestroyedBy, sea_orm::sea_query::Expr::value(job.job_id.clone()))
                .filter(job::Column::JobId.eq(target.clone()))
                .filter(job::Column::Node.eq(job.node.clone()))
                .exec(&tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Recorded::New)
    }

    /// The sealing key pinned for `node`, if any.
    pub async fn node_key(&self, node: &str) -> anyhow::Result<Option<node_key::Model>> {
        Ok(node_key::Entity::find_by_id(node.to_owned()).one(&self.db).await?)
    }

    /// Pins `key` for `node`, replacing any key pinned before.
    pub async fn pin_node_key(&self, node: &str, key: &pvefleet_schemas::seal::PublicKey) -> anyhow::Result<()> {
        let model = node_key::ActiveModel {
            node: Set(node.to_owned()),
            public_key: Set(key.to_string()),
            fingerprint: Set(key.fingerprint()),
            pinned_at: Set(pvefleet_schemas::Timestamp::now().to_string()),
        };
        node_key::Entity::insert(model)
            .on_conflict(
                OnConflict::column(node_key::Column::Node)
                    .update_columns([
                        node_key::Column::PublicKey,
                        node_key::Column::Fingerprint,
                        node_key::Column::PinnedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    pub async fn put_template(&self, name: &str, spec: &serde_json::Value) -> anyhow::Result<()> {
        let now = pvefleet_schemas::Timestamp::now().to_string();
        let model = template::ActiveModel {
            name: Set(name.to_owned()),
            spec: Set(spec.to_string()),
            created_at: Set(now.clone()),
            updated_at: Set(now),
        };
        template::Entity::insert(model)
            .on_conflict(
                OnConflict::column(template::Column::Name)
                    .update_columns([template::Column::Spec, template::Column::UpdatedAt])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    pub async fn template(&self, name: &str) -> anyhow::Result<Option<template::Model>> {
        Ok(template::Entity::find_by_id(name.to_owned()).one(&self.db).await?)
    }

    pub async fn templates(&self) -> anyhow::Result<Vec<template::Model>> {
        Ok(template::Entity::find().order_by_asc(template::Column::Name).all(&self.db).await?)
    }

    pub async fn remove_template(&self, name: &str) -> anyhow::Result<bool> {
        Ok(template::Entity::delete_by_id(name.to_owned()).exec(&self.db).await?.rows_affected > 0)
    }
}

/// A serde enum's wire name (`deploy`, `stdout`).
fn enum_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward_and_every_name_reads_back() {
        use JobState::*;
        assert!(Running.rank() > Queued.rank());
        assert!(Failed.rank() > Running.rank());
        assert_eq!(Succeeded.rank(), Cancelled.rank());
        assert!(Destroyed.rank() > Succeeded.rank() && Destroyed.rank() > Failed.rank());
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(JobState::parse("finished"), None, "a mistyped state is no state");
    }

    #[tokio::test]
    async fn a_row_with_a_mistyped_state_fails_to_decode_rather_than_pass_as_finished() {
        use sea_orm::ConnectionTrait as _;
        let (_dir, store) = temp_store().await;
        let job = JobId::new();
        queued(&store, job).await;
        store
            .db
            .execute_unprepared(&format!("UPDATE jobs SET state = 'finishd' WHERE job_id = '{job}'"))
            .await
            .unwrap();
        assert!(store.job(&job).await.is_err(), "a mistyped state was read as a state");
    }

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("store.db")).unwrap();
        let store = Store::open(&url).await.unwrap();
        (dir, store)
    }

    /// The migrations' tables, as SQLite holds them: frozen, whatever the entities say.
    #[tokio::test]
    async fn the_migrations_make_the_same_tables_for_ever() {
        let (_dir, store) = temp_store().await;
        let rows = store
            .db
            .query_all(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Sqlite,
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' AND name != 'seaql_migrations' ORDER BY name",
            ))
            .await
            .unwrap();
        let sql: Vec<String> = rows.iter().map(|r| r.try_get::<String>("", "sql").unwrap()).collect();
        assert_eq!(
            sql,
            [
                r#"CREATE TABLE "events" ( "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "job_id" varchar NOT NULL, "seq" bigint NOT NULL, "kind" varchar NOT NULL, "step" varchar, "percent" integer NOT NULL, "message" text NOT NULL, "stream" varchar, "timestamp" varchar NOT NULL )"#,
                r#"CREATE UNIQUE INDEX "events_job_seq" ON "events" ("job_id", "seq")"#,
                r#"CREATE TABLE "jobs" ( "job_id" varchar NOT NULL PRIMARY KEY, "node" varchar NOT NULL, "state" varchar NOT NULL, "hostname" varchar NOT NULL, "spec" text NOT NULL, "template" varchar, "request_id" varchar UNIQUE, "vmid" bigint, "ip" varchar, "error_kind" varchar, "error_message" text, "submitted_at" varchar NOT NULL, "started_at" varchar, "finished_at" varchar, "stream_seq" bigint , "kind" varchar NOT NULL DEFAULT 'create', "target_job" varchar, "destroyed_by" varchar)"#,
                r#"CREATE INDEX "jobs_node_state" ON "jobs" ("node", "state")"#,
                r#"CREATE TABLE "node_keys" ( "node" varchar NOT NULL PRIMARY KEY, "public_key" varchar NOT NULL, "fingerprint" varchar NOT NULL, "pinned_at" varchar NOT NULL )"#,
                r#"CREATE TABLE "templates" ( "name" varchar NOT NULL PRIMARY KEY, "spec" text NOT NULL, "created_at" varchar NOT NULL, "updated_at" varchar NOT NULL )"#,
            ]
        );
    }

    fn terminal(job: JobId, seq: u64, success: bool, vmid: u32) -> Event {
        let node = pvefleet_schemas::NodeName::new("pve1").unwrap();
        let error = (!success).then(|| pvefleet_schemas::ErrorInfo {
            kind: pvefleet_schemas::ErrorKind::Task,
            step: pvefleet_schemas::Step::Creating,
            message: "boom".into(),
        });
        Event {
            v: pvefleet_schemas::V1,
            job_id: job,
            node: node.clone(),
            seq,
            kind: if success { EventType::Complete } else { EventType::Error },
            step: None,
            percent: 100,
            message: "end".into(),
            timestamp: pvefleet_schemas::Timestamp::now(),
            stream: None,
            result: Some(pvefleet_schemas::JobResult {
                success,
                job_id: job,
                node,
                vmid: Some(pvefleet_schemas::Vmid::new(vmid).unwrap()),
                ip: None,
                error,
                rolled_back: false,
                host_key: None,
            }),
        }
    }

    /// Queues job `job` on pve1 in `store`, as `submit` does.
    async fn queued(store: &Store, job: JobId) {
        let mut spec = pvefleet_schemas::Job::create(
            pvefleet_schemas::NodeName::new("pve1").unwrap(),
            pvefleet_schemas::ContainerSpec::new("web", "local:vztmpl/x.tar.zst"),
            pvefleet_schemas::DeploySpec::default(),
        );
        spec.job_id = job;
        store.insert_job(&spec, None).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_event_of_a_job_never_queued_is_refused() {
        let (_dir, store) = temp_store().await;
        let phantom = JobId::new();
        assert!(matches!(store.record_event(&terminal(phantom, 1, true, 100)).await.unwrap(), Recorded::Refused(_)));
        assert!(store.job(&phantom).await.unwrap().is_none());
        assert!(store.events(&phantom).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_finished_jobs_result_is_not_overwritten_by_a_later_event() {
        let (_dir, store) = temp_store().await;
        let job = JobId::new();
        queued(&store, job).await;
        assert_eq!(store.record_event(&terminal(job, 1, true, 100)).await.unwrap(), Recorded::New);
        assert_eq!(store.record_event(&terminal(job, 2, false, 666)).await.unwrap(), Recorded::New);
        let row = store.job(&job).await.unwrap().unwrap();
        assert_eq!((row.state, row.vmid, row.error_kind), (JobState::Succeeded, Some(100), None));
    }

    #[tokio::test]
    async fn an_event_naming_another_node_than_the_jobs_is_refused() {
        let (_dir, store) = temp_store().await;
        let job = JobId::new();
        queued(&store, job).await;
        let mut first = terminal(job, 1, true, 100);
        first.kind = EventType::Accepted;
        first.result = None;
        assert_eq!(store.record_event(&first).await.unwrap(), Recorded::New);
        let mut forged = terminal(job, 2, true, 100);
        forged.node = pvefleet_schemas::NodeName::new("pve2").unwrap();
        assert!(matches!(store.record_event(&forged).await.unwrap(), Recorded::Refused(_)));
        assert_eq!(store.job(&job).await.unwrap().unwrap().state, JobState::Running);
        assert_eq!(store.events(&job).await.unwrap().len(), 1);
    }

    #[test]
    fn urls() {
        assert_eq!(database_url(Some("postgres://u@h/db")).unwrap(), "postgres://u@h/db");
        assert!(database_url(Some("/tmp/pvefleet-test-store/x.db")).unwrap().starts_with("sqlite:///tmp/"));
    }
}
