//! The largest value every duration, count and size in a job may take, in one place. They are
//! checked at validating (by the coordinator before it publishes, and by the agent before it
//! runs anything), so no message can ask an agent for a deadline that overflows its clock, a
//! wait without end, or more work than fits in a message. Each bound is generous for real
//! use; an error names the field and its bound.

use std::time::Duration;

use crate::validate::Problems;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// One Proxmox task (create, clone, download, start, stop, destroy).
pub const TASK: Duration = Duration::from_secs(24 * 3600);
/// Waiting for a container's address.
pub const IP: Duration = HOUR;
/// Connecting over SSH, retries included.
pub const SSH: Duration = HOUR;
/// One deploy script (or the package install).
pub const SCRIPT: Duration = Duration::from_secs(24 * 3600);
/// A destroy's clean shutdown before the hard stop.
pub const SHUTDOWN: Duration = HOUR;

/// Memory and swap, in MB (64 TiB).
pub const MEMORY_MB: u32 = 64 * 1024 * 1024;
/// A root disk or a mount point, in GB (128 TiB).
pub const DISK_GB: u32 = 128 * 1024;

pub const PACKAGES: usize = 500;
pub const FILES: usize = 500;
pub const SCRIPTS: usize = 100;
pub const TAGS: usize = 64;
pub const SSH_KEYS: usize = 64;
pub const NAMESERVERS: usize = 16;
pub const ENV_VARS: usize = 256;

/// A file's `content`, and a script's `body` (a job is one NATS message, 1 MiB by default).
pub const FILE_BYTES: usize = 1024 * 1024;
pub const SCRIPT_BYTES: usize = 256 * 1024;
/// PVE keeps at most 8 KiB of a guest's description.
pub const DESCRIPTION_BYTES: usize = 8 * 1024;
/// Any other text field: a package name, a path, an interpreter, an entrypoint, a URL.
pub const TEXT_BYTES: usize = 4096;

/// How a duration reads in an error (`24h`).
fn shown(d: Duration) -> String {
    if d >= HOUR && d.as_secs() % 3600 == 0 {
        format!("{}h", d.as_secs() / 3600)
    } else if d >= MINUTE && d.as_secs() % 60 == 0 {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs())
    }
}

impl Problems {
    /// A duration above zero and at most `max`.
    pub(crate) fn duration(&mut self, field: &str, d: Duration, max: Duration) {
        self.check(field, !d.is_zero(), || "must be longer than zero".into());
        self.check(field, d <= max, || {
            format!("{} is above the maximum of {}", humantime::format_duration(d), shown(max))
        });
    }

    /// At most `max` items.
    pub(crate) fn count(&mut self, field: &str, n: usize, max: usize) {
        self.check(field, n <= max, || format!("{n} items; at most {max} are allowed"));
    }

    /// A text of at most `max` bytes.
    pub(crate) fn bytes(&mut self, field: &str, text: &str, max: usize) {
        self.check(field, text.len() <= max, || format!("{} bytes; at most {max} are allowed", text.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_read_as_operators_write_them() {
        assert_eq!(shown(TASK), "24h");
        assert_eq!(shown(Duration::from_secs(90)), "90s");
        assert_eq!(shown(Duration::from_secs(120)), "2m");
        let mut p = Problems::default();
        p.duration("timeouts.task", Duration::from_secs(u64::MAX), TASK);
        p.duration("timeouts.ip", Duration::ZERO, IP);
        p.count("packages", 501, PACKAGES);
        p.bytes("body", &"x".repeat(SCRIPT_BYTES + 1), SCRIPT_BYTES);
        let e = p.finish().unwrap_err();
        let fields: Vec<&str> = e.fields().collect();
        assert_eq!(fields, ["timeouts.task", "timeouts.ip", "packages", "body"]);
        assert!(e.0[0].problem.ends_with("above the maximum of 24h"), "{}", e.0[0].problem);
    }
}
