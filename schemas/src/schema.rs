//! JSON Schemas of the job and event messages, generated from the types so they cannot drift;
//! a test fails when the checked-in copies under `schemas/json-schema/` are stale.

use crate::{
    BackupJob, DestroyJob, Event, InventoryEntry, Job, MoveJob, PowerJob, ResizeJob, RestoreJob, RollbackJob,
    SnapshotJob, UpdateJob,
};

/// The JSON Schema of a job message, pretty-printed with a trailing newline.
pub fn job_schema() -> String {
    pretty(schemars::schema_for!(Job))
}

/// The JSON Schema of a destroy job message.
pub fn destroy_job_schema() -> String {
    pretty(schemars::schema_for!(DestroyJob))
}

/// The JSON Schemas of the day-two job messages, and of an inventory entry, by file name.
pub fn day_two_schemas() -> [(&'static str, String); 9] {
    [
        ("update-job.json", pretty(schemars::schema_for!(UpdateJob))),
        ("resize-job.json", pretty(schemars::schema_for!(ResizeJob))),
        ("power-job.json", pretty(schemars::schema_for!(PowerJob))),
        ("snapshot-job.json", pretty(schemars::schema_for!(SnapshotJob))),
        ("rollback-job.json", pretty(schemars::schema_for!(RollbackJob))),
        ("backup-job.json", pretty(schemars::schema_for!(BackupJob))),
        ("restore-job.json", pretty(schemars::schema_for!(RestoreJob))),
        ("move-job.json", pretty(schemars::schema_for!(MoveJob))),
        ("inventory-entry.json", pretty(schemars::schema_for!(InventoryEntry))),
    ]
}

/// The JSON Schema of an event message, pretty-printed with a trailing newline.
pub fn event_schema() -> String {
    pretty(schemars::schema_for!(Event))
}

fn pretty(schema: schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    s.push('\n');
    s
}
