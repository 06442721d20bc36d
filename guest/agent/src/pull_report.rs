//! What a guest pull tells the host while it runs (`PullImage`): the resolved manifest, download
//! and unpack progress, and, at the end, how long each phase took — measured here, in the guest,
//! where the phases happen. Only sizes, counts, digests and durations leave the guest: never a
//! key, a byte of content or a broker reply.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use coffer_agent_protocol::v1 as pb;
use coffer_attestation::kbs::client::KbsClient;
use coffer_image::{
    BrokerKeyUnwrapper, DecryptError, KeyUnwrapper, ProgressEvent, ProgressSink, WrappedKey,
};
use futures::future::BoxFuture;
use zeroize::Zeroizing;

/// Progress events are sent at most this often (plus one per layer downloaded or applied).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Where a report's events go.
pub type EventSink = Box<dyn Fn(pb::pull_event::Event) + Send + Sync>;

/// One pull's clock and progress, fed by the pipeline's events and by the key unwrapper.
pub struct PullReport {
    start: Instant,
    events: Option<EventSink>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PullReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullReport")
            .field("start", &self.start)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Inner {
    manifest_at: Option<Instant>,
    first_byte_at: Option<Instant>,
    last_byte_at: Option<Instant>,
    layer_bytes: Vec<u64>,
    layers_downloaded: u32,
    layers_applied: u32,
    progress_sent_at: Option<Instant>,
    attestation: Duration,
    key_release: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PullReport {
    /// A report starting now; events go to `events` when given.
    pub fn new(events: Option<EventSink>) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            events,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, event: pb::pull_event::Event) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    /// The sink for the pipeline's progress events.
    pub fn sink(self: &Arc<Self>) -> ProgressSink {
        let report = Arc::clone(self);
        Arc::new(move |event| report.on_event(event))
    }

    fn on_event(&self, event: ProgressEvent) {
        let now = Instant::now();
        let mut inner = self.lock();
        let force = match event {
            ProgressEvent::Manifest {
                digest,
                layers,
                total_bytes,
            } => {
                inner.manifest_at = Some(now);
                inner.layer_bytes = vec![0; layers];
                drop(inner);
                self.send(pb::pull_event::Event::Manifest(pb::PullManifest {
                    digest: digest.to_string(),
                    layers: u32::try_from(layers).unwrap_or(u32::MAX),
                    total_bytes,
                }));
                return;
            }
            ProgressEvent::Downloading { index, bytes, .. } => {
                inner.first_byte_at.get_or_insert(now);
                if let Some(slot) = inner.layer_bytes.get_mut(index) {
                    *slot = bytes;
                }
                false
            }
            ProgressEvent::Downloaded { fetched, .. } => {
                inner.layers_downloaded += 1;
                if fetched {
                    inner.first_byte_at.get_or_insert(now);
                    inner.last_byte_at = Some(now);
                }
                true
            }
            ProgressEvent::Applied { .. } => {
                inner.layers_applied += 1;
                true
            }
            ProgressEvent::Done => return,
        };
        let due = inner
            .progress_sent_at
            .is_none_or(|at| now.duration_since(at) >= PROGRESS_EVERY);
        if force || due {
            inner.progress_sent_at = Some(now);
            let progress = pb::PullProgress {
                downloaded_bytes: inner.layer_bytes.iter().sum(),
                layers_downloaded: inner.layers_downloaded,
                layers_applied: inner.layers_applied,
            };
            drop(inner);
            self.send(pb::pull_event::Event::Progress(progress));
        }
    }

    /// A key unwrapper that times attestation and key release separately around `inner`.
    pub fn timed_broker(self: &Arc<Self>, client: Arc<KbsClient>) -> Arc<dyn KeyUnwrapper> {
        Arc::new(TimedBroker {
            inner: BrokerKeyUnwrapper::new(Arc::clone(&client)),
            client,
            report: Arc::clone(self),
        })
    }

    /// The phase durations, with the root committed now.
    pub fn finish(&self) -> pb::PullTimings {
        let done = Instant::now();
        let inner = self.lock();
        let since = |from: Option<Instant>| from.map_or(0, |at| millis(done.duration_since(at)));
        pb::PullTimings {
            resolve_ms: inner
                .manifest_at
                .map_or(0, |at| millis(at.duration_since(self.start))),
            attestation_ms: millis(inner.attestation),
            key_release_ms: millis(inner.key_release),
            download_ms: match (inner.first_byte_at, inner.last_byte_at) {
                (Some(first), Some(last)) => millis(last.saturating_duration_since(first)),
                _ => 0,
            },
            // Layers are applied as they arrive: unpacking starts with the first byte (or, when
            // every layer was already stored, after the keys) and ends with the commit.
            unpack_ms: since(inner.first_byte_at.or(inner.manifest_at)),
            unpack_after_download_ms: since(inner.last_byte_at),
            total_ms: millis(done.duration_since(self.start)),
        }
    }
}

/// [`BrokerKeyUnwrapper`] with the attestation (token) and the key release timed apart.
struct TimedBroker {
    client: Arc<KbsClient>,
    inner: BrokerKeyUnwrapper,
    report: Arc<PullReport>,
}

impl std::fmt::Debug for TimedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBroker").finish_non_exhaustive()
    }
}

impl TimedBroker {
    async fn unwrap(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        if BrokerKeyUnwrapper::resource_of(&key.kid).is_some() {
            let started = Instant::now();
            self.client
                .attest()
                .await
                .map_err(|e| DecryptError::Unwrapper(format!("key broker: {e}")))?;
            self.report.lock().attestation += started.elapsed();
        }
        let started = Instant::now();
        let result = self.inner.unwrap_key(key).await;
        self.report.lock().key_release += started.elapsed();
        result
    }
}

impl KeyUnwrapper for TimedBroker {
    fn unwrap_key<'a>(
        &'a self,
        key: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, DecryptError>> {
        Box::pin(self.unwrap(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn channel() -> (EventSink, mpsc::UnboundedReceiver<pb::pull_event::Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Box::new(move |event| {
                let _ = tx.send(event);
            }),
            rx,
        )
    }

    fn digest() -> coffer_image::Digest {
        coffer_image::Digest::of(b"manifest")
    }

    #[test]
    fn events_reach_the_host_throttled_with_every_layer_boundary() {
        let (sink, mut rx) = channel();
        let report = PullReport::new(Some(sink));
        let sink = report.sink();
        sink(ProgressEvent::Manifest {
            digest: digest(),
            layers: 2,
            total_bytes: 300,
        });
        for bytes in [10, 20, 30] {
            sink(ProgressEvent::Downloading {
                index: 0,
                bytes,
                total: 100,
            });
        }
        sink(ProgressEvent::Downloaded {
            index: 0,
            fetched: true,
        });
        sink(ProgressEvent::Downloaded {
            index: 1,
            fetched: false,
        });
        sink(ProgressEvent::Applied { index: 0 });
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        let pb::pull_event::Event::Manifest(m) = &events[0] else {
            panic!("first event is not the manifest: {events:?}");
        };
        assert_eq!((m.layers, m.total_bytes), (2, 300));
        // The three Downloading events fall within one throttle window: one progress event.
        let progress: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                pb::pull_event::Event::Progress(p) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(progress.len(), 4, "{progress:?}");
        assert_eq!(progress[0].downloaded_bytes, 10);
        let last = progress.last().unwrap();
        assert_eq!(
            (
                last.downloaded_bytes,
                last.layers_downloaded,
                last.layers_applied
            ),
            (30, 2, 1)
        );
        let timings = report.finish();
        assert!(timings.total_ms >= timings.unpack_ms);
        assert!(timings.unpack_ms >= timings.unpack_after_download_ms);
        assert_eq!((timings.attestation_ms, timings.key_release_ms), (0, 0));
    }

    #[test]
    fn a_closed_receiver_does_not_stop_the_report() {
        let (sink, rx) = channel();
        drop(rx);
        let report = PullReport::new(Some(sink));
        (report.sink())(ProgressEvent::Applied { index: 0 });
        assert_eq!(report.lock().layers_applied, 1);
    }
}
