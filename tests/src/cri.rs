//! A Kubernetes CRI client for the `cri` suite: the generated `runtime.v1` stubs
//! (`proto/runtime/v1/api.proto`, the part of the CRI the suite uses) over containerd's gRPC
//! socket, where containerd's CRI plugin serves them, plus the CRI plugin's config for the suite's
//! private containerd and a reader for the container log files CRI writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated `runtime.v1` messages and the `RuntimeService` client.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// The containerd namespace of everything CRI creates (fixed in containerd 1.6).
pub const NAMESPACE: &str = "k8s.io";

/// A `RuntimeService` client.
pub type RuntimeClient = v1::runtime_service_client::RuntimeServiceClient<Channel>;
/// An `ImageService` client.
pub type ImageClient = v1::image_service_client::ImageServiceClient<Channel>;

/// Connects to the CRI services on containerd's gRPC socket `socket`.
pub async fn connect(socket: &Path) -> anyhow::Result<(RuntimeClient, ImageClient)> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://containerd-cri")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .context("connecting to containerd's CRI socket")?;
    Ok((
        v1::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        v1::image_service_client::ImageServiceClient::new(channel),
    ))
}

/// Settings of containerd's CRI plugin for the suite.
#[derive(Debug, Clone)]
pub struct CriConfig {
    /// The pod sandbox (pause) image; it must be in the [`NAMESPACE`] image store, since nothing
    /// can be pulled.
    pub sandbox_image: String,
    /// Runtime handlers: (name, shim runtime type, `options.ConfigPath` if any); the first is
    /// the default. Handlers of Coffer's shim get the pod annotations Coffer reads
    /// ([`COFFER_POD_ANNOTATIONS`]) passed to their containers.
    pub handlers: Vec<(String, String, Option<PathBuf>)>,
    /// The CNI network configuration directory (the plugins are Debian's, in [`CNI_BIN_DIR`]).
    pub cni_conf_dir: PathBuf,
}

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Pod annotations containerd passes to the containers of a Coffer pod (its runtime's
/// `pod_annotations`): the initdata and the workload identity.
pub const COFFER_POD_ANNOTATIONS: [&str; 3] = [
    "io.coffer.initdata",
    "io.katacontainers.config.hypervisor.cc_init_data",
    "coffer.dev/*",
];

/// A CNI network list for containerd's CRI plugin: a `bridge` named `bridge` (the pods' gateway
/// at the subnet's first address, no masquerading: nothing leaves the test's namespace) with
/// `host-local` addresses from `subnet` (an IPv4 `/24`, e.g. `198.18.0.0/24`), and `portmap` for
/// host ports. `host-local` keeps its allocations in `ipam_dir` (the test's, not the machine's
/// `/var/lib/cni`).
pub fn bridge_conflist(
    name: &str,
    bridge: &str,
    subnet: std::net::Ipv4Addr,
    ipam_dir: &Path,
) -> String {
    let [a, b, c, _] = subnet.octets();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{"subnet": format!("{a}.{b}.{c}.0/24"), "gateway": format!("{a}.{b}.{c}.1")}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

impl CriConfig {
    /// The TOML tables for containerd's config.
    pub fn toml(&self) -> String {
        const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\"";
        let mut out = format!(
            "[{CRI}]\n  sandbox_image = \"{image}\"\n  stream_server_address = \"127.0.0.1\"\n  \
             stream_server_port = \"0\"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n  \
             enable_selinux = false\n\
             [{CRI}.cni]\n  bin_dir = \"{CNI_BIN_DIR}\"\n  conf_dir = \"{cni}\"\n\
             [{CRI}.containerd]\n  snapshotter = \"overlayfs\"\n  \
             default_runtime_name = \"{default}\"\n",
            image = self.sandbox_image,
            cni = self.cni_conf_dir.display(),
            default = self.handlers.first().map_or("", |h| h.0.as_str()),
        );
        for (name, runtime_type, config_path) in &self.handlers {
            out.push_str(&format!(
                "[{CRI}.containerd.runtimes.{name}]\n  runtime_type = \"{runtime_type}\"\n"
            ));
            if runtime_type.starts_with("io.containerd.coffer.") {
                out.push_str(&format!(
                    "  pod_annotations = {:?}\n",
                    COFFER_POD_ANNOTATIONS
                ));
            }
            if let Some(path) = config_path {
                out.push_str(&format!(
                    "[{CRI}.containerd.runtimes.{name}.options]\n  ConfigPath = \"{}\"\n",
                    path.display()
                ));
            }
        }
        out
    }
}

/// The lines of a CRI container log file (`<time> <stream> <P|F> <text>` per entry; `P` entries
/// are parts of a line that the next entries complete), as (stream, line).
pub fn log_lines(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = Vec::new();
    let mut partial = String::new();
    for entry in raw.lines() {
        let mut fields = entry.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag), text) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!("malformed CRI log entry {entry:?} in {}", path.display());
        };
        ensure!(
            matches!(tag, "P" | "F"),
            "malformed CRI log tag in {entry:?}"
        );
        partial.push_str(text.unwrap_or(""));
        if tag == "F" {
            lines.push((stream.to_owned(), std::mem::take(&mut partial)));
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_join_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(
            &log,
            "2026-12-01T21:00:00.1Z stdout P ab\n2026-12-01T21:00:00.2Z stdout F cd\n\
             2026-12-01T21:00:00.3Z stderr F e f\n2026-12-01T21:00:00.4Z stdout F\n",
        )
        .unwrap();
        assert_eq!(
            log_lines(&log).unwrap(),
            vec![
                ("stdout".into(), "abcd".into()),
                ("stderr".into(), "e f".into()),
                ("stdout".into(), String::new()),
            ]
        );
        std::fs::write(&log, "garbage\n").unwrap();
        assert!(log_lines(&log).is_err());
    }
}
