//! The coordinator's store (sea-orm): templates, jobs and their event log, on SQLite by
//! default or Postgres by URL, with the same code and migrations. Secrets are never stored:
//! a job's spec is kept without its root password.
//!
//! - [`entities`]: the tables, one module each, and the job's state and kind as enums.
//! - `migrations`: every schema change, in order, written out column by column.
//! - `queries`: what the verbs, the recorder and the web view ask of it.

mod accounts;
pub mod entities;
mod migrations;
mod queries;

pub use queries::Finished;

use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection};

pub use accounts::{LOCK_AFTER, LOCK_FOR, Login};
pub use entities::job::{JobKind, JobState};
pub use entities::{audit, container, event, job, job_count, node_key, session, template, user};

/// What recording an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// Recorded before: nothing changed.
    Seen,
    /// Not this job's: nothing changed, and why.
    Refused(String),
}

/// The store, migrated on open.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
    /// On SQLite, which has one writer at a time: the recorder's write transactions, one at a
    /// time in this process. A transaction that reads before it writes fails at its first
    /// write when another connection wrote since its read (`database is locked`, which
    /// waiting does not cure); ten nodes' events recorded side by side did, one in three.
    writer: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

/// Whether `e` is SQLite's "database is locked": another writer came between, try again.
pub(crate) fn is_busy(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("database is locked")
}

impl Store {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let mut opts = sea_orm::ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false).max_connections(4);
        // SQLite in WAL mode: readers (the web view, the CLI) never wait for the recorder's
        // writes nor block them, and a commit is one append to the log (still synced: the
        // recorder acks an event only once it is on disk).
        opts.map_sqlx_sqlite_opts(|o| o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal));
        // Postgres plans each query for its values: a prepared statement run a few times gets
        // a generic plan, which cannot tell that `finished_at >= <now>` matches no row of
        // 100,000 and read them all (40 ms a /metrics scrape instead of 1 ms in the coordinator
        // bench).
        opts.map_sqlx_postgres_opts(|o| o.options([("plan_cache_mode", "force_custom_plan")]));
        // SQLite: turning a new file to WAL takes it alone for a moment, and a second process
        // doing the same meanwhile is answered "database is locked" at once, without waiting
        // (the recorder and serve started together: one of them exited). Asked again shortly.
        use backon::{ExponentialBuilder, Retryable as _};
        let retry = ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(20))
            .with_max_delay(std::time::Duration::from_millis(500))
            .without_max_times()
            .with_total_delay(Some(std::time::Duration::from_secs(10)));
        let db = (|| async { Database::connect(opts.clone()).await.map_err(anyhow::Error::from) })
            .retry(retry)
            .when(is_busy)
            .await
            .map_err(|e| anyhow::anyhow!("opening the store {}: {e}", pvefleet_schemas::redact_url(url)))?;
        migrations::migrate(&db).await?;
        let writer = (db.get_database_backend() == sea_orm::DatabaseBackend::Sqlite).then(Default::default);
        Ok(Self { db, writer })
    }

    #[cfg(test)]
    async fn open_owned(url: String) -> anyhow::Result<Self> {
        Self::open(&url).await
    }

    /// The process's SQLite write turn, held for a write transaction (none on Postgres).
    pub(crate) async fn one_writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
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

pub(crate) fn sqlite_url(path: &std::path::Path) -> anyhow::Result<String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("creating {} for the store: {e}", parent.display()))?;
    }
    Ok(format!("sqlite://{}?mode=rwc", path.display()))
}

#[cfg(test)]
mod tests {
    use pvefleet_schemas::{Event, EventType, JobId};
    use sea_orm::ConnectionTrait as _;

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
                r#"CREATE TABLE "audit" ( "seq" bigint NOT NULL PRIMARY KEY, "at" varchar NOT NULL, "node" varchar, "action" varchar NOT NULL, "job_id" varchar, "signer" varchar, "signer_name" varchar, "decision" varchar NOT NULL, "rule" varchar, "message" text NOT NULL , "user_name" varchar)"#,
                r#"CREATE TABLE "containers" ( "vmid" bigint NOT NULL, "marker" varchar NOT NULL, "node" varchar NOT NULL, "hostname" varchar NOT NULL, "state" varchar NOT NULL, "status" varchar NOT NULL, "ip" varchar, "create_job" varchar, "last_job" varchar, "drift" boolean NOT NULL DEFAULT FALSE, "seen_at" varchar NOT NULL, "gone_at" varchar, PRIMARY KEY ("vmid", "marker") )"#,
                r#"CREATE TABLE "events" ( "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "job_id" varchar NOT NULL, "seq" bigint NOT NULL, "kind" varchar NOT NULL, "step" varchar, "percent" integer NOT NULL, "message" text NOT NULL, "stream" varchar, "timestamp" varchar NOT NULL )"#,
                r#"CREATE UNIQUE INDEX "events_job_seq" ON "events" ("job_id", "seq")"#,
                r#"CREATE TABLE "job_counts" ( "state" varchar NOT NULL, "node" varchar NOT NULL, "kind" varchar NOT NULL, "n" bigint NOT NULL, PRIMARY KEY ("state", "node", "kind") )"#,
                r#"CREATE TABLE "jobs" ( "job_id" varchar NOT NULL PRIMARY KEY, "node" varchar NOT NULL, "state" varchar NOT NULL, "hostname" varchar NOT NULL, "spec" text NOT NULL, "template" varchar, "request_id" varchar UNIQUE, "vmid" bigint, "ip" varchar, "error_kind" varchar, "error_message" text, "submitted_at" varchar NOT NULL, "started_at" varchar, "finished_at" varchar, "stream_seq" bigint , "kind" varchar NOT NULL DEFAULT 'create', "target_job" varchar, "destroyed_by" varchar, "retry_of" varchar)"#,
                r#"CREATE INDEX "jobs_finished_at" ON "jobs" ("finished_at")"#,
                r#"CREATE INDEX "jobs_node_job" ON "jobs" ("node", "job_id")"#,
                r#"CREATE INDEX "jobs_node_state_job" ON "jobs" ("node", "state", "job_id")"#,
                r#"CREATE INDEX "jobs_state_job" ON "jobs" ("state", "job_id")"#,
                r#"CREATE TABLE "node_keys" ( "node" varchar NOT NULL PRIMARY KEY, "public_key" varchar NOT NULL, "fingerprint" varchar NOT NULL, "pinned_at" varchar NOT NULL )"#,
                r#"CREATE TABLE "sessions" ( "token_hash" varchar NOT NULL PRIMARY KEY, "user_name" varchar NOT NULL, "csrf" varchar NOT NULL, "created_at" varchar NOT NULL, "expires_at" varchar NOT NULL, "revoked_at" varchar )"#,
                r#"CREATE TABLE "templates" ( "name" varchar NOT NULL PRIMARY KEY, "spec" text NOT NULL, "created_at" varchar NOT NULL, "updated_at" varchar NOT NULL )"#,
                r#"CREATE TABLE "users" ( "name" varchar NOT NULL PRIMARY KEY, "role" varchar NOT NULL, "password_hash" varchar NOT NULL, "disabled" boolean NOT NULL DEFAULT FALSE, "failed_logins" integer NOT NULL DEFAULT 0, "locked_until" varchar, "created_at" varchar NOT NULL, "updated_at" varchar NOT NULL )"#,
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
                moved_to: None,
            }),
            job_seq: None,
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

    /// The jobs by (state, node, kind) as the database counts them.
    async fn recount(store: &Store) -> Vec<(String, String, String, i64)> {
        let rows = store
            .db
            .query_all(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Sqlite,
                "SELECT state, node, kind, COUNT(*) AS n FROM jobs GROUP BY state, node, kind ORDER BY state, node, kind",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let text = |c: &str| r.try_get::<String>("", c).unwrap();
                (text("state"), text("node"), text("kind"), r.try_get::<i64>("", "n").unwrap())
            })
            .collect()
    }

    /// The kept counts, without the (state, node, kind) that no job is in any more.
    async fn kept(store: &Store) -> Vec<(String, String, String, i64)> {
        let mut kept: Vec<_> = store.job_counts().await.unwrap().into_iter().filter(|c| c.3 != 0).collect();
        kept.sort();
        kept
    }

    #[tokio::test]
    async fn a_batch_is_recorded_as_its_events_one_by_one_and_the_job_counts_follow() {
        let (_dir, store) = temp_store().await;
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        for job in [a, b, c] {
            queued(&store, job).await;
        }
        assert_eq!(kept(&store).await, recount(&store).await);
        let accepted = |job, seq| {
            let mut e = terminal(job, seq, true, 100);
            e.kind = EventType::Accepted;
            e.result = None;
            e
        };
        let (a1, b1, b1_again) = (accepted(a, 1), accepted(b, 1), accepted(b, 1));
        let (a2, c1, phantom) =
            (terminal(a, 2, true, 101), terminal(c, 1, false, 102), terminal(JobId::new(), 1, true, 109));
        let outcomes = store.record_events(&[&a1, &b1, &a2, &b1_again, &c1, &phantom]).await.unwrap();
        assert_eq!(outcomes[..5], [Recorded::New, Recorded::New, Recorded::New, Recorded::Seen, Recorded::New]);
        assert!(matches!(outcomes[5], Recorded::Refused(_)));
        let state = |job| {
            let store = store.clone();
            async move { store.job(&job).await.unwrap().unwrap() }
        };
        let (ra, rb, rc) = (state(a).await, state(b).await, state(c).await);
        assert_eq!((ra.state, ra.vmid, ra.started_at.is_some()), (JobState::Succeeded, Some(101), true));
        assert_eq!(rb.state, JobState::Running);
        assert_eq!((rc.state, rc.error_kind.as_deref()), (JobState::Failed, Some("task")));
        assert_eq!(store.events(&b).await.unwrap().len(), 1, "an event seen twice is kept once");
        assert_eq!(kept(&store).await, recount(&store).await);
        // Recorded again (a redelivered batch): nothing changes.
        let again = store.record_events(&[&a1, &a2]).await.unwrap();
        assert_eq!(again, [Recorded::Seen, Recorded::Seen]);
        store.delete_job(&b).await.unwrap();
        assert_eq!(kept(&store).await, recount(&store).await);
        assert_eq!(recount(&store).await.iter().map(|c| c.3).sum::<i64>(), 2);
    }

    /// Processes that start together on a SQLite file not made yet (the recorder, serve and a
    /// CLI, say): each opens it, whoever makes the tables and turns on WAL, and none fails on
    /// the lock another holds meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stores_opened_side_by_side_on_a_new_sqlite_file_all_open() {
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let url = sqlite_url(&dir.path().join("store.db")).unwrap();
            let opening: Vec<_> = (0..6).map(|_| tokio::spawn(Store::open_owned(url.clone()))).collect();
            for o in opening {
                let store = o.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e:#}"));
                assert_eq!(store.job_total(None, None).await.unwrap(), 0);
            }
        }
    }

    /// Ten nodes' events recorded side by side (the recorder's tasks) while another process
    /// queues jobs in the same SQLite file: every batch is recorded, none fails on a lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_side_by_side_on_sqlite_never_fail_on_its_lock() {
        let (dir, store) = temp_store().await;
        let other = Store::open(&sqlite_url(&dir.path().join("store.db")).unwrap()).await.unwrap();
        let jobs: Vec<JobId> = (0..10).map(|_| JobId::new()).collect();
        for job in &jobs {
            queued(&store, *job).await;
        }
        let mut tasks = Vec::new();
        for job in jobs.clone() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 1..=40u64 {
                    let mut e = terminal(job, seq, true, 100);
                    e.kind = EventType::Log;
                    e.result = None;
                    store.record_events(&[&e]).await?;
                }
                anyhow::Ok(())
            }));
        }
        let queuing = tokio::spawn(async move {
            for _ in 0..40 {
                queued(&other, JobId::new()).await;
            }
        });
        for t in tasks {
            t.await.unwrap().expect("every batch recorded");
        }
        queuing.await.unwrap();
        for job in &jobs {
            assert_eq!(store.events(job).await.unwrap().len(), 40);
        }
        assert_eq!(kept(&store).await, recount(&store).await);
    }

    fn entry(node: &str, vmid: u32, marker: &str, seen: i64) -> pvefleet_schemas::InventoryEntry {
        pvefleet_schemas::InventoryEntry {
            v: pvefleet_schemas::V1,
            node: pvefleet_schemas::NodeName::new(node).unwrap(),
            vmid: pvefleet_schemas::Vmid::new(vmid).unwrap(),
            hostname: "web".into(),
            status: "running".into(),
            tags: vec![marker.into()],
            create_job: None,
            markers: vec![marker.into()],
            digest: "d".into(),
            memory_mb: None,
            cores: None,
            disk: None,
            ip: None,
            lock: None,
            last_job: None,
            applied_digest: None,
            last_seen: pvefleet_schemas::Timestamp(time::OffsetDateTime::from_unix_timestamp(seen).unwrap()),
        }
    }

    /// While a container moves, both nodes may list it for a moment: the store keeps one row,
    /// where it was seen last; once no node lists it, it is kept as gone.
    #[tokio::test]
    async fn the_inventory_is_kept_once_per_container_and_one_no_agent_lists_is_gone() {
        let (_dir, store) = temp_store().await;
        let moving = [entry("pve1", 100, "pvefleet-a", 10), entry("pve2", 100, "pvefleet-a", 20)];
        assert!(store.sync_containers(&moving).await.unwrap().is_empty());
        let rows = store.containers().await.unwrap();
        assert_eq!(rows.iter().map(|r| (r.node.as_str(), r.state.as_str())).collect::<Vec<_>>(), [("pve2", "present")]);
        // Nothing changed: nothing written (the same rows), and the store still takes writes.
        assert!(store.sync_containers(&moving[1..]).await.unwrap().is_empty());
        let went = store.sync_containers(&[]).await.unwrap();
        assert_eq!((went.len(), went[0].vmid, went[0].state.as_str()), (1, 100, "gone"));
        assert_eq!(store.containers().await.unwrap()[0].state, "gone");
        queued(&store, JobId::new()).await;
    }

    #[test]
    fn urls() {
        assert_eq!(database_url(Some("postgres://u@h/db")).unwrap(), "postgres://u@h/db");
        assert!(database_url(Some("/tmp/pvefleet-test-store/x.db")).unwrap().starts_with("sqlite:///tmp/"));
    }
}
