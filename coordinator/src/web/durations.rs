//! Job and step durations as histograms, kept between `/metrics` scrapes: each scrape adds only
//! the jobs finished since the last one, from the time this serve process started (as any
//! Prometheus histogram counts since its process started: `rate()` sees the restart), so that
//! neither a scrape nor the start reads the whole history of a store of 100,000 jobs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    step: String,
}

/// Seconds, for job and step durations: from tenths of a second to an hour.
const BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// How many finished jobs one read of the store brings: a bound on each query's work, and
/// what keeps Postgres on the index (see [`crate::store::Store::finished_after`]).
const PAGE: u64 = 500;

fn seconds_between(a: &str, b: &str) -> Option<f64> {
    let fmt = time::format_description::well_known::Rfc3339;
    let (a, b) = (time::OffsetDateTime::parse(a, &fmt).ok()?, time::OffsetDateTime::parse(b, &fmt).ok()?);
    Some((b - a).as_seconds_f64().max(0.0))
}

/// The duration histograms, kept up to date between scrapes: each scrape adds only the jobs
/// that finished since the last one (a finished job's durations never change), so a scrape
/// costs what is new, not every job the store has ever held.
#[derive(Debug)]
pub struct Durations {
    pub(super) jobs: Histogram,
    pub(super) steps: Family<StepLabels, Histogram>,
    /// The latest `finished_at` counted, and the jobs that finished at exactly that instant.
    since: Option<String>,
    at_since: std::collections::HashSet<String>,
}

impl Default for Durations {
    /// Histograms of the jobs that finish from now on.
    fn default() -> Self {
        // Written as the events' own timestamps are, so that the store compares like with like.
        let now = Some(pvefleet_schemas::Timestamp::now().to_string());
        Self {
            jobs: Histogram::new(BUCKETS),
            steps: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            since: now,
            at_since: Default::default(),
        }
    }
}

impl Durations {
    /// Adds the jobs finished since the last call, a page at a time.
    pub(super) async fn catch_up(&mut self, store: &crate::store::Store) -> anyhow::Result<()> {
        loop {
            // Those that finished at the last instant counted and were not counted (a page
            // may have ended between two of them), then the next page after it.
            let mut fresh = match &self.since {
                Some(since) => store.finished_at(since).await?,
                None => Vec::new(),
            };
            fresh.retain(|j| !self.at_since.contains(&j.job_id));
            self.at_since.extend(fresh.iter().map(|j| j.job_id.clone()));
            let page = store.finished_after(self.since.as_deref(), PAGE).await?;
            let full = page.len() as u64 == PAGE;
            if let Some(last) = page.last().and_then(|j| j.finished_at.clone()) {
                self.at_since =
                    page.iter().filter(|j| j.finished_at.as_ref() == Some(&last)).map(|j| j.job_id.clone()).collect();
                self.since = Some(last);
            }
            fresh.extend(page);
            self.observe(store, &fresh).await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Adds `fresh`'s job and step durations.
    async fn observe(&mut self, store: &crate::store::Store, fresh: &[crate::store::Finished]) -> anyhow::Result<()> {
        for j in fresh {
            if let (Some(start), Some(end)) = (&j.started_at, &j.finished_at)
                && let Some(s) = seconds_between(start, end)
            {
                self.jobs.observe(s);
            }
        }
        let ids: Vec<String> = fresh.iter().map(|j| j.job_id.clone()).collect();
        // A step lasts from its `step` event to the next one (or the job's end).
        let marks = store.step_marks_of(&ids).await?;
        for pair in marks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.job_id == b.job_id
                && a.kind == "step"
                && let Some(s) = seconds_between(&a.timestamp, &b.timestamp)
            {
                self.steps.get_or_create(&StepLabels { step: a.step.clone().unwrap_or_default() }).observe(s);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait as _;

    use super::*;
    use crate::store::Store;

    /// The job histogram's count and sum, as a scrape reads them.
    fn count_sum(d: &Durations) -> (u64, f64) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "durations", d.jobs.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        (value("d_count").parse().unwrap(), value("d_sum").parse().unwrap())
    }

    /// Marks `jobs` started a second before `at` and finished at `at`, as the recorder would.
    async fn finish(store: &Store, jobs: &[pvefleet_schemas::Job], at: &str) {
        for job in jobs {
            store
                .db
                .execute_unprepared(&format!(
                    "UPDATE jobs SET state = 'succeeded', started_at = '2026-12-05T00:00:00.000Z', finished_at = '{at}' \
                     WHERE job_id = '{}'",
                    job.job_id
                ))
                .await
                .unwrap();
        }
    }

    /// Each finished job is counted once, however the pages fall: more than a page finishing
    /// at one instant (a page ends between them), more finishing later at the instant last
    /// counted (recorded after the scrape), and scrapes with nothing new.
    #[tokio::test]
    async fn every_finished_job_is_counted_once_across_pages_and_ties() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::store::sqlite_url(&dir.path().join("store.db")).unwrap()).await.unwrap();
        let node = pvefleet_schemas::NodeName::new("pve1").unwrap();
        let jobs: Vec<_> = (0..1_300)
            .map(|i| {
                pvefleet_schemas::Job::create(
                    node.clone(),
                    pvefleet_schemas::ContainerSpec::new(format!("web-{i}"), "local:vztmpl/x.tar.zst"),
                    pvefleet_schemas::DeploySpec::default(),
                )
            })
            .collect();
        store.insert_jobs(&jobs).await.unwrap();
        let t = |s: u32| format!("2026-12-05T00:00:{s:02}.000Z");
        // Before the histograms began: never counted.
        finish(&store, &jobs[..10], &t(1)).await;
        let mut d = Durations { since: Some(t(2)), ..Durations::default() };
        d.catch_up(&store).await.unwrap();
        assert_eq!(count_sum(&d).0, 0);
        // 700 at one instant, one later, 400 at a third.
        finish(&store, &jobs[10..710], &t(3)).await;
        finish(&store, &jobs[710..711], &t(4)).await;
        finish(&store, &jobs[711..1_111], &t(5)).await;
        d.catch_up(&store).await.unwrap();
        assert_eq!(count_sum(&d).0, 1_101);
        d.catch_up(&store).await.unwrap();
        assert_eq!(count_sum(&d).0, 1_101, "nothing new, nothing added");
        // Recorded after that scrape: 150 more at the last instant counted, 39 later.
        finish(&store, &jobs[1_111..1_261], &t(5)).await;
        finish(&store, &jobs[1_261..], &t(6)).await;
        d.catch_up(&store).await.unwrap();
        assert_eq!(count_sum(&d).0, 1_290);
        d.catch_up(&store).await.unwrap();
        assert_eq!(count_sum(&d).0, 1_290);
        assert_eq!(count_sum(&d).1, 700.0 * 3.0 + 4.0 + 550.0 * 5.0 + 39.0 * 6.0, "each job's own duration");
    }
}
