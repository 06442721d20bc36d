//! Pod metrics for a node exporter: with `metrics_dir` set in the runtime configuration, each
//! pod's shim keeps `<metrics_dir>/coffer-<sandbox id>.prom` in the Prometheus text format that
//! node_exporter's textfile collector reads — the VM's boot time and, per container whose image
//! the guest pulled, the guest-measured phases of the pull (resolve, attestation, key release,
//! download, decrypt + verify + unpack, total). The file is replaced atomically on every change
//! and removed with the pod VM. Only durations and ids are written, never image content.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use coffer_agent_protocol::v1 as pb;

/// One pod's metrics file.
#[derive(Debug)]
pub struct PodMetrics {
    file: Option<PathBuf>,
    sandbox_id: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    boot: Option<Duration>,
    /// Per container id, in the order the pulls finished.
    pulls: Vec<(String, pb::PullTimings)>,
}

/// Label values are ids (`[A-Za-z0-9_.-]`, checked by containerd and the agent); anything else
/// is escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl PodMetrics {
    /// Metrics of pod `sandbox_id`, written under `dir` when given (otherwise kept nowhere).
    pub fn new(dir: Option<&Path>, sandbox_id: &str) -> Self {
        Self {
            file: dir.map(|d| d.join(format!("coffer-{sandbox_id}.prom"))),
            sandbox_id: sandbox_id.to_owned(),
            state: Mutex::new(State::default()),
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        let Some(file) = &self.file else {
            return;
        };
        let text = self.render(&state);
        drop(state);
        if let Err(err) = write_atomically(file, text.as_bytes()) {
            tracing::warn!(file = %file.display(), %err, "writing pod metrics");
        }
    }

    /// The pod VM booted (launch to agent ready) in `took`.
    pub fn booted(&self, took: Duration) {
        self.update(|s| s.boot = Some(took));
    }

    /// The guest pulled container `container_id`'s image with these phase timings.
    pub fn pulled(&self, container_id: &str, timings: &pb::PullTimings) {
        self.update(|s| {
            s.pulls.retain(|(id, _)| id != container_id);
            s.pulls.push((container_id.to_owned(), *timings));
        });
    }

    /// Removes the file (the pod VM is gone).
    pub fn remove(&self) {
        if let Some(file) = &self.file
            && let Err(err) = std::fs::remove_file(file)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %file.display(), %err, "removing pod metrics");
        }
    }

    fn render(&self, state: &State) -> String {
        let sandbox = label(&self.sandbox_id);
        let mut out = String::new();
        if let Some(boot) = state.boot {
            out.push_str(
                "# HELP coffer_sandbox_boot_seconds Pod VM launch until its guest agent answered.\n\
                 # TYPE coffer_sandbox_boot_seconds gauge\n",
            );
            out.push_str(&format!(
                "coffer_sandbox_boot_seconds{{sandbox_id=\"{sandbox}\"}} {:.3}\n",
                boot.as_secs_f64()
            ));
        }
        if !state.pulls.is_empty() {
            out.push_str(
                "# HELP coffer_image_pull_phase_seconds Guest pull phases as the guest measured them \
                 (decrypt_verify_unpack streams alongside download).\n\
                 # TYPE coffer_image_pull_phase_seconds gauge\n",
            );
            for (container, t) in &state.pulls {
                let container = label(container);
                for (phase, ms) in [
                    ("resolve", t.resolve_ms),
                    ("attestation", t.attestation_ms),
                    ("key_release", t.key_release_ms),
                    ("download", t.download_ms),
                    ("decrypt_verify_unpack", t.unpack_ms),
                    ("total", t.total_ms),
                ] {
                    out.push_str(&format!(
                        "coffer_image_pull_phase_seconds{{sandbox_id=\"{sandbox}\",container_id=\"{container}\",phase=\"{phase}\"}} {:.3}\n",
                        ms as f64 / 1000.0
                    ));
                }
            }
        }
        out
    }
}

/// Writes `data` to a temporary file beside `path` and renames it over `path`, so a collector
/// never reads half a file.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("prom.{}.tmp", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_follows_the_pod_and_is_valid_text_format() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = PodMetrics::new(Some(dir.path()), "pod1");
        let file = dir.path().join("coffer-pod1.prom");
        metrics.booted(Duration::from_millis(2_345));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("coffer_sandbox_boot_seconds{sandbox_id=\"pod1\"} 2.345\n"),
            "{text}"
        );
        let timings = pb::PullTimings {
            resolve_ms: 10,
            attestation_ms: 400,
            key_release_ms: 30,
            download_ms: 200,
            unpack_ms: 500,
            unpack_after_download_ms: 300,
            total_ms: 1_100,
        };
        metrics.pulled("app", &timings);
        metrics.pulled("app", &timings);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.matches("phase=\"attestation\"} 0.400\n").count(),
            1,
            "one sample per container and phase: {text}"
        );
        assert!(text.contains(
            "coffer_image_pull_phase_seconds{sandbox_id=\"pod1\",container_id=\"app\",phase=\"total\"} 1.100\n"
        ));
        // Every sample line is `name{labels} value`; HELP/TYPE precede each family once.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
        assert_eq!(text.matches("# TYPE").count(), 2);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files"
        );
        metrics.remove();
        assert!(!file.exists());
        metrics.remove();
    }

    #[test]
    fn without_a_directory_nothing_is_written_and_labels_are_escaped() {
        let metrics = PodMetrics::new(None, "p");
        metrics.booted(Duration::from_secs(1));
        metrics.remove();
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
