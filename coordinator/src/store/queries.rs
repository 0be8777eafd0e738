//! What the verbs, the recorder and the web view ask of the store.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait};

use pvefleet_schemas::{Event, EventType, Job, JobId};

use super::{JobKind, JobState, Recorded, Store, audit, container, event, job, job_count, node_key, template};

/// A finished job's times, as `/metrics` reads them.
#[derive(Debug, Clone)]
pub struct Finished {
    pub job_id: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

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

impl Store {
    /// Keeps one audit record, by its stream sequence; kept before, it changes nothing.
    pub async fn record_audit(&self, seq: u64, r: &pvefleet_schemas::trust::AuditRecord) -> anyhow::Result<()> {
        let row = audit::ActiveModel {
            seq: Set(seq as i64),
            at: Set(r.at.to_string()),
            node: Set(r.node.as_ref().map(|n| n.to_string())),
            action: Set(r.action.clone()),
            job_id: Set(r.job_id.map(|j| j.to_string())),
            signer: Set(r.signer.clone()),
            signer_name: Set(r.signer_name.clone()),
            user_name: Set(r.user.clone()),
            decision: Set(enum_text(&r.decision)),
            rule: Set(r.rule.clone()),
            message: Set(r.message.clone()),
        };
        audit::Entity::insert(row)
            .on_conflict(OnConflict::column(audit::Column::Seq).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The latest `limit` audit records, newest first.
    pub async fn audit(&self, limit: u64) -> anyhow::Result<Vec<audit::Model>> {
        use sea_orm::QuerySelect as _;
        Ok(audit::Entity::find().order_by_desc(audit::Column::Seq).limit(limit).all(&self.db).await?)
    }

    /// Every container the store knows, present first, then by node and vmid.
    pub async fn containers(&self) -> anyhow::Result<Vec<container::Model>> {
        Ok(container::Entity::find()
            .order_by_desc(container::Column::State)
            .order_by_asc(container::Column::Node)
            .order_by_asc(container::Column::Vmid)
            .all(&self.db)
            .await?)
    }

    /// The inventory as read now: each entry's row written (present) when it changed, and
    /// every row present before but not in it marked gone. Returns the rows that went.
    /// Unchanged rows are not written: the recorder reads the inventory every few seconds.
    pub async fn sync_containers(
        &self,
        entries: &[pvefleet_schemas::InventoryEntry],
    ) -> anyhow::Result<Vec<container::Model>> {
        let now = pvefleet_schemas::Timestamp::now().to_string();
        let known: std::collections::BTreeMap<(i64, String), container::Model> = container::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| ((row.vmid, row.marker.clone()), row))
            .collect();
        // While a container moves, its old node's key and its new one's may both be there for
        // a moment: the one seen last is where it is.
        let mut latest: std::collections::BTreeMap<(i64, String), &pvefleet_schemas::InventoryEntry> =
            std::collections::BTreeMap::new();
        for e in entries {
            let Some(marker) = e.markers.first() else { continue };
            let key = (i64::from(e.vmid.get()), marker.clone());
            if latest.get(&key).is_none_or(|seen| seen.last_seen.0 <= e.last_seen.0) {
                latest.insert(key, e);
            }
        }
        let mut listed = std::collections::BTreeSet::new();
        let mut writes = Vec::new();
        for (key, e) in latest {
            let marker = &key.1;
            let row = container::Model {
                vmid: key.0,
                marker: marker.clone(),
                node: e.node.to_string(),
                hostname: e.hostname.clone(),
                state: "present".into(),
                status: e.status.clone(),
                ip: e.ip.clone(),
                create_job: e.create_job.map(|j| j.to_string()),
                last_job: e.last_job.map(|j| j.to_string()),
                drift: e.drifted(),
                seen_at: now.clone(),
                gone_at: None,
            };
            let same = known.get(&key).is_some_and(|k| container::Model { seen_at: now.clone(), ..k.clone() } == row);
            if !same {
                writes.push((known.contains_key(&key), row));
            }
            listed.insert(key);
        }
        let went: Vec<container::Model> = known
            .iter()
            .filter(|(key, row)| row.state == "present" && !listed.contains(key))
            .map(|(_, row)| container::Model { state: "gone".into(), gone_at: Some(now.clone()), ..row.clone() })
            .collect();
        if writes.is_empty() && went.is_empty() {
            return Ok(went);
        }
        let _one = self.one_writer().await;
        let tx = self.db.begin().await?;
        let written = async {
            for (exists, row) in writes {
                let model: container::ActiveModel = row.into();
                if exists {
                    let mut model = model.reset_all();
                    model.vmid = sea_orm::ActiveValue::Unchanged(model.vmid.take().expect("set"));
                    model.marker = sea_orm::ActiveValue::Unchanged(model.marker.take().expect("set"));
                    model.update(&tx).await?;
                } else {
                    container::Entity::insert(model).exec_without_returning(&tx).await?;
                }
            }
            for row in &went {
                let mut gone: container::ActiveModel = row.clone().into();
                gone.state = Set("gone".into());
                gone.gone_at = Set(row.gone_at.clone());
                gone.update(&tx).await?;
            }
            anyhow::Ok(())
        }
        .await;
        // Rolled back at once on a failure: a transaction left to its drop can hold SQLite's
        // write lock from everyone else until the connection is reused.
        match written {
            Ok(()) => tx.commit().await?,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        }
        Ok(went)
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
        let mut model = job::ActiveModel::queued(JobKind::Create, job.job_id, &job.node, &job.container.hostname);
        model.spec = Set(serde_json::to_string(&public)?);
        model.template = Set(job.template.clone());
        model.request_id = Set(request_id.map(str::to_owned));
        model.submitted_at = Set(job.submitted_at.to_string());
        self.reserve(model, request_id).await
    }

    /// Records many create jobs at once, in one transaction, with their counts: a fleet's worth
    /// of queued jobs (the coordinator benchmark fills its store of 100,000 jobs so). Jobs
    /// without a request id; all or nothing.
    pub async fn insert_jobs(&self, jobs: &[Job]) -> anyhow::Result<()> {
        use std::collections::HashMap;
        let tx = self.db.begin().await?;
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for chunk in jobs.chunks(500) {
            let mut rows = Vec::with_capacity(chunk.len());
            for job in chunk {
                let mut model =
                    job::ActiveModel::queued(JobKind::Create, job.job_id, &job.node, &job.container.hostname);
                model.spec = Set(serde_json::to_string(&job.public())?);
                model.template = Set(job.template.clone());
                model.submitted_at = Set(job.submitted_at.to_string());
                rows.push(model);
                *counts.entry(job.node.as_str()).or_default() += 1;
            }
            job::Entity::insert_many(rows).exec_without_returning(&tx).await?;
        }
        for (node, n) in counts {
            count(&tx, JobState::Queued, node, JobKind::Create, n).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a destroy job about to be published, under `hostname` (its target's, if known).
    pub async fn insert_destroy_job(
        &self,
        job: &pvefleet_schemas::DestroyJob,
        hostname: &str,
        request_id: Option<&str>,
    ) -> anyhow::Result<Result<(), job::Model>> {
        let mut model = job::ActiveModel::queued(JobKind::Destroy, job.job_id, &job.node, hostname);
        model.spec = Set(serde_json::to_string(job)?);
        model.request_id = Set(request_id.map(str::to_owned));
        model.vmid = Set(job.target.vmid.map(|v| i64::from(v.get())));
        model.submitted_at = Set(job.submitted_at.to_string());
        model.target_job = Set(job.target.create_job.map(|j| j.to_string()));
        self.reserve(model, request_id).await
    }

    /// Records a day-two job (update, resize, power) about to be published, under its target's
    /// hostname.
    pub async fn insert_day_two_job(
        &self,
        job: &pvefleet_schemas::DayTwoJob,
        request_id: Option<&str>,
    ) -> anyhow::Result<Result<(), job::Model>> {
        let kind = JobKind::from(job.kind());
        anyhow::ensure!(kind.is_day_two(), "a {kind} job is not a day-two job");
        let target = job.target();
        let hostname = match (target, job) {
            (Some(t), _) => t.hostname.clone().unwrap_or_else(|| format!("vmid {}", t.vmid)),
            (None, pvefleet_schemas::DayTwoJob::Restore(r)) => {
                r.hostname.clone().unwrap_or_else(|| format!("restore of {}", r.backup))
            }
            (None, _) => "?".to_owned(),
        };
        let mut model = job::ActiveModel::queued(kind, job.job_id(), job.node(), &hostname);
        model.spec = Set(String::from_utf8(job.encode())?);
        model.request_id = Set(request_id.map(str::to_owned));
        model.vmid = Set(job.vmid().map(|v| i64::from(v.get())));
        model.submitted_at = Set(job.submitted_at().to_string());
        model.target_job = Set(target.and_then(|t| t.create_job).map(|j| j.to_string()));
        self.reserve(model, request_id).await
    }

    /// Notes that job `id` tries again the failed job `of`.
    pub async fn set_retry_of(&self, id: &JobId, of: &str) -> anyhow::Result<()> {
        job::Entity::update_many()
            .col_expr(job::Column::RetryOf, sea_orm::sea_query::Expr::value(of.to_owned()))
            .filter(job::Column::JobId.eq(id.to_string()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Inserts a job's row (and counts it); with a request id already taken, answers with the
    /// job that has it.
    async fn reserve(
        &self,
        model: job::ActiveModel,
        request_id: Option<&str>,
    ) -> anyhow::Result<Result<(), job::Model>> {
        let (node, kind) = (model.node.as_ref().clone(), *model.kind.as_ref());
        let tx = self.db.begin().await?;
        let inserted = match job::Entity::insert(model).exec_without_returning(&tx).await {
            Ok(_) => count(&tx, JobState::Queued, &node, kind, 1).await,
            Err(e) => Err(e),
        };
        match inserted {
            Ok(()) => {
                tx.commit().await?;
                Ok(Ok(()))
            }
            Err(e) => {
                tx.rollback().await?;
                match request_id {
                    Some(key) => match self.job_by_request(key).await? {
                        Some(existing) => Ok(Err(existing)),
                        None => Err(e.into()),
                    },
                    None => Err(e.into()),
                }
            }
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
        let tx = self.db.begin().await?;
        if let Some(row) = job::Entity::find_by_id(id.to_string()).one(&tx).await? {
            job::Entity::delete_by_id(id.to_string()).exec(&tx).await?;
            count(&tx, row.state, &row.node, row.kind, -1).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` jobs (every one when 0), filtered by node and state, oldest first.
    pub async fn jobs(
        &self,
        node: Option<&str>,
        state: Option<JobState>,
        limit: u64,
    ) -> anyhow::Result<Vec<job::Model>> {
        use sea_orm::QuerySelect as _;
        let mut q = job::Entity::find().order_by_desc(job::Column::JobId);
        if let Some(node) = node {
            q = q.filter(job::Column::Node.eq(node));
        }
        if let Some(state) = state {
            q = q.filter(job::Column::State.eq(state));
        }
        if limit > 0 {
            q = q.limit(limit);
        }
        let mut jobs = q.all(&self.db).await?;
        jobs.reverse();
        Ok(jobs)
    }

    /// The newest create job on `node` that made container `vmid` and no destroy job removed.
    pub async fn creator_of(&self, node: &str, vmid: pvefleet_schemas::Vmid) -> anyhow::Result<Option<job::Model>> {
        Ok(job::Entity::find()
            .filter(job::Column::Node.eq(node))
            .filter(job::Column::Kind.eq(JobKind::Create))
            .filter(job::Column::Vmid.eq(i64::from(vmid.get())))
            .filter(job::Column::State.ne(JobState::Destroyed))
            .order_by_desc(job::Column::JobId)
            .one(&self.db)
            .await?)
    }

    /// How many jobs there are on `node` in `state` (either or both unset: every one), from the
    /// kept counts.
    pub async fn job_total(&self, node: Option<&str>, state: Option<&str>) -> anyhow::Result<u64> {
        let mut q = job_count::Entity::find();
        if let Some(node) = node {
            q = q.filter(job_count::Column::Node.eq(node));
        }
        if let Some(state) = state {
            q = q.filter(job_count::Column::State.eq(state));
        }
        Ok(q.all(&self.db).await?.iter().map(|c| c.n.max(0) as u64).sum())
    }

    /// The nodes any job was ever queued for.
    pub async fn job_nodes(&self) -> anyhow::Result<Vec<String>> {
        let mut nodes: Vec<String> =
            job_count::Entity::find().all(&self.db).await?.into_iter().map(|c| c.node).collect();
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
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
        // Without a hostname part the kept counts say how many match; a part of a hostname is
        // counted by the database.
        let total = match hostname {
            None => self.job_total(node, state).await?,
            Some(_) => pages.num_items().await?,
        };
        // Past the last page is the last page (and no offset that overflows).
        let page = page.min(total.div_ceil(per_page.max(1)).saturating_sub(1));
        Ok((pages.fetch_page(page).await?, total))
    }

    /// Jobs by (state, node, kind): what `/metrics` shows, from the counts kept with every
    /// change of a job (not counted at each scrape).
    pub async fn job_counts(&self) -> anyhow::Result<Vec<(String, String, String, i64)>> {
        Ok(job_count::Entity::find().all(&self.db).await?.into_iter().map(|c| (c.state, c.node, c.kind, c.n)).collect())
    }

    /// The first `limit` jobs that finished after `after` (of every finished one without it),
    /// oldest end first: a page of what `/metrics` adds to its histograms since its last
    /// scrape. The LIMIT is what keeps Postgres on the `jobs_finished_at` index whatever its
    /// statistics say: a store not yet analyzed since a burst of jobs (the table's first
    /// 100,000 rows, say) guesses a third of the table matches `>`, and without a limit chose a
    /// parallel scan of every row and a sort (35–150 ms a scrape, measured) where the index
    /// answers in 0.05 ms; with one, the index scan's first row costs nothing, a scan's its
    /// whole table.
    pub async fn finished_after(&self, after: Option<&str>, limit: u64) -> anyhow::Result<Vec<Finished>> {
        use sea_orm::QuerySelect as _;
        let mut q = job::Entity::find().filter(job::Column::FinishedAt.is_not_null());
        if let Some(after) = after {
            q = q.filter(job::Column::FinishedAt.gt(after));
        }
        self.finished(q.order_by_asc(job::Column::FinishedAt).limit(limit)).await
    }

    /// The jobs that finished at exactly `at` (a page of [`Store::finished_after`] may end
    /// between two of them).
    pub async fn finished_at(&self, at: &str) -> anyhow::Result<Vec<Finished>> {
        self.finished(job::Entity::find().filter(job::Column::FinishedAt.eq(at))).await
    }

    async fn finished(&self, q: sea_orm::Select<job::Entity>) -> anyhow::Result<Vec<Finished>> {
        use sea_orm::QuerySelect as _;
        let rows: Vec<(String, Option<String>, Option<String>)> = q
            .select_only()
            .column(job::Column::JobId)
            .column(job::Column::StartedAt)
            .column(job::Column::FinishedAt)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(job_id, started_at, finished_at)| Finished { job_id, started_at, finished_at })
            .collect())
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
        Ok(self.record_events(&[e]).await?.pop().expect("one outcome per event"))
    }

    /// Records a batch of events in one transaction, in order, each as [`Self::record_event`]
    /// would: each job's row is read once and written once for the batch, and the job counts
    /// move with its state. All or nothing: on an error none of them is recorded.
    pub async fn record_events(&self, events: &[&Event]) -> anyhow::Result<Vec<Recorded>> {
        let _one = self.one_writer().await;
        let mut tries = 0u32;
        loop {
            let tx = self.db.begin().await?;
            let outcome = match record_in(&tx, events).await {
                Ok(outcomes) => tx.commit().await.map(|()| outcomes).map_err(anyhow::Error::from),
                Err(e) => {
                    tx.rollback().await?;
                    Err(e)
                }
            };
            match outcome {
                // SQLite: another process wrote since this transaction's first read (a submit
                // while the recorder records); its work is undone, so try it again.
                Err(e) if super::is_busy(&e) && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(tries))).await;
                }
                other => return other,
            }
        }
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

/// Adds `delta` to the count of jobs in (`state`, `node`, `kind`), in the caller's transaction.
async fn count(
    db: &impl sea_orm::ConnectionTrait,
    state: JobState,
    node: &str,
    kind: JobKind,
    delta: i64,
) -> Result<(), sea_orm::DbErr> {
    count_as(db, state.as_str(), node, &kind.to_string(), delta).await
}

/// [`count`] with the state and kind as stored.
async fn count_as(
    db: &impl sea_orm::ConnectionTrait,
    state: &str,
    node: &str,
    kind: &str,
    delta: i64,
) -> Result<(), sea_orm::DbErr> {
    use sea_orm::sea_query::Expr;
    let row = job_count::ActiveModel {
        state: Set(state.to_owned()),
        node: Set(node.to_owned()),
        kind: Set(kind.to_owned()),
        n: Set(delta),
    };
    job_count::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([job_count::Column::State, job_count::Column::Node, job_count::Column::Kind])
                .value(
                    job_count::Column::N,
                    Expr::col((job_count::Entity, job_count::Column::N)).add(Expr::cust("excluded.n")),
                )
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// [`Store::record_events`] inside its transaction.
async fn record_in(tx: &sea_orm::DatabaseTransaction, events: &[&Event]) -> anyhow::Result<Vec<Recorded>> {
    use std::collections::HashMap;
    let mut ids: Vec<String> = events.iter().map(|e| e.job_id.to_string()).collect();
    ids.sort();
    ids.dedup();
    // Each job as the batch found it, and as the batch leaves it.
    let mut before: HashMap<String, job::Model> = HashMap::new();
    for chunk in ids.chunks(500) {
        for row in job::Entity::find().filter(job::Column::JobId.is_in(chunk.iter().cloned())).all(tx).await? {
            before.insert(row.job_id.clone(), row);
        }
    }
    let mut after = before.clone();
    // What the batch moves between (state, node, kind): written once each at its end, in
    // order, so two writers of one node's counts take their rows in the same order.
    let mut counts: std::collections::BTreeMap<(&'static str, String, String), i64> = Default::default();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut destroyed: Vec<(String, String, String)> = Vec::new();
    for e in events {
        let id = e.job_id.to_string();
        let Some(known) = after.get_mut(&id) else {
            // A job no coordinator of this store queued: an agent's user may publish anything
            // on its own node's subjects, made-up jobs included. Coordinators that should see
            // each other's jobs share one store (Postgres).
            outcomes.push(Recorded::Refused(format!("job {} was never queued through this store", e.job_id)));
            continue;
        };
        if known.node != e.node.as_str() {
            outcomes
                .push(Recorded::Refused(format!("job {} runs on {}, the event says {}", e.job_id, known.node, e.node)));
            continue;
        }
        let row = event::ActiveModel {
            id: sea_orm::NotSet,
            job_id: Set(id.clone()),
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
            .exec_without_returning(tx)
            .await?;
        if inserted == 0 {
            outcomes.push(Recorded::Seen);
            continue;
        }
        let next = state_after(e);
        let finished = !known.state.is_live();
        if next.rank() > known.state.rank() {
            known.state = next;
        }
        if known.started_at.is_none() && e.kind != EventType::Error {
            known.started_at = Some(e.timestamp.to_string());
        }
        // The first terminal event is the job's end; a later one (a forgery, a second writer)
        // changes nothing.
        if let Some(result) = e.result.as_ref().filter(|_| !finished) {
            known.vmid = result.vmid.map(|v| i64::from(v.get()));
            known.ip = result.ip.map(|ip| ip.to_string());
            if let Some(err) = &result.error {
                known.error_kind = Some(enum_text(&err.kind));
                known.error_message = Some(e.message.clone());
            }
            known.finished_at = Some(e.timestamp.to_string());
        }
        // A destroy job that succeeded: the create job it names no longer has a container.
        if known.kind == JobKind::Destroy
            && !finished
            && e.kind == EventType::Complete
            && let Some(target) = &known.target_job
        {
            destroyed.push((target.clone(), known.node.clone(), known.job_id.clone()));
        }
        outcomes.push(Recorded::New);
    }
    for (id, now) in &after {
        let was = &before[id];
        if now == was {
            continue;
        }
        use sea_orm::sea_query::Expr;
        job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(now.state.as_str()))
            .col_expr(job::Column::StartedAt, Expr::value(now.started_at.clone()))
            .col_expr(job::Column::Vmid, Expr::value(now.vmid))
            .col_expr(job::Column::Ip, Expr::value(now.ip.clone()))
            .col_expr(job::Column::ErrorKind, Expr::value(now.error_kind.clone()))
            .col_expr(job::Column::ErrorMessage, Expr::value(now.error_message.clone()))
            .col_expr(job::Column::FinishedAt, Expr::value(now.finished_at.clone()))
            .filter(job::Column::JobId.eq(id.clone()))
            .exec(tx)
            .await?;
        if now.state != was.state {
            *counts.entry((was.state.as_str(), was.node.clone(), was.kind.to_string())).or_default() -= 1;
            *counts.entry((now.state.as_str(), now.node.clone(), now.kind.to_string())).or_default() += 1;
        }
    }
    for (target, node, by) in destroyed {
        let Some(row) = job::Entity::find_by_id(target.clone()).one(tx).await? else { continue };
        if row.node != node {
            continue;
        }
        use sea_orm::sea_query::Expr;
        job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Destroyed.as_str()))
            .col_expr(job::Column::DestroyedBy, Expr::value(by))
            .filter(job::Column::JobId.eq(target))
            .exec(tx)
            .await?;
        if row.state != JobState::Destroyed {
            *counts.entry((row.state.as_str(), row.node.clone(), row.kind.to_string())).or_default() -= 1;
            *counts.entry((JobState::Destroyed.as_str(), row.node.clone(), row.kind.to_string())).or_default() += 1;
        }
    }
    for ((state, node, kind), delta) in counts {
        if delta != 0 {
            count_as(tx, state, &node, &kind, delta).await?;
        }
    }
    Ok(outcomes)
}
