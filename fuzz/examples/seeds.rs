//! Writes the seed corpora `fuzz/corpus/<target>/seed-*` from the repository's test vectors
//! (`tests/vectors/`) and a few hand-made documents per target. See `fuzz/README.md`.
//!
//! `cargo +nightly run --example seeds` (from `fuzz/`); existing seeds are overwritten, inputs the
//! fuzzer added are left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a one-shot generator: failures abort it

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use coffer_agent::request::Decode;
use coffer_agent_protocol::v1 as pb;
use coffer_initdata::{Algorithm, Entry, Initdata, device};
use coffer_policies as pol;
use prost::Message;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn vector(path: &str) -> Vec<u8> {
    let path = root().join("../tests/vectors").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vector_json(path: &str) -> Value {
    serde_json::from_slice(&vector(path)).unwrap()
}

/// Writes one seed: the selector byte `form` (if any) followed by `body`.
fn seed(target: &str, name: &str, form: Option<u8>, body: &[u8]) {
    let dir = root().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = form.map(|f| vec![f]).unwrap_or_default();
    bytes.extend_from_slice(body);
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

/// Every blob of the ocicrypt layouts.
fn ocicrypt_blobs() -> Vec<(String, Vec<u8>)> {
    let mut blobs = Vec::new();
    for layout in ["src", "enc-ec", "enc-rsa"] {
        let dir = root().join("../tests/vectors/ocicrypt").join(layout);
        blobs.push((
            format!("{layout}-index"),
            std::fs::read(dir.join("index.json")).unwrap(),
        ));
        let mut entries: Vec<_> = std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy()[..12].to_owned();
            blobs.push((format!("{layout}-{name}"), std::fs::read(path).unwrap()));
        }
    }
    blobs
}

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok()
}

// ---------------------------------------------------------------------------------------------
// agent_request and policy_input

/// A pod container's spec in the shape containerd's CRI plugin gives the shim, asking for the
/// agent's three guest-side mounts (a pod file, a sealed secret, the workload identity).
fn cri_spec() -> Value {
    let mount = |destination: &str, kind: &str, source: &str, options: &[&str]| json!({"destination": destination, "type": kind, "source": source, "options": options});
    json!({
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs", "readonly": false},
        "process": {
            "args": ["/usr/bin/web", "--listen", ":8443"],
            "env": ["PATH=/usr/bin:/bin", "TZ=UTC"],
            "cwd": "/srv",
            "user": {"uid": 101, "gid": 101, "additionalGids": [101]},
            "capabilities": {
                "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
                "effective": ["CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_NET_BIND_SERVICE"]
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 999
        },
        "mounts": [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "mode=755", "size=65536k"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "size=65536k"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            mount("/etc/hostname", "pod", "hostname", &[]),
            mount("/run/secrets/db", "sealed", "kbs:///web/db/password", &[]),
            mount("/run/spiffe", "identity", "spiffe", &[])
        ],
        "annotations": {"io.kubernetes.cri.container-name": "web"},
        "linux": {
            "cgroupsPath": "kubepods-burstable-podweb.slice:cri-containerd:web",
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 134217728},
                "cpu": {"shares": 512, "quota": 100000, "period": 100000}
            },
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Most modelled members set at once: terminal, rlimits, devices, sysctls, seccomp, hugepages,
/// pids, unified cgroup files, labels.
fn rich_spec() -> Value {
    let mut spec = cri_spec();
    spec["hostname"] = json!("pod-1");
    spec["domainname"] = json!("example");
    spec["root"]["readonly"] = json!(true);
    let process = &mut spec["process"];
    process["terminal"] = json!(true);
    process["consoleSize"] = json!({"height": 24, "width": 80});
    process["user"]["umask"] = json!(18);
    process["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]);
    process["capabilities"]["inheritable"] = json!([]);
    process["capabilities"]["ambient"] = json!([]);
    let linux = &mut spec["linux"];
    linux["devices"] = json!([
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    linux["resources"]["devices"] = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
    ]);
    linux["resources"]["pids"] = json!({"limit": 128});
    linux["resources"]["hugepageLimits"] = json!([{"pageSize": "2MB", "limit": 0}]);
    linux["resources"]["unified"] = json!({"memory.high": "60000000"});
    linux["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "0"});
    linux["mountLabel"] = json!("system_u:object_r:container_file_t:s0");
    linux["namespaces"] = json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network"}, {"type": "cgroup"}
    ]);
    linux["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    spec
}

/// Specs the decoder refuses: an unmodelled member, hooks, a bind mount of a guest path.
fn refused_specs() -> Vec<(&'static str, Value)> {
    let mut personality = cri_spec();
    personality["linux"]["personality"] = json!({"domain": "LINUX32"});
    let mut hooks = cri_spec();
    hooks["hooks"] = json!({"prestart": [{"path": "/bin/true"}]});
    let mut bind = cri_spec();
    bind["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]}));
    let mut netns = cri_spec();
    netns["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network", "path": "/proc/1/ns/net"}));
    vec![
        ("personality", personality),
        ("hooks", hooks),
        ("bind", bind),
        ("netns-path", netns),
    ]
}

fn exec_process() -> Value {
    json!({
        "args": ["/app/health", "--verbose"],
        "env": ["PATH=/usr/bin:/bin"],
        "cwd": "/app",
        "user": {"uid": 1000, "gid": 1000},
        "terminal": false,
        "capabilities": {"bounding": ["CAP_KILL"], "effective": [], "permitted": []},
        "noNewPrivileges": true
    })
}

const IMAGE: &str =
    "registry.example/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn agent_seeds() -> Vec<(String, u8, Vec<u8>)> {
    let mut seeds: Vec<(String, u8, Vec<u8>)> = Vec::new();
    let mut specs = vec![("cri", cri_spec()), ("rich", rich_spec())];
    specs.extend(refused_specs());
    for (i, (name, spec)) in specs.iter().enumerate() {
        let json = serde_json::to_vec(spec).unwrap();
        let rootfs = if i % 2 == 0 {
            pb::create_container_request::Rootfs::Image(pb::PulledImage {
                reference: IMAGE.into(),
            })
        } else {
            pb::create_container_request::Rootfs::Uploaded(pb::UploadedRootfs {})
        };
        let request = pb::CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: json.clone(),
            rootfs: Some(rootfs),
        };
        seeds.push((format!("create-{name}"), 2, request.encode_to_vec()));
        seeds.push((format!("spec-{name}"), 14, json));
    }
    let process = serde_json::to_vec(&exec_process()).unwrap();
    seeds.push(("process".into(), 15, process.clone()));
    let exec = pb::ExecProcessRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        oci_process_json: process,
    };
    seeds.push(("exec".into(), 7, exec.encode_to_vec()));
    let sandbox = pb::CreateSandboxRequest {
        sandbox_id: "p1".into(),
        hostname: "pod-1".into(),
        registry_tunnels: vec![pb::RegistryTunnel {
            listen: "127.0.0.1:5000".into(),
            host_port: 5000,
        }],
        published_ports: vec![pb::PublishedPort {
            guest_port: 8080,
            vsock_port: 10080,
        }],
        network: Some(pb::PodNetwork {
            interfaces: vec![pb::NetworkInterface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: 1500,
                addresses: vec!["10.0.0.2/24".into(), "fd00::2/64".into()],
            }],
            routes: vec![
                pb::NetworkRoute {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.0.0.1".into(),
                    device: "eth0".into(),
                    source: String::new(),
                    metric: 0,
                },
                pb::NetworkRoute {
                    destination: "192.168.0.0/16".into(),
                    gateway: String::new(),
                    device: "eth0".into(),
                    source: "10.0.0.2".into(),
                    metric: 100,
                },
            ],
            dns: Some(pb::DnsConfig {
                servers: vec!["10.0.0.1".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            hosts: vec![pb::HostEntry {
                ip: "10.0.0.2".into(),
                names: vec!["pod-1".into(), "pod-1.example".into()],
            }],
        }),
    };
    seeds.push(("sandbox".into(), 0, sandbox.encode_to_vec()));
    let plain = pb::CreateSandboxRequest {
        sandbox_id: "p2".into(),
        ..Default::default()
    };
    seeds.push(("sandbox-plain".into(), 0, plain.encode_to_vec()));
    seeds.push((
        "destroy".into(),
        1,
        pb::DestroySandboxRequest { power_off: true }.encode_to_vec(),
    ));
    seeds.push((
        "pull".into(),
        3,
        pb::PullImageRequest {
            container_id: "c1".into(),
            reference: IMAGE.into(),
        }
        .encode_to_vec(),
    ));
    let id = || "c1".to_owned();
    seeds.push((
        "start".into(),
        4,
        pb::StartContainerRequest { container_id: id() }.encode_to_vec(),
    ));
    seeds.push((
        "remove".into(),
        5,
        pb::RemoveContainerRequest {
            container_id: id(),
            force: true,
        }
        .encode_to_vec(),
    ));
    seeds.push((
        "stats".into(),
        6,
        pb::StatsContainerRequest { container_id: id() }.encode_to_vec(),
    ));
    seeds.push((
        "wait".into(),
        8,
        pb::WaitProcessRequest {
            container_id: id(),
            exec_id: "e1".into(),
        }
        .encode_to_vec(),
    ));
    seeds.push((
        "signal".into(),
        9,
        pb::SignalProcessRequest {
            container_id: id(),
            exec_id: String::new(),
            signal: 15,
            all: true,
        }
        .encode_to_vec(),
    ));
    seeds.push((
        "stdin".into(),
        10,
        pb::WriteStdinRequest {
            container_id: id(),
            exec_id: "e1".into(),
            data: b"hello\n".to_vec(),
        }
        .encode_to_vec(),
    ));
    seeds.push((
        "close-stdin".into(),
        11,
        pb::CloseStdinRequest {
            container_id: id(),
            exec_id: "e1".into(),
        }
        .encode_to_vec(),
    ));
    seeds.push((
        "read-stdout".into(),
        12,
        pb::ReadOutputRequest {
            container_id: id(),
            exec_id: String::new(),
        }
        .encode_to_vec(),
    ));
    seeds.push((
        "resize".into(),
        13,
        pb::TtyWinResizeRequest {
            container_id: id(),
            exec_id: "e1".into(),
            rows: 24,
            columns: 80,
        }
        .encode_to_vec(),
    ));
    seeds
}

/// The agent's policy input of every agent seed the agent accepts.
fn policy_inputs(agent: &[(String, u8, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    fn decoded<M: prost::Message + Default + coffer_agent::request::Decode>(
        bytes: &[u8],
    ) -> Option<coffer_agent::request::AgentRequest> {
        Decode::decode(<M as Message>::decode(bytes).ok()?).ok()
    }
    let mut inputs = Vec::new();
    let started = pol::SandboxState {
        containers: vec![pol::ContainerState {
            id: "c1".into(),
            image_digest: Some(IMAGE.rsplit('@').next().unwrap_or_default().to_owned()),
            started: true,
            record: BTreeMap::new(),
        }],
        ever_started: vec!["c1".into()],
    };
    for (name, kind, bytes) in agent {
        let request = match kind {
            0 => decoded::<pb::CreateSandboxRequest>(bytes),
            2 => decoded::<pb::CreateContainerRequest>(bytes),
            3 => decoded::<pb::PullImageRequest>(bytes),
            7 => decoded::<pb::ExecProcessRequest>(bytes),
            9 => decoded::<pb::SignalProcessRequest>(bytes),
            10 => decoded::<pb::WriteStdinRequest>(bytes),
            _ => None,
        };
        let Some(request) = request else {
            continue;
        };
        let request = coffer_agent::policy_input::request(&request);
        for (suffix, state) in [("", pol::SandboxState::default()), ("-c1", started.clone())] {
            let input = pol::PolicyInput::new(request.clone(), state);
            inputs.push((
                format!("{name}{suffix}"),
                serde_json::to_vec(&input).unwrap(),
            ));
        }
    }
    inputs
}

// ---------------------------------------------------------------------------------------------
// tar_unpack

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    builder.into_inner().unwrap()
}

fn header(kind: tar::EntryType, path: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path(path).unwrap();
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

/// A regular file; a name over 100 bytes gets a GNU long-name entry.
fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
    let mut h = header(tar::EntryType::Regular, "placeholder", body.len() as u64);
    b.append_data(&mut h, path, body).unwrap();
}

fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
    let mut h = header(kind, path, 0);
    h.set_link_name(target).unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
}

/// Raw 512-byte header with any name bytes (the builder refuses `..` and absolute names).
fn raw_header(kind: u8, name: &[u8], link: &[u8], size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn raw_tar(entries: &[(u8, &[u8], &[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, name, link, body) in entries {
        out.extend_from_slice(&raw_header(*kind, name, link, body.len() as u64));
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn tar_seeds() -> Vec<(String, u8, Vec<u8>)> {
    use tar::EntryType as T;
    let mut seeds = Vec::new();
    for (name, blob) in ocicrypt_blobs() {
        if blob.starts_with(&[0x1f, 0x8b]) && name.starts_with("src") {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut plain)
                .unwrap();
            seeds.push((format!("ocicrypt-{name}"), 0, plain));
        }
    }
    let tree = tar_of(|b| {
        b.append(&header(T::Directory, "etc", 0), &[][..]).unwrap();
        file(b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
        link(b, T::Symlink, "etc/localtime", "/usr/share/zoneinfo/UTC");
        link(b, T::Link, "etc/passwd-", "etc/passwd");
        link(b, T::Symlink, "up", "../../..");
        let mut h = header(T::Regular, "bin/su", 4);
        h.set_mode(0o4755);
        h.set_uid(0);
        h.set_cksum();
        b.append(&h, &b"\x7fELF"[..]).unwrap();
        let mut fifo = header(T::Fifo, "run/fifo", 0);
        fifo.set_cksum();
        b.append(&fifo, &[][..]).unwrap();
    });
    seeds.push(("tree".into(), 0, tree.clone()));
    seeds.push(("tree-devices-skip".into(), 2, tree.clone()));
    let whiteouts = tar_of(|b| {
        file(b, "etc/.wh.passwd", b"");
        file(b, "etc/.wh..wh..opq", b"");
        file(b, "new", b"upper");
    });
    // Two layers: the tree, then whiteouts over it (split at the tree's length in blocks).
    let blocks = u8::try_from(tree.len() / 512).unwrap();
    if blocks < 32 {
        let mut both = tree.clone();
        both.extend_from_slice(&whiteouts);
        seeds.push(("two-layers".into(), 1 | (blocks << 3), both));
    }
    let long = "d/".repeat(60) + "file";
    seeds.push((
        "gnu-long-name".into(),
        0,
        tar_of(|b| file(b, &long, b"deep")),
    ));
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([("path", &b"pax/named/file"[..]), ("mtime", &b"1.5"[..])])
        .unwrap();
    file(&mut pax, "short", b"pax body");
    seeds.push(("pax".into(), 0, pax.into_inner().unwrap()));
    seeds.push((
        "escape-dotdot".into(),
        0,
        raw_tar(&[(b'0', b"../canary.txt", b"", b"overwritten")]),
    ));
    seeds.push((
        "escape-absolute".into(),
        0,
        raw_tar(&[(b'0', b"/etc/shadow", b"", b"x")]),
    ));
    seeds.push((
        "escape-symlink".into(),
        0,
        raw_tar(&[
            (b'2', b"l", b"../../..", b""),
            (b'0', b"l/canary.txt", b"", b"through the link"),
            (b'1', b"h", b"../canary.txt", b""),
        ]),
    ));
    seeds.push((
        "device".into(),
        0,
        raw_tar(&[(b'3', b"dev/null", b"", b"")]),
    ));
    seeds
}

// ---------------------------------------------------------------------------------------------
// initdata

fn initdata_seeds() -> Vec<(String, u8, Vec<u8>)> {
    let mut documents = Vec::new();
    let mut all = BTreeMap::new();
    all.insert(
        Entry::Policy,
        "package coffer.policy\nimport rego.v1\ndecision := {\"allow\": true}\n".to_owned(),
    );
    all.insert(Entry::PolicyData, r#"{"containers": []}"#.to_owned());
    all.insert(Entry::KbsUrl, "https://kbs.example:8080".to_owned());
    all.insert(Entry::KbsEvidence, "tee".to_owned());
    all.insert(Entry::WorkloadIdentity, "ns/default/sa/app".to_owned());
    all.insert(
        Entry::Registries,
        "[[registry]]\nprefix = \"registry.example\"\n".to_owned(),
    );
    documents.push((
        "all-sha256",
        Initdata::build(Algorithm::Sha256, &all).unwrap(),
    ));
    let mut one = BTreeMap::new();
    one.insert(Entry::KbsEvidence, "sample".to_owned());
    documents.push((
        "sample-sha384",
        Initdata::build(Algorithm::Sha384, &one).unwrap(),
    ));
    documents.push((
        "empty-sha512",
        Initdata::build(Algorithm::Sha512, &BTreeMap::new()).unwrap(),
    ));
    let mut seeds = Vec::new();
    for (name, initdata) in documents {
        seeds.push((format!("{name}-toml"), 0, initdata.raw().to_vec()));
        seeds.push((
            format!("{name}-annotation"),
            1,
            initdata.to_annotation().into_bytes(),
        ));
        seeds.push((
            format!("{name}-plain-base64"),
            1,
            B64.encode(initdata.raw()).into_bytes(),
        ));
        seeds.push((format!("{name}-device"), 2, device::encode(initdata.raw())));
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// kbs_request

fn kbs_seeds() -> Vec<(String, u8, Vec<u8>)> {
    let line = |path: &str, bearer: &str, body: &[u8]| {
        let mut out = format!("{path}\n{bearer}\n").into_bytes();
        out.extend_from_slice(body);
        out
    };
    let mut seeds = Vec::new();
    for name in ["py-ec-cookie", "py-ec-bearer", "py-rsa-oaep256-cookie"] {
        let v = vector_json(&format!("kbs/{name}.json"));
        let auth = serde_json::to_vec(&v["auth"]["request"]).unwrap();
        seeds.push((format!("{name}-auth"), 0, line("", "", &auth)));
        let mut attest = v["attest"]["request"].clone();
        attest["runtime-data"]["nonce"] = json!("NONCE");
        let attest = serde_json::to_vec(&attest).unwrap();
        seeds.push((format!("{name}-attest"), 1, line("", "", &attest)));
        let path = v["resource"]["path"]
            .as_str()
            .unwrap_or("default/test/secret");
        let path = path.trim_start_matches("/kbs/v0/resource/");
        let bearer = v["resource"]["bearer"].as_str().unwrap_or("");
        seeds.push((format!("{name}-resource"), 4, line(path, bearer, b"")));
    }
    // SNP and TDX evidence: the vectors' report and VCEK (in an extended report's certificate
    // table) and quotes, in the runtime data of a recorded exchange.
    let template = vector_json("kbs/py-ec-cookie.json")["attest"]["request"].clone();
    let with_evidence = |evidence: Value| {
        let mut attest = template.clone();
        attest["runtime-data"]["nonce"] = json!("NONCE");
        attest["tee-evidence"] = json!({"primary_evidence": evidence, "additional_evidence": ""});
        serde_json::to_vec(&attest).unwrap()
    };
    let vcek = vector("snp/trustee-test-vcek.der");
    let mut table = vec![
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ];
    table.extend_from_slice(&48u32.to_le_bytes());
    table.extend_from_slice(&u32::try_from(vcek.len()).unwrap().to_le_bytes());
    table.extend_from_slice(&[0u8; 24]);
    table.extend_from_slice(&vcek);
    let snp = json!({
        "report": B64.encode(vector("snp/trustee-test-report.bin")),
        "cert_table": B64.encode(table),
    });
    seeds.push(("snp-attest".into(), 2, line("", "", &with_evidence(snp))));
    let tdx = json!({"quote": B64.encode(vector("tdx/dcap-qvl-tdx_quote"))});
    seeds.push(("tdx-attest".into(), 3, line("", "", &with_evidence(tdx))));
    // The recorded admin requests of Trustee's client.
    let exchange = String::from_utf8(vector("kbs/kbs-client-exchange.jsonl")).unwrap();
    for (i, l) in exchange.lines().enumerate() {
        let record: Value = serde_json::from_str(l).unwrap();
        let request = &record["request"];
        if request["method"] != "POST" {
            continue;
        }
        let path = request["path"].as_str().unwrap();
        let body = match &request["body"] {
            Value::String(s) => s.clone().into_bytes(),
            other => serde_json::to_vec(other).unwrap(),
        };
        let (route, rest) = if let Some(rest) = path.strip_prefix("/kbs/v0/resource/") {
            (5, rest)
        } else if path == "/kbs/v0/resource-policy" {
            (6, "")
        } else {
            continue;
        };
        seeds.push((format!("exchange-{i}"), route, line(rest, "", &body)));
    }
    // A JWT-shaped admin token (ES256 header, claims, a signature of the right length).
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.{}",
        b64url.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
        b64url.encode(r#"{"iat":1700000000,"exp":4000000000}"#),
        b64url.encode([1u8; 64])
    );
    seeds.push((
        "admin-reference-values".into(),
        7,
        line("", &token, br#"{"snp_measurements": ["00"]}"#),
    ));
    seeds.push((
        "admin-keys".into(),
        8,
        line(
            "",
            &token,
            br#"["-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"]"#,
        ),
    ));
    seeds.push((
        "identity".into(),
        9,
        line("", &token, br#"{"csr": "MIIB"}"#),
    ));
    seeds
}

fn main() {
    let agent = agent_seeds();
    for (name, kind, bytes) in &agent {
        seed("agent_request", name, Some(*kind), bytes);
    }
    let inputs = policy_inputs(&agent);
    eprintln!(
        "agent_request: {} seeds, {} accepted by the agent",
        agent.len(),
        inputs.len() / 2
    );
    for (name, json) in inputs {
        seed(
            "policy_input",
            &format!("{name}-confidential"),
            Some(0),
            &json,
        );
        seed("policy_input", &format!("{name}-sandbox"), Some(1), &json);
        seed("policy_input", &format!("{name}-eval"), Some(2), &json);
    }

    for (name, blob) in ocicrypt_blobs() {
        if is_json(&blob) {
            seed("oci_manifest", &name, None, &blob);
        }
    }
    for name in ["cosign-style/sig-manifest.json", "skopeo-gpg/manifest.json"] {
        let short = name.replace(['/', '.'], "-");
        seed(
            "oci_manifest",
            &short,
            None,
            &vector(&format!("signatures/{name}")),
        );
    }

    for (name, control, tar) in tar_seeds() {
        seed("tar_unpack", &name, Some(control), &tar);
    }

    for (name, blob) in ocicrypt_blobs() {
        let Ok(manifest) = serde_json::from_slice::<Value>(&blob) else {
            continue;
        };
        for (i, layer) in manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(annotations) = layer.get("annotations") {
                let json = serde_json::to_vec(annotations).unwrap();
                seed("ocicrypt_jwe", &format!("{name}-layer{i}"), Some(0), &json);
                let jwes = annotations[coffer_image::decrypt::ANNOTATION_JWE]
                    .as_str()
                    .unwrap_or_default();
                for (j, jwe) in jwes.split(',').filter(|p| !p.is_empty()).enumerate() {
                    let jwe = B64.decode(jwe).unwrap();
                    seed(
                        "ocicrypt_jwe",
                        &format!("{name}-layer{i}-jwe{j}"),
                        Some(2),
                        &jwe,
                    );
                }
            }
        }
    }
    for (name, form) in [
        ("py-ec-cookie", 1),
        ("py-ec-bearer", 1),
        ("py-rsa-oaep256-cookie", 3),
    ] {
        let v = vector_json(&format!("kbs/{name}.json"));
        let reply = serde_json::to_vec(&v["resource"]["response"]).unwrap();
        seed("ocicrypt_jwe", name, Some(form), &reply);
    }

    for (name, body) in kbs_seeds().iter().map(|(n, r, b)| (n, (r, b))) {
        seed("kbs_request", name, Some(*body.0), body.1);
    }

    for name in [
        "trustee-test-report.bin",
        "trustee-test-vlek-report.bin",
        "virtee-sev-report_milan.hex",
    ] {
        let mut report = vector(&format!("snp/{name}"));
        if name.ends_with(".hex") {
            let text: String = String::from_utf8(report)
                .unwrap()
                .split_whitespace()
                .collect();
            report = hex::decode(text).unwrap();
        }
        seed("snp_report", &format!("{name}-parse"), Some(0), &report);
        seed("snp_report", &format!("{name}-signature"), Some(2), &report);
    }
    for name in [
        "trustee-test-vcek.der",
        "trustee-test-vcek-invalid-legacy.der",
        "trustee-test-vcek-invalid-new.der",
        "trustee-test-vlek.der",
        "virtee-sev-vcek_milan.der",
        "virtee-sev-vcek_turin.der",
    ] {
        seed("snp_report", name, Some(1), &vector(&format!("snp/{name}")));
    }

    for name in [
        "dcap-qvl-tdx_quote",
        "dcap-qvl-sgx_quote",
        "trustee-tdx_quote_4.dat",
        "trustee-tdx_quote_5.dat",
    ] {
        seed("tdx_quote", name, Some(0), &vector(&format!("tdx/{name}")));
    }
    // The CCEL area is 1 MiB, nearly all padding: the seed keeps the events and 64 bytes of it.
    let ccel = vector("tdx/trustee-CCEL_data");
    let used = ccel
        .iter()
        .rposition(|b| *b != 0 && *b != 0xff)
        .map_or(0, |i| i + 1);
    let ccel = &ccel[..(used + 64).min(ccel.len())];
    seed("tdx_quote", "trustee-CCEL_data", Some(1), ccel);

    for (name, form, bytes) in initdata_seeds() {
        seed("initdata", &name, Some(form), &bytes);
    }
}
