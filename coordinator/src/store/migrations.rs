//! Every schema change of the store, in order, each written out column by column (a
//! migration must make the same tables for ever, whatever the entities become), and running
//! them safely when several processes open a new store at once.

use sea_orm::sea_query::{Alias, ColumnDef, Index, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager, async_trait};

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

/// The audit trail as the recorder keeps it, one row per record of `PVEFLEET_AUDIT`, keyed by
/// its stream sequence (so a record delivered again is kept once).
struct Audit;

impl MigrationName for Audit {
    fn name(&self) -> &str {
        "m20261203_000004_audit"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Audit {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let text = |name: &str| ColumnDef::new(Alias::new(name)).string().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("audit"))
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("seq")).big_integer().not_null().primary_key())
                    .col(text("at").not_null())
                    .col(text("node"))
                    .col(text("action").not_null())
                    .col(text("job_id"))
                    .col(text("signer"))
                    .col(text("signer_name"))
                    .col(text("decision").not_null())
                    .col(text("rule"))
                    .col(ColumnDef::new(Alias::new("message")).text().not_null())
                    .to_owned(),
            )
            .await
    }
}

/// The containers pvefleet made, as the recorder reads them from the agents' inventory, kept
/// once gone; and which failed job a job tries again (`pvefleet retry`).
struct Containers;

impl MigrationName for Containers {
    fn name(&self) -> &str {
        "m20261204_000005_containers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Containers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let text = |name: &str| ColumnDef::new(Alias::new(name)).string().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("containers"))
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("vmid")).big_integer().not_null())
                    .col(text("marker").not_null())
                    .col(text("node").not_null())
                    .col(text("hostname").not_null())
                    .col(text("state").not_null())
                    .col(text("status").not_null())
                    .col(text("ip"))
                    .col(text("create_job"))
                    .col(text("last_job"))
                    .col(ColumnDef::new(Alias::new("drift")).boolean().not_null().default(false))
                    .col(text("seen_at").not_null())
                    .col(text("gone_at"))
                    .primary_key(Index::create().col(Alias::new("vmid")).col(Alias::new("marker")))
                    .to_owned(),
            )
            .await?;
        let jobs = Table::alter().table(Alias::new("jobs")).to_owned();
        manager.alter_table(jobs.clone().add_column(ColumnDef::new(Alias::new("retry_of")).string()).to_owned()).await
    }
}

/// The web view's users and their sessions, and the person an audited request was made for.
struct Users;

impl MigrationName for Users {
    fn name(&self) -> &str {
        "m20261205_000006_users"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Users {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        let text = |name: &str| ColumnDef::new(Alias::new(name)).string().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("users"))
                    .if_not_exists()
                    .col(text("name").not_null().primary_key())
                    .col(text("role").not_null())
                    .col(text("password_hash").not_null())
                    .col(ColumnDef::new(Alias::new("disabled")).boolean().not_null().default(false))
                    .col(ColumnDef::new(Alias::new("failed_logins")).integer().not_null().default(0))
                    .col(text("locked_until"))
                    .col(text("created_at").not_null())
                    .col(text("updated_at").not_null())
                    .to_owned(),
            )
            .await?;
        // A session is found by the SHA-256 of its cookie: the store never holds a cookie that
        // would open one.
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("sessions"))
                    .if_not_exists()
                    .col(text("token_hash").not_null().primary_key())
                    .col(text("user_name").not_null())
                    .col(text("csrf").not_null())
                    .col(text("created_at").not_null())
                    .col(text("expires_at").not_null())
                    .col(text("revoked_at"))
                    .to_owned(),
            )
            .await?;
        let audit = Table::alter().table(Alias::new("audit")).to_owned();
        manager.alter_table(audit.clone().add_column(ColumnDef::new(Alias::new("user_name")).string()).to_owned()).await
    }
}

/// What a store of 100,000 jobs and 2,000,000 events needs to stay fast, each index chosen
/// from the coordinator benchmark (`tests/benches/coordinator.rs`, `just bench`).
struct Scale;

impl MigrationName for Scale {
    fn name(&self) -> &str {
        "m20261206_000007_scale"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Scale {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        // Jobs by (state, node, kind), kept up to date in the same transaction as every
        // insert, delete and state change of a job: what `/metrics` shows, read without
        // counting 100,000 rows at each scrape (it did: 60–120 ms at that size).
        let text = |name: &str| ColumnDef::new(Alias::new(name)).string().not_null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("job_counts"))
                    .if_not_exists()
                    .col(text("state"))
                    .col(text("node"))
                    .col(text("kind"))
                    .col(ColumnDef::new(Alias::new("n")).big_integer().not_null())
                    .primary_key(
                        Index::create().col(Alias::new("state")).col(Alias::new("node")).col(Alias::new("kind")),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO job_counts (state, node, kind, n) \
                 SELECT state, node, kind, COUNT(*) FROM jobs GROUP BY state, node, kind",
            )
            .await?;
        let index = |name: &str, cols: &[&str]| {
            let mut i = Index::create().name(name).table(Alias::new("jobs")).if_not_exists().to_owned();
            for c in cols {
                i.col(Alias::new(*c));
            }
            i
        };
        // The web jobs page and `pvefleet jobs` filtered by node, by state or by both, newest
        // first: the page is read in job id order from an index instead of sorting every
        // matching row (by node and state on Postgres: 50 ms for 10,000 matching rows, sorted;
        // 0.3 ms read in order). The one by node and state takes over `jobs_node_state`.
        manager.create_index(index("jobs_node_job", &["node", "job_id"])).await?;
        manager.create_index(index("jobs_state_job", &["state", "job_id"])).await?;
        manager.create_index(index("jobs_node_state_job", &["node", "state", "job_id"])).await?;
        manager.drop_index(Index::drop().name("jobs_node_state").table(Alias::new("jobs")).to_owned()).await?;
        // `/metrics`' durations add the jobs finished since the last scrape: found by the index,
        // not by reading every job.
        manager.create_index(index("jobs_finished_at", &["finished_at"])).await
    }
}

#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Init),
            Box::new(NodeKeys),
            Box::new(JobKinds),
            Box::new(Audit),
            Box::new(Containers),
            Box::new(Users),
            Box::new(Scale),
        ]
    }
}

/// Brings the schema up to date. Several `pvefleet` processes may open a new store at once
/// (the recorder and a submit): on Postgres an advisory lock serializes them; on SQLite the
/// loser of a race finds the migration applied when it tries again.
pub(super) async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
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
