//! Decoding: every RPC becomes exactly one variant of [`AgentRequest`], validated here and nowhere
//! else. Handlers and the policy only ever see these typed values.

use std::fmt;

use coffer_agent_protocol::v1 as pb;
use coffer_policies as pol;
use tonic::Streaming;

use crate::error::AgentError;

/// Longest accepted container or exec id.
pub const MAX_ID_LEN: usize = 64;
/// Largest accepted OCI spec or process document.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Largest single stdin write.
pub const MAX_STDIN_CHUNK: usize = 1024 * 1024;

/// A validated container or exec id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, so it is safe as a path
/// component and a cgroup name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    /// Validates `raw` as an id; `what` names the field in the error.
    pub fn parse(what: &str, raw: &str) -> Result<Self, AgentError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_ID_LEN
            && raw.as_bytes()[0].is_ascii_alphanumeric()
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(AgentError::InvalidArgument(format!(
                "{what} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,{}}}",
                MAX_ID_LEN - 1
            )))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Names one process: a container's init process (`exec: None`) or an exec'd process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    /// The container.
    pub container: Id,
    /// The exec id, `None` for the init process.
    pub exec: Option<Id>,
}

impl ProcessRef {
    fn parse(container_id: &str, exec_id: &str) -> Result<Self, AgentError> {
        Ok(Self {
            container: Id::parse("container_id", container_id)?,
            exec: if exec_id.is_empty() {
                None
            } else {
                Some(Id::parse("exec_id", exec_id)?)
            },
        })
    }
}

impl fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exec {
            Some(exec) => write!(f, "{}/{}", self.container, exec),
            None => write!(f, "{}", self.container),
        }
    }
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// The tar stream uploaded for this container id with `UploadRootfs`.
    Uploaded,
    /// An image the guest pulls itself (a syntactically valid reference).
    Image(String),
}

impl RootfsSource {
    /// How the policy input names this source.
    pub fn policy_view(&self) -> pol::Rootfs {
        match self {
            Self::Uploaded => pol::Rootfs {
                source: pol::RootfsSource::Uploaded,
                image: None,
            },
            Self::Image(reference) => pol::Rootfs {
                source: pol::RootfsSource::Image,
                image: Some(reference.clone()),
            },
        }
    }
}

/// Longest image reference accepted.
pub const MAX_REFERENCE_LEN: usize = 1024;

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Standard output (or the terminal).
    Stdout,
    /// Standard error.
    Stderr,
}

/// Every request the agent serves, decoded and validated. Adding an RPC means adding a variant here,
/// which the policy gate and the dispatcher must then handle (their `match`es are exhaustive).
#[derive(Debug)]
pub enum AgentRequest {
    /// `CreateSandbox`.
    CreateSandbox {
        /// Sandbox id.
        sandbox_id: Id,
        /// Hostname for the guest; `None` keeps the default.
        hostname: Option<String>,
        /// Registry tunnels to open.
        tunnels: Vec<crate::tunnel::Tunnel>,
        /// Ports to publish to the host.
        published: Vec<crate::publish::PublishedPort>,
        /// The pod's network; `None`: the guest has its loopback only.
        network: Option<crate::pod_network::PodNetwork>,
    },
    /// `DestroySandbox`.
    DestroySandbox {
        /// Power the guest off afterwards.
        power_off: bool,
    },
    /// `UploadRootfs`: the header chunk decoded; the remaining chunks follow in `body`.
    UploadRootfs {
        /// Target container id.
        container: Id,
        /// Bytes of the first chunk.
        first: bytes::Bytes,
        /// Whether the first chunk is also the last.
        first_is_last: bool,
        /// The rest of the stream.
        body: Box<Streaming<pb::RootfsChunk>>,
    },
    /// `PullImage`: pull an image for a container ahead of its `CreateContainer`.
    PullImage {
        /// The container the image is for.
        container: Id,
        /// A syntactically valid image reference.
        reference: String,
    },
    /// `CreateContainer`.
    CreateContainer {
        /// Container id.
        container: Id,
        /// The container's closed spec (decoded by [`crate::spec`]), which is also the policy's
        /// input: the runtime's `config.json` is rendered from this value once it is authorized.
        spec: Box<pol::CreateContainer>,
        /// Rootfs source.
        rootfs: RootfsSource,
    },
    /// `StartContainer`.
    StartContainer {
        /// Container id.
        container: Id,
    },
    /// `RemoveContainer`.
    RemoveContainer {
        /// Container id.
        container: Id,
        /// Kill first if still running.
        force: bool,
    },
    /// `StatsContainer`.
    StatsContainer {
        /// Container id.
        container: Id,
    },
    /// `ExecProcess`.
    ExecProcess {
        /// Target container and new exec id.
        process: ProcessRef,
        /// The process, closed like a container's (see [`crate::spec`]).
        spec: Box<pol::Process>,
    },
    /// `WaitProcess`.
    WaitProcess {
        /// The process.
        process: ProcessRef,
    },
    /// `SignalProcess`.
    SignalProcess {
        /// The process.
        process: ProcessRef,
        /// The signal.
        signal: nix::sys::signal::Signal,
        /// All processes of the container.
        all: bool,
    },
    /// `WriteStdin`.
    WriteStdin {
        /// The process.
        process: ProcessRef,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// `CloseStdin`.
    CloseStdin {
        /// The process.
        process: ProcessRef,
    },
    /// `ReadStdout` / `ReadStderr`.
    ReadOutput {
        /// The process.
        process: ProcessRef,
        /// Which stream.
        kind: OutputKind,
    },
    /// `TtyWinResize`.
    TtyWinResize {
        /// The process.
        process: ProcessRef,
        /// Rows.
        rows: u16,
        /// Columns.
        columns: u16,
    },
    /// `GetGuestDetails`.
    GetGuestDetails,
    /// `GetOOMEvent`.
    GetOomEvent,
}

impl AgentRequest {
    /// The RPC name, for logs and policy reasons.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateSandbox { .. } => "CreateSandbox",
            Self::DestroySandbox { .. } => "DestroySandbox",
            Self::UploadRootfs { .. } => "UploadRootfs",
            Self::PullImage { .. } => "PullImage",
            Self::CreateContainer { .. } => "CreateContainer",
            Self::StartContainer { .. } => "StartContainer",
            Self::RemoveContainer { .. } => "RemoveContainer",
            Self::StatsContainer { .. } => "StatsContainer",
            Self::ExecProcess { .. } => "ExecProcess",
            Self::WaitProcess { .. } => "WaitProcess",
            Self::SignalProcess { .. } => "SignalProcess",
            Self::WriteStdin { .. } => "WriteStdin",
            Self::CloseStdin { .. } => "CloseStdin",
            Self::ReadOutput {
                kind: OutputKind::Stdout,
                ..
            } => "ReadStdout",
            Self::ReadOutput {
                kind: OutputKind::Stderr,
                ..
            } => "ReadStderr",
            Self::TtyWinResize { .. } => "TtyWinResize",
            Self::GetGuestDetails => "GetGuestDetails",
            Self::GetOomEvent => "GetOOMEvent",
        }
    }
}

/// Refuses a document larger than [`MAX_SPEC_BYTES`] before it is parsed.
fn check_size(what: &str, bytes: &[u8]) -> Result<(), AgentError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(AgentError::InvalidArgument(format!(
            "{what} is larger than {MAX_SPEC_BYTES} bytes"
        )));
    }
    Ok(())
}

fn parse_signal(raw: u32) -> Result<nix::sys::signal::Signal, AgentError> {
    i32::try_from(raw)
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .ok_or_else(|| AgentError::InvalidArgument(format!("unknown signal {raw}")))
}

fn parse_dimension(what: &str, raw: u32) -> Result<u16, AgentError> {
    u16::try_from(raw)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| AgentError::InvalidArgument(format!("{what} must be in 1..=65535")))
}

fn parse_hostname(raw: &str) -> Result<Option<String>, AgentError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let ok = raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(Some(raw.to_owned()))
    } else {
        Err(AgentError::InvalidArgument(
            "hostname must be at most 64 characters of [A-Za-z0-9.-]".into(),
        ))
    }
}

/// The checks of the agent's own mount types, on the decoded spec (before the policy sees it).
fn validate_mounts(spec: &pol::CreateContainer) -> Result<(), AgentError> {
    crate::secrets::validate_mounts(&spec.mounts)?;
    crate::identity::validate_mounts(&spec.mounts)?;
    crate::pod_files::validate_mounts(&spec.mounts)
}

/// Decoding of each unary protobuf request into [`AgentRequest`].
pub trait Decode {
    /// Validates into the typed request.
    fn decode(self) -> Result<AgentRequest, AgentError>;
}

impl Decode for pb::CreateSandboxRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        if self.registry_tunnels.len() > crate::tunnel::MAX_TUNNELS {
            return Err(AgentError::InvalidArgument(format!(
                "{} registry tunnels; at most {}",
                self.registry_tunnels.len(),
                crate::tunnel::MAX_TUNNELS
            )));
        }
        let mut tunnels: Vec<crate::tunnel::Tunnel> = Vec::new();
        for t in &self.registry_tunnels {
            let tunnel = crate::tunnel::Tunnel::parse(&t.listen, t.host_port)?;
            if tunnels.iter().any(|seen| seen.listen == tunnel.listen) {
                return Err(AgentError::InvalidArgument(format!(
                    "registry tunnel {} is listed twice",
                    tunnel.listen
                )));
            }
            tunnels.push(tunnel);
        }
        if self.published_ports.len() > crate::publish::MAX_PUBLISHED {
            return Err(AgentError::InvalidArgument(format!(
                "{} published ports; at most {}",
                self.published_ports.len(),
                crate::publish::MAX_PUBLISHED
            )));
        }
        let mut published: Vec<crate::publish::PublishedPort> = Vec::new();
        for p in &self.published_ports {
            let port = crate::publish::PublishedPort::parse(p.guest_port, p.vsock_port)?;
            if published.iter().any(|seen| {
                seen.vsock_port == port.vsock_port || seen.guest_port == port.guest_port
            }) {
                return Err(AgentError::InvalidArgument(format!(
                    "published port vsock {} → {} repeats a vsock or guest port",
                    port.vsock_port, port.guest_port
                )));
            }
            published.push(port);
        }
        Ok(AgentRequest::CreateSandbox {
            sandbox_id: Id::parse("sandbox_id", &self.sandbox_id)?,
            hostname: parse_hostname(&self.hostname)?,
            tunnels,
            published,
            network: self
                .network
                .map(crate::pod_network::PodNetwork::decode)
                .transpose()?,
        })
    }
}

impl Decode for pb::DestroySandboxRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::DestroySandbox {
            power_off: self.power_off,
        })
    }
}

impl Decode for pb::CreateContainerRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        let container = Id::parse("container_id", &self.container_id)?;
        check_size("oci_spec_json", &self.oci_spec_json)?;
        let rootfs = match self.rootfs {
            Some(pb::create_container_request::Rootfs::Uploaded(_)) => RootfsSource::Uploaded,
            Some(pb::create_container_request::Rootfs::Image(image)) => {
                RootfsSource::Image(parse_image_reference(image.reference)?)
            }
            None => {
                return Err(AgentError::InvalidArgument(
                    "rootfs source is missing".into(),
                ));
            }
        };
        let spec = crate::spec::decode_container(
            container.as_str(),
            rootfs.policy_view(),
            &self.oci_spec_json,
        )?;
        validate_mounts(&spec)?;
        Ok(AgentRequest::CreateContainer {
            container,
            spec: Box::new(spec),
            rootfs,
        })
    }
}

/// A bounded, syntactically valid image reference.
fn parse_image_reference(reference: String) -> Result<String, AgentError> {
    if reference.len() > MAX_REFERENCE_LEN {
        return Err(AgentError::InvalidArgument(format!(
            "image reference longer than {MAX_REFERENCE_LEN} bytes"
        )));
    }
    coffer_image::registry::parse_reference(&reference)
        .map_err(|e| AgentError::InvalidArgument(format!("image reference {reference:?}: {e}")))?;
    Ok(reference)
}

impl Decode for pb::PullImageRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::PullImage {
            container: Id::parse("container_id", &self.container_id)?,
            reference: parse_image_reference(self.reference)?,
        })
    }
}

impl Decode for pb::StartContainerRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::StartContainer {
            container: Id::parse("container_id", &self.container_id)?,
        })
    }
}

impl Decode for pb::RemoveContainerRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::RemoveContainer {
            container: Id::parse("container_id", &self.container_id)?,
            force: self.force,
        })
    }
}

impl Decode for pb::StatsContainerRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::StatsContainer {
            container: Id::parse("container_id", &self.container_id)?,
        })
    }
}

impl Decode for pb::ExecProcessRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        let process = ProcessRef::parse(&self.container_id, &self.exec_id)?;
        if process.exec.is_none() {
            return Err(AgentError::InvalidArgument("exec_id is required".into()));
        }
        check_size("oci_process_json", &self.oci_process_json)?;
        let spec = crate::spec::decode_process(&self.oci_process_json)?;
        Ok(AgentRequest::ExecProcess {
            process,
            spec: Box::new(spec),
        })
    }
}

impl Decode for pb::WaitProcessRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::WaitProcess {
            process: ProcessRef::parse(&self.container_id, &self.exec_id)?,
        })
    }
}

impl Decode for pb::SignalProcessRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        let process = ProcessRef::parse(&self.container_id, &self.exec_id)?;
        if self.all && process.exec.is_some() {
            return Err(AgentError::InvalidArgument(
                "all applies to the container's init process only".into(),
            ));
        }
        Ok(AgentRequest::SignalProcess {
            process,
            signal: parse_signal(self.signal)?,
            all: self.all,
        })
    }
}

impl Decode for pb::WriteStdinRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        if self.data.len() > MAX_STDIN_CHUNK {
            return Err(AgentError::InvalidArgument(format!(
                "stdin chunk larger than {MAX_STDIN_CHUNK} bytes"
            )));
        }
        Ok(AgentRequest::WriteStdin {
            process: ProcessRef::parse(&self.container_id, &self.exec_id)?,
            data: self.data.into(),
        })
    }
}

impl Decode for pb::CloseStdinRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::CloseStdin {
            process: ProcessRef::parse(&self.container_id, &self.exec_id)?,
        })
    }
}

impl Decode for pb::TtyWinResizeRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::TtyWinResize {
            process: ProcessRef::parse(&self.container_id, &self.exec_id)?,
            rows: parse_dimension("rows", self.rows)?,
            columns: parse_dimension("columns", self.columns)?,
        })
    }
}

impl Decode for pb::GetGuestDetailsRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::GetGuestDetails)
    }
}

impl Decode for pb::GetOomEventRequest {
    fn decode(self) -> Result<AgentRequest, AgentError> {
        Ok(AgentRequest::GetOomEvent)
    }
}

/// Decodes `ReadStdout`/`ReadStderr`, which share a message type.
pub fn decode_read_output(
    req: pb::ReadOutputRequest,
    kind: OutputKind,
) -> Result<AgentRequest, AgentError> {
    Ok(AgentRequest::ReadOutput {
        process: ProcessRef::parse(&req.container_id, &req.exec_id)?,
        kind,
    })
}

/// Decodes the header of an `UploadRootfs` stream: the first chunk must name the container.
pub async fn decode_upload(
    mut body: Streaming<pb::RootfsChunk>,
) -> Result<AgentRequest, AgentError> {
    let first = body
        .message()
        .await
        .map_err(|s| AgentError::InvalidArgument(format!("rootfs stream: {}", s.message())))?
        .ok_or_else(|| AgentError::InvalidArgument("rootfs stream is empty".into()))?;
    Ok(AgentRequest::UploadRootfs {
        container: Id::parse("container_id", &first.container_id)?,
        first: first.data.into(),
        first_is_last: first.last,
        body: Box::new(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_safe() {
        for bad in ["", "..", ".", "-x", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(Id::parse("container_id", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "c0", "pod_1.web-2", &"a".repeat(64)] {
            assert_eq!(Id::parse("container_id", good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn malformed_spec_is_invalid_argument() {
        let req = pb::CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: b"{not json".to_vec(),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        };
        let err = req.decode().unwrap_err();
        assert!(matches!(err, AgentError::Spec(_)), "{err}");
    }

    #[test]
    fn spec_without_args_is_rejected() {
        let spec =
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":[]},"root":{"path":"rootfs"}}"#;
        let req = pb::CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: spec.as_bytes().to_vec(),
            rootfs: Some(pb::create_container_request::Rootfs::Uploaded(
                pb::UploadedRootfs {},
            )),
        };
        let err = req.decode().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid request: oci spec field process.args must name a program"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn unknown_signal_is_rejected() {
        let req = pb::SignalProcessRequest {
            container_id: "c".into(),
            exec_id: String::new(),
            signal: 4096,
            all: false,
        };
        assert!(req.decode().is_err());
    }

    #[test]
    fn published_ports_are_bounded_distinct_and_valid() {
        let port = |guest_port, vsock_port| pb::PublishedPort {
            guest_port,
            vsock_port,
        };
        let create = |published_ports| pb::CreateSandboxRequest {
            sandbox_id: "s".into(),
            published_ports,
            ..Default::default()
        };
        let Ok(AgentRequest::CreateSandbox { published, .. }) =
            create(vec![port(8443, 30000), port(9000, 30001)]).decode()
        else {
            panic!("two valid ports refused");
        };
        assert_eq!(
            published
                .iter()
                .map(|p| p.target().to_string())
                .collect::<Vec<_>>(),
            ["127.0.0.2:8443", "127.0.0.2:9000"]
        );
        let too_many = (0..=crate::publish::MAX_PUBLISHED as u32)
            .map(|i| port(8000 + i, 30000 + i))
            .collect();
        for bad in [
            too_many,
            vec![port(8443, 30000), port(8443, 30001)],
            vec![port(8443, 30000), port(9000, 30000)],
            vec![port(8443, coffer_agent_protocol::AGENT_VSOCK_PORT)],
            vec![port(70000, 30000)],
        ] {
            let shown = format!("{bad:?}");
            let err = create(bad).decode().unwrap_err();
            assert!(
                matches!(err, AgentError::InvalidArgument(_)),
                "{shown}: {err}"
            );
        }
    }
}
