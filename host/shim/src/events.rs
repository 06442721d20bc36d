//! Task events for containerd, delivered before the call that caused them returns.
//!
//! containerd-shim's `RemotePublisher` only queues an event and forwards it from a background
//! task. A shim that containerd deletes and shuts down right after a task's `Delete` can exit with
//! `/tasks/delete` (or an exit) still in that queue: the event is lost, and what watches events
//! (the kubelet's PLEG, `ctr events`, the shim suite) never learns of it. Seen once in the shim
//! suite on a loaded machine. Here each event is forwarded over containerd's ttrpc events service
//! while the caller waits: in order (one publication at a time), within a bounded number of
//! attempts, reconnecting after a failure, and dropped with a warning only when containerd does not
//! take it within that bound (containerd down or restarting).

use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc;
use tokio::sync::Mutex;

/// Attempts per event (the first and three retries).
const ATTEMPTS: u32 = 4;
/// One connection attempt or one forward, at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after the first failed attempt; doubled after each further one (100, 200, 400 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Publishes task events to containerd.
pub struct Events {
    /// containerd's ttrpc address, as ttrpc connects to it (`unix://PATH`).
    address: String,
    namespace: String,
    /// The connection, made again after a failed forward. Held across a publication, which keeps
    /// events in the order they were published.
    client: Mutex<Option<EventsClient>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Connects to containerd's ttrpc endpoint `address` (the shim's `TTRPC_ADDRESS`, a socket
    /// path, with or without `unix://`) for events of containerd namespace `namespace`.
    pub async fn connect(address: &str, namespace: String) -> std::io::Result<Self> {
        let address = if address.contains("://") {
            address.to_owned()
        } else {
            format!("unix://{address}")
        };
        let client = connect(&address).await?;
        Ok(Self {
            address,
            namespace,
            client: Mutex::new(Some(client)),
        })
    }

    pub(crate) async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let request = match envelope(topic, &self.namespace, event) {
            Ok(envelope) => {
                let mut request = ForwardRequest::new();
                request.set_envelope(envelope);
                request
            }
            Err(err) => {
                tracing::warn!(topic, %err, "encoding a task event");
                return;
            }
        };
        let mut client = self.client.lock().await;
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            if client.is_none() {
                match connect(&self.address).await {
                    Ok(c) => *client = Some(c),
                    Err(err) => last_error = err.to_string(),
                }
            }
            if let Some(c) = client.as_ref() {
                let ctx = ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
                match c.forward(ctx, &request).await {
                    Ok(_) => return,
                    Err(err) => {
                        last_error = err.to_string();
                        // A broken connection stays broken: make a new one next time.
                        *client = None;
                    }
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        tracing::warn!(
            topic,
            attempts = ATTEMPTS,
            error = %last_error,
            "containerd did not take a task event; it is dropped"
        );
    }
}

async fn connect(address: &str) -> std::io::Result<EventsClient> {
    let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to containerd"))?
        .map_err(|err| std::io::Error::other(format!("connecting to containerd: {err}")))?;
    Ok(EventsClient::new(client))
}

fn envelope(
    topic: &str,
    namespace: &str,
    event: Box<dyn MessageDyn>,
) -> containerd_shim::Result<Envelope> {
    let mut envelope = Envelope::new();
    envelope.set_topic(topic.to_owned());
    envelope.set_namespace(namespace.to_owned());
    envelope.set_timestamp(containerd_shim::util::timestamp()?);
    envelope.set_event(containerd_shim::util::convert_to_any(event)?);
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Instant;

    use containerd_shim::protos::events::task::TaskDelete;
    use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
    use containerd_shim::protos::shim_async::create_events;
    use containerd_shim::protos::ttrpc::r#async::{Server, TtrpcContext};

    use super::*;

    /// containerd's events service, recording the topics it was given.
    #[derive(Default)]
    struct Recorder(StdMutex<Vec<String>>);

    #[async_trait::async_trait]
    impl containerd_shim::protos::shim_async::Events for Recorder {
        async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            self.0
                .lock()
                .unwrap()
                .push(req.envelope().topic().to_owned());
            Ok(Empty::new())
        }
    }

    fn delete_event(id: &str) -> Box<dyn MessageDyn> {
        Box::new(TaskDelete {
            container_id: id.to_owned(),
            ..Default::default()
        })
    }

    async fn serve(path: &std::path::Path, recorder: Arc<Recorder>) -> Server {
        let mut server = Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(create_events(recorder));
        server.start().await.unwrap();
        server
    }

    /// The event is at containerd when `publish` returns (the shim may exit right after a
    /// task's Delete), in the order published, and after containerd restarted too.
    #[tokio::test]
    async fn events_reach_containerd_before_publish_returns_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let recorder = Arc::new(Recorder::default());
        let mut server = serve(&socket, recorder.clone()).await;
        let events = Events::connect(socket.to_str().unwrap(), "k8s.io".into())
            .await
            .unwrap();
        events.publish("/tasks/exit", delete_event("a")).await;
        events.publish("/tasks/delete", delete_event("a")).await;
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["/tasks/exit", "/tasks/delete"]
        );

        // containerd restarts: the next event reconnects and arrives.
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_file(&socket);
        let recorder = Arc::new(Recorder::default());
        let _server = serve(&socket, recorder.clone()).await;
        events.publish("/tasks/delete", delete_event("b")).await;
        assert_eq!(*recorder.0.lock().unwrap(), ["/tasks/delete"]);
    }

    /// Without containerd the event is dropped after the bounded attempts, not waited for
    /// forever.
    #[tokio::test]
    async fn an_absent_containerd_costs_a_bounded_wait() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let recorder = Arc::new(Recorder::default());
        let mut server = serve(&socket, recorder).await;
        let events = Events::connect(socket.to_str().unwrap(), "k8s.io".into())
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_file(&socket);
        let started = Instant::now();
        events.publish("/tasks/delete", delete_event("a")).await;
        // Four refused connections and 700 ms of back-off; far below the per-call timeouts.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
