//! Task events for containerd.

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;

/// Publishes task events to containerd.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Events for containerd namespace `namespace`.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher,
            namespace,
        }
    }

    pub(crate) async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(err) = self
            .publisher
            .publish(Default::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, %err, "publishing a task event");
        }
    }
}
