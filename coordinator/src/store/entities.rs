//! The store's tables as sea-orm entities, one module each. A job's state and kind are enums:
//! a mistyped value in a row is a decode error, never a state.

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
        #[sea_orm(string_value = "update")]
        Update,
        #[sea_orm(string_value = "resize")]
        Resize,
        #[sea_orm(string_value = "power")]
        Power,
        #[sea_orm(string_value = "snapshot")]
        Snapshot,
        #[sea_orm(string_value = "rollback")]
        Rollback,
        #[sea_orm(string_value = "backup")]
        Backup,
        #[sea_orm(string_value = "restore")]
        Restore,
        #[sea_orm(string_value = "move")]
        Move,
    }

    impl From<pvefleet_schemas::JobMessageKind> for JobKind {
        fn from(kind: pvefleet_schemas::JobMessageKind) -> Self {
            use pvefleet_schemas::JobMessageKind as Wire;
            match kind {
                Wire::Create => JobKind::Create,
                Wire::Destroy => JobKind::Destroy,
                Wire::Update => JobKind::Update,
                Wire::Resize => JobKind::Resize,
                Wire::Power => JobKind::Power,
                Wire::Snapshot => JobKind::Snapshot,
                Wire::Rollback => JobKind::Rollback,
                Wire::Backup => JobKind::Backup,
                Wire::Restore => JobKind::Restore,
                Wire::Move => JobKind::Move,
            }
        }
    }

    impl JobKind {
        /// Whether it is a day-two kind (a job on a container pvefleet made, or a restore).
        pub fn is_day_two(self) -> bool {
            !matches!(self, JobKind::Create | JobKind::Destroy)
        }

        /// Whether a job of this kind makes a container (its marker is the job's).
        pub fn makes_containers(self) -> bool {
            matches!(self, JobKind::Create | JobKind::Restore)
        }
    }

    impl std::fmt::Display for JobKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                JobKind::Create => "create",
                JobKind::Destroy => "destroy",
                JobKind::Update => "update",
                JobKind::Resize => "resize",
                JobKind::Power => "power",
                JobKind::Snapshot => "snapshot",
                JobKind::Rollback => "rollback",
                JobKind::Backup => "backup",
                JobKind::Restore => "restore",
                JobKind::Move => "move",
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
        /// For a destroy or day-two job: the create job whose container it acts on, if named by one.
        pub target_job: Option<String>,
        /// For a create job: the destroy job that removed its container.
        pub destroyed_by: Option<String>,
        /// The failed job this one tries again (`pvefleet retry`).
        pub retry_of: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl ActiveModel {
        /// A job's row as it is recorded before its publish: queued, nothing known of its run
        /// yet; the caller sets what its kind adds (spec, request, target).
        pub fn queued(
            kind: JobKind,
            job_id: pvefleet_schemas::JobId,
            node: &pvefleet_schemas::NodeName,
            hostname: &str,
        ) -> Self {
            use sea_orm::Set;
            Self {
                job_id: Set(job_id.to_string()),
                node: Set(node.to_string()),
                state: Set(JobState::Queued),
                hostname: Set(hostname.to_owned()),
                spec: Set(String::new()),
                template: Set(None),
                request_id: Set(None),
                vmid: Set(None),
                ip: Set(None),
                error_kind: Set(None),
                error_message: Set(None),
                submitted_at: Set(String::new()),
                started_at: Set(None),
                finished_at: Set(None),
                stream_seq: Set(None),
                kind: Set(kind),
                target_job: Set(None),
                destroyed_by: Set(None),
                retry_of: Set(None),
            }
        }
    }
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

pub mod audit {
    use sea_orm::entity::prelude::*;

    /// One audit record (`PVEFLEET_AUDIT`), by its stream sequence.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub at: String,
        pub node: Option<String>,
        pub action: String,
        pub job_id: Option<String>,
        pub signer: Option<String>,
        pub signer_name: Option<String>,
        /// The person the signer acted for (a web view user).
        pub user_name: Option<String>,
        pub decision: String,
        pub rule: Option<String>,
        #[sea_orm(column_type = "Text")]
        pub message: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod container {
    use sea_orm::entity::prelude::*;

    /// A container pvefleet made, as the recorder last read it from the agents' inventory: one
    /// row per vmid and marker (a vmid a later container reuses is another row), kept after
    /// the container is gone (`state` `gone`) so the store says what became of it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "containers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub vmid: i64,
        /// Its pvefleet marker tag (the first, if it has several).
        #[sea_orm(primary_key, auto_increment = false)]
        pub marker: String,
        pub node: String,
        pub hostname: String,
        /// `present` while an agent lists it, `gone` once none does.
        pub state: String,
        /// PVE's status when last seen (`running`, `stopped`).
        pub status: String,
        pub ip: Option<String>,
        pub create_job: Option<String>,
        pub last_job: Option<String>,
        /// Changed outside pvefleet since its last job.
        pub drift: bool,
        pub seen_at: String,
        pub gone_at: Option<String>,
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

pub mod user {
    use sea_orm::entity::prelude::*;

    /// A web view login: its role, its argon2id password hash (PHC string), and its lockout.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub role: String,
        pub password_hash: String,
        pub disabled: bool,
        /// Wrong passwords in a row since the last good one.
        pub failed_logins: i32,
        /// No login until then (RFC 3339), after too many wrong passwords.
        pub locked_until: Option<String>,
        pub created_at: String,
        pub updated_at: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod session {
    use sea_orm::entity::prelude::*;

    /// A web view session, found by the SHA-256 (hex) of its cookie.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        pub user_name: String,
        /// The token every form of this session carries.
        pub csrf: String,
        pub created_at: String,
        pub expires_at: String,
        pub revoked_at: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod job_count {
    use sea_orm::entity::prelude::*;

    /// How many jobs are in one (state, node, kind), kept with every change of a job.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "job_counts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub state: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub node: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub kind: String,
        pub n: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
