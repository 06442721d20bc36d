//! Pull progress on stderr: a bar redrawn in place on a terminal, plain lines otherwise. Shared
//! by `coffer image pull` (a pull on this host) and `coffer sandbox run --image` (a pull inside
//! the guest, reported over `PullImage`).

use coffer_agent_protocol::v1 as pb;

/// Width of the bar in characters.
const WIDTH: u64 = 30;

/// `[#####     ]  50.0% 512 / 1024 bytes`.
pub fn bar(done: u64, total: u64) -> String {
    let total_nonzero = total.max(1);
    let filled = usize::try_from(done.min(total_nonzero) * WIDTH / total_nonzero).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0).saturating_sub(filled);
    format!(
        "[{}{}] {:>5.1}% {done} / {total} bytes",
        "#".repeat(filled),
        " ".repeat(empty),
        done as f64 * 100.0 / total_nonzero as f64,
    )
}

/// How a guest pull is shown while it runs.
#[derive(Debug)]
pub struct GuestPullView {
    terminal: bool,
    verbose: bool,
    layers: u32,
    total: u64,
    downloaded: u32,
    applied: u32,
    drawn: bool,
}

impl GuestPullView {
    /// A bar on a `terminal`; otherwise one line per manifest and layer event when `verbose`,
    /// nothing when not.
    pub fn new(terminal: bool, verbose: bool) -> Self {
        Self {
            terminal,
            verbose,
            layers: 0,
            total: 0,
            downloaded: 0,
            applied: 0,
            drawn: false,
        }
    }

    /// Shows one event from the guest.
    pub fn event(&mut self, event: &pb::pull_event::Event) {
        match event {
            pb::pull_event::Event::Manifest(m) => {
                self.layers = m.layers;
                self.total = m.total_bytes;
                if self.terminal || self.verbose {
                    eprintln!(
                        "coffer: guest pull: manifest {}: {} layer(s), {} bytes",
                        m.digest, m.layers, m.total_bytes
                    );
                }
            }
            pb::pull_event::Event::Progress(p) => {
                if self.terminal {
                    eprint!(
                        "\r{} (layers: {}/{} downloaded, {} applied)",
                        bar(p.downloaded_bytes, self.total),
                        p.layers_downloaded,
                        self.layers,
                        p.layers_applied
                    );
                    self.drawn = true;
                } else if self.verbose {
                    if p.layers_downloaded > self.downloaded {
                        eprintln!(
                            "coffer: guest pull: {}/{} layer(s) downloaded, {} bytes",
                            p.layers_downloaded, self.layers, p.downloaded_bytes
                        );
                    }
                    if p.layers_applied > self.applied {
                        eprintln!(
                            "coffer: guest pull: {}/{} layer(s) verified and unpacked",
                            p.layers_applied, self.layers
                        );
                    }
                }
                self.downloaded = self.downloaded.max(p.layers_downloaded);
                self.applied = self.applied.max(p.layers_applied);
            }
            pb::pull_event::Event::Done(_) => {}
        }
    }

    /// Ends the bar's line.
    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// The guest's phase timings, one `(step, milliseconds)` line each, in the order they ran.
pub fn guest_pull_steps(t: &pb::PullTimings) -> Vec<(String, u64)> {
    vec![
        (
            "guest pull: resolve (manifest, signature policy)".into(),
            t.resolve_ms,
        ),
        (
            "guest pull: attestation (evidence to broker token)".into(),
            t.attestation_ms,
        ),
        (
            "guest pull: key release (layer keys from the broker)".into(),
            t.key_release_ms,
        ),
        ("guest pull: download".into(), t.download_ms),
        (
            format!(
                "guest pull: decrypt + verify + unpack (streamed with the download; {} ms after its last byte)",
                t.unpack_after_download_ms
            ),
            t.unpack_ms,
        ),
        (
            "guest pull: total, measured in the guest".into(),
            t.total_ms,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_in_proportion_and_survives_odd_totals() {
        assert_eq!(
            bar(512, 1024),
            format!(
                "[{}{}]  50.0% 512 / 1024 bytes",
                "#".repeat(15),
                " ".repeat(15)
            )
        );
        assert!(bar(0, 0).starts_with(&format!("[{}]", " ".repeat(30))));
        // More than announced (a misreporting guest) never overflows the bar.
        assert!(bar(2048, 1024).starts_with(&format!("[{}]", "#".repeat(30))));
    }

    #[test]
    fn steps_are_in_pipeline_order() {
        let steps = guest_pull_steps(&pb::PullTimings {
            resolve_ms: 1,
            attestation_ms: 2,
            key_release_ms: 3,
            download_ms: 4,
            unpack_ms: 5,
            unpack_after_download_ms: 1,
            total_ms: 15,
        });
        let ms: Vec<u64> = steps.iter().map(|(_, ms)| *ms).collect();
        assert_eq!(ms, [1, 2, 3, 4, 5, 15]);
        assert!(steps[4].0.contains("1 ms after its last byte"));
    }
}
