//! One file per verb.

pub mod cancel;
pub mod day_two;
pub mod destroy;
pub mod identity;
pub mod jobs;
pub mod keeping;
pub mod ls;
pub mod nodes;
pub mod plan;
pub mod record;
pub mod retry;
pub mod setup;
pub mod submit;
pub mod template;
pub mod trust;
pub mod users;
pub mod watch;
