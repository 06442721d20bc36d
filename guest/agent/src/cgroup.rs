//! Reading container cgroup statistics (cgroup v2 in the guest; v1/hybrid on older hosts).

use std::path::{Path, PathBuf};

/// Cgroup path (relative to the hierarchy root) the agent gives each container.
pub fn relative_path(container_id: &str) -> String {
    format!("/coffer/{container_id}")
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether the unified (v2) hierarchy is mounted at `/sys/fs/cgroup`.
pub fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// `"v2"` or `"v1"`.
pub fn version() -> &'static str {
    if is_v2() { "v2" } else { "v1" }
}

/// Resource usage of one container.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes.
    pub memory_usage_bytes: u64,
    /// Memory limit, bytes (0 = unlimited).
    pub memory_limit_bytes: u64,
    /// Number of processes.
    pub pids_current: u64,
    /// OOM kills so far.
    pub oom_kills: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return Some(0);
    }
    text.parse().ok()
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn v1(subsystem: &str, container_id: &str, file: &str) -> PathBuf {
    Path::new(CGROUP_ROOT)
        .join(subsystem)
        .join(relative_path(container_id).trim_start_matches('/'))
        .join(file)
}

fn v2(container_id: &str, file: &str) -> PathBuf {
    Path::new(CGROUP_ROOT)
        .join(relative_path(container_id).trim_start_matches('/'))
        .join(file)
}

/// Reads the statistics of `container_id`; missing files read as zero.
pub fn stats(container_id: &str) -> Stats {
    if is_v2() {
        Stats {
            cpu_usage_ns: read_key(&v2(container_id, "cpu.stat"), "usage_usec")
                .unwrap_or(0)
                .saturating_mul(1000),
            memory_usage_bytes: read_u64(&v2(container_id, "memory.current")).unwrap_or(0),
            memory_limit_bytes: read_u64(&v2(container_id, "memory.max")).unwrap_or(0),
            pids_current: read_u64(&v2(container_id, "pids.current")).unwrap_or(0),
            oom_kills: oom_kills(container_id).unwrap_or(0),
        }
    } else {
        let limit = read_u64(&v1("memory", container_id, "memory.limit_in_bytes")).unwrap_or(0);
        Stats {
            cpu_usage_ns: read_u64(&v1("cpuacct", container_id, "cpuacct.usage")).unwrap_or(0),
            memory_usage_bytes: read_u64(&v1("memory", container_id, "memory.usage_in_bytes"))
                .unwrap_or(0),
            // v1 reports "unlimited" as a huge page-rounded number.
            memory_limit_bytes: if limit >= i64::MAX as u64 / 2 {
                0
            } else {
                limit
            },
            pids_current: read_u64(&v1("pids", container_id, "pids.current")).unwrap_or(0),
            oom_kills: oom_kills(container_id).unwrap_or(0),
        }
    }
}

/// The container's OOM-kill counter, if its cgroup exists.
pub fn oom_kills(container_id: &str) -> Option<u64> {
    if is_v2() {
        read_key(&v2(container_id, "memory.events"), "oom_kill")
    } else {
        read_key(
            &v1("memory", container_id, "memory.oom_control"),
            "oom_kill",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_keyed_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(read_key(&f, "oom_kill"), Some(2));
        assert_eq!(read_key(&f, "oom"), Some(2));
        assert_eq!(read_key(&f, "absent"), None);
        let m = dir.path().join("memory.max");
        std::fs::write(&m, "max\n").unwrap();
        assert_eq!(read_u64(&m), Some(0));
    }
}
