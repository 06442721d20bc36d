//! deploy/: the Kubernetes manifests, rendered with `kubectl kustomize` and validated against the
//! Kubernetes OpenAPI schemas by `kubernetes-validate` (PyPI, installed by tests/setup-deploy.sh);
//! the manifests agree with the node files they ship (ConfigMap contents, handlers, labels,
//! overhead, the broker's mounts and probes); the containerd drop-in and the runtime
//! configurations load in containerd and in `coffer-runtime`; and the node script installs into a
//! temporary root, is idempotent, refuses to overwrite what is not its own and uninstalls back to
//! the exact original tree.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use coffer_runtime::config::RuntimeConfig;
use coffer_tests::{Suite, bin, case, require_tool};
use serde_json::Value;

/// Kubernetes versions the manifests must validate against: the oldest still common with
/// containerd 1.6/1.7 nodes, and the validator's newest.
const KUBERNETES_VERSIONS: &[&str] = &["1.29", "1.37"];
/// The runtime handlers and their runtime configuration files.
const HANDLERS: &[(&str, &str)] = &[
    ("coffer", "runtime.toml"),
    ("coffer-snp", "runtime-snp.toml"),
    ("coffer-tdx", "runtime-tdx.toml"),
];
const SHIM_RUNTIME_TYPE: &str = "io.containerd.coffer.v2";
const BINARIES: &[&str] = &[
    "containerd-shim-coffer-v2",
    "coffer",
    "coffer-agent",
    "vhost-device-vsock",
];
const GUEST_FILES: &[&str] = &["vmlinux", "vmlinuz", "initramfs", "guest-image.json"];
/// QEMU's own memory beyond the guest's RAM, at least (the RuntimeClass overhead must cover it).
const QEMU_OVERHEAD_MIB: u64 = 64;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn venv_bin(name: &str) -> PathBuf {
    let venv =
        std::env::var_os("COFFER_VENV").map_or_else(|| "/opt/coffer/venv".into(), PathBuf::from);
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/setup-deploy.sh",
        path.display()
    );
    path
}

/// Runs `cmd`, which must succeed; returns its output.
fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// The documents of a YAML stream, as JSON (PyYAML from the validator's venv).
fn yaml_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut child = Command::new(venv_bin("python3"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout)? {
        Value::Array(docs) => Ok(docs),
        other => bail!("not a list of documents: {other}"),
    }
}

/// A TOML file as JSON (Python's tomllib: an independent parser).
fn toml_json(path: &Path) -> anyhow::Result<Value> {
    let out = run(Command::new(venv_bin("python3")).args([
        "-c",
        "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))",
        &path.display().to_string(),
    ]))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `kubectl kustomize dir`.
fn render(dir: &Path) -> anyhow::Result<String> {
    require_tool("kubectl");
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir))?;
    Ok(String::from_utf8(out.stdout)?)
}

/// `kubernetes-validate --strict` of `file` against `version`; the output, whatever the status.
fn validate(file: &Path, version: &str) -> anyhow::Result<Output> {
    Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .context("running kubernetes-validate")
}

/// A copy of deploy/kbs in `work` with throwaway keys in its secrets/ (what an operator makes
/// before `kubectl apply -k deploy/kbs`).
fn kbs_with_secrets(work: &Path) -> anyhow::Result<PathBuf> {
    require_tool("openssl");
    let dir = work.join("kbs");
    if dir.join("secrets/admin.pub").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(dir.join("secrets"))?;
    for entry in std::fs::read_dir(deploy().join("kbs"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
        }
    }
    let s = |name: &str| dir.join("secrets").join(name).display().to_string();
    // A self-signed P-256 certificate `name`.crt with its key `name`.key.
    let self_signed = |name: &str, subject: &str, extra: &[&str]| {
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                subject,
            ])
            .args(extra)
            .args(["-keyout", &s(&format!("{name}.key")), "-out"])
            .arg(s(&format!("{name}.crt"))))
    };
    self_signed(
        "tls",
        "/CN=coffer-kbs",
        &[
            "-addext",
            "subjectAltName=DNS:coffer-kbs.coffer-kbs.svc,IP:127.0.0.1",
        ],
    )?;
    for key in ["token.key", "admin.key"] {
        run(Command::new("openssl").args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &s(key),
        ]))?;
    }
    run(Command::new("openssl").args([
        "pkey",
        "-in",
        &s("admin.key"),
        "-pubout",
        "-out",
        &s("admin.pub"),
    ]))?;
    // The replicas' session keys and the database password.
    for key in ["session-1.key", "session-2.key"] {
        run(Command::new("openssl").args(["rand", "-base64", "-out", &s(key), "32"]))?;
    }
    run(Command::new("openssl").args(["rand", "-hex", "-out", &s("db-password"), "16"]))?;
    self_signed("db-ca", "/CN=coffer-kbs-postgres", &[])?;
    Ok(dir)
}

/// The rendered runtime and broker manifests.
fn rendered(work: &Path) -> anyhow::Result<(String, String)> {
    Ok((render(&deploy())?, render(&kbs_with_secrets(work)?)?))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_owned())
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .with_context(|| format!("no {kind} {name_prefix}*"))
}

/// Every manifest renders and passes strict schema validation; every YAML file of deploy/ is part
/// of a kustomization (so none escapes validation).
fn manifests_validate(work: &Path) -> anyhow::Result<()> {
    let (runtime, kbs) = rendered(work)?;
    let runtime_docs = yaml_docs(&runtime)?;
    let kbs_docs = yaml_docs(&kbs)?;
    ensure!(
        kinds(&runtime_docs)
            == [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "Namespace",
                "RuntimeClass",
                "RuntimeClass",
                "RuntimeClass",
                "ServiceAccount"
            ],
        "deploy/ renders {:?}",
        kinds(&runtime_docs)
    );
    ensure!(
        kinds(&kbs_docs)
            == [
                "ConfigMap",
                "Deployment",
                "Namespace",
                "PodDisruptionBudget",
                "Secret",
                "Secret",
                "Secret",
                "Secret",
                "Service"
            ],
        "deploy/kbs renders {:?}",
        kinds(&kbs_docs)
    );
    for (name, text, count) in [
        ("runtime", &runtime, runtime_docs.len()),
        ("kbs", &kbs, kbs_docs.len()),
    ] {
        let file = work.join(format!("{name}.yaml"));
        std::fs::write(&file, text)?;
        for version in KUBERNETES_VERSIONS {
            let out = validate(&file, version)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.success(),
                "{name} manifests fail validation against {version}:\n{text}"
            );
            let passed = text.matches(" passed for resource ").count();
            ensure!(
                passed == count,
                "{name} against {version}: {passed} of {count} resources reported as passed:\n{text}"
            );
        }
    }
    // Every YAML file under deploy/ is listed by a kustomization next to or above it.
    let kustomizations = [
        std::fs::read_to_string(deploy().join("kustomization.yaml"))?,
        std::fs::read_to_string(deploy().join("kbs/kustomization.yaml"))?,
    ];
    let mut stack = vec![deploy()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".yaml") || name == "kustomization.yaml" {
                continue;
            }
            let rel = path.strip_prefix(deploy())?.to_string_lossy().into_owned();
            let rel_kbs = rel.strip_prefix("kbs/").unwrap_or(&rel).to_owned();
            ensure!(
                kustomizations
                    .iter()
                    .any(|k| k.contains(&format!("- {rel}\n"))
                        || k.contains(&format!("- {rel_kbs}\n"))),
                "deploy/{rel} is in no kustomization: it would not be validated or applied"
            );
        }
    }
    Ok(())
}

/// A manifest with a wrong field type, and one with a misspelt field, fail validation naming
/// the field: the validator really checks.
fn broken_manifest_fails(work: &Path) -> anyhow::Result<()> {
    let original = std::fs::read_to_string(deploy().join("runtime/installer.yaml"))?;
    for (what, from, to, field) in [
        (
            "wrong type",
            "      hostPID: true\n",
            "      hostPID: \"yes\"\n",
            "hostPID",
        ),
        (
            "unknown field",
            "      hostPID: true\n",
            "      hostPid: true\n",
            "hostPid",
        ),
    ] {
        ensure!(
            original.contains(from),
            "installer.yaml no longer has {from:?}"
        );
        let file = work.join(format!("broken-{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, original.replacen(from, to, 1))?;
        let out = validate(&file, KUBERNETES_VERSIONS[0])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "a manifest with a {what} passed validation:\n{text}"
        );
        ensure!(
            text.contains(field) && text.contains("did not validate"),
            "{what}: the failure does not name {field}:\n{text}"
        );
    }
    // The unmodified file passes on its own (the failures above come from the edits).
    let file = work.join("installer.yaml");
    std::fs::write(&file, &original)?;
    let out = validate(&file, KUBERNETES_VERSIONS[0])?;
    ensure!(
        out.status.success(),
        "installer.yaml: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// The drop-in parses as TOML and names the shim's runtime type and a runtime configuration
/// per handler; each runtime configuration loads in `coffer-runtime` (unknown keys refused) and
/// points at what install.sh places.
fn node_files_load() -> anyhow::Result<()> {
    let drop_in = toml_json(&deploy().join("node/containerd-coffer.toml"))?;
    let runtimes = &drop_in["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    let names: Vec<&String> = runtimes
        .as_object()
        .context("no runtimes table")?
        .keys()
        .collect();
    ensure!(
        names == ["coffer", "coffer-snp", "coffer-tdx"],
        "drop-in runtimes {names:?}"
    );
    for (handler, file) in HANDLERS {
        let runtime = &runtimes[*handler];
        ensure!(
            runtime["runtime_type"] == SHIM_RUNTIME_TYPE,
            "{handler}: runtime_type {}",
            runtime["runtime_type"]
        );
        ensure!(
            runtime["options"]["ConfigPath"] == format!("/etc/coffer/{file}").as_str(),
            "{handler}: ConfigPath {}",
            runtime["options"]["ConfigPath"]
        );
        let config = RuntimeConfig::load(&deploy().join("node").join(file))?;
        ensure!(
            config.guest.image_dir == Path::new("/opt/coffer/share/guest"),
            "{file}: image_dir {}",
            config.guest.image_dir.display()
        );
        ensure!(
            config.qemu.vhost_vsock_binary == Path::new("/opt/coffer/bin/vhost-device-vsock"),
            "{file}: vhost_vsock_binary {:?}",
            config.qemu.vhost_vsock_binary
        );
    }
    Ok(())
}

fn quantity_mib(q: &str) -> anyhow::Result<u64> {
    if let Some(n) = q.strip_suffix("Mi") {
        return Ok(n.parse()?);
    }
    if let Some(n) = q.strip_suffix("Gi") {
        return Ok(n.parse::<u64>()? * 1024);
    }
    bail!("memory quantity {q:?}: use Mi or Gi")
}

/// The manifests agree with the files they ship: the installer's ConfigMap holds deploy/node's
/// files byte for byte, mounted where the script is told to look; RuntimeClass handlers are the
/// drop-in's runtimes, their node labels are the ones install.sh sets, and their memory overhead
/// covers the handler's VM.
fn manifests_match_node_files(work: &Path) -> anyhow::Result<()> {
    let (runtime, _) = rendered(work)?;
    let docs = yaml_docs(&runtime)?;
    let config_map = find(&docs, "ConfigMap", "coffer-node-installer")?;
    let data = config_map["data"].as_object().context("ConfigMap data")?;
    let mut keys: Vec<&String> = data.keys().collect();
    keys.sort();
    ensure!(
        keys == [
            "containerd-coffer.toml",
            "install.sh",
            "runtime-snp.toml",
            "runtime-tdx.toml",
            "runtime.toml"
        ],
        "ConfigMap keys {keys:?}"
    );
    for (key, value) in data {
        let file = std::fs::read_to_string(deploy().join("node").join(key))?;
        ensure!(
            value == &file,
            "ConfigMap {key} differs from deploy/node/{key}"
        );
    }
    let daemon_set = find(&docs, "DaemonSet", "coffer-node-installer")?;
    let pod = &daemon_set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = |name: &str| -> Option<String> {
        container["env"]
            .as_array()?
            .iter()
            .find_map(|e| (e["name"] == name).then(|| e["value"].as_str().map(str::to_owned))?)
    };
    let config_src = env("COFFER_CONFIG_SRC").context("COFFER_CONFIG_SRC")?;
    let deploy_volume = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| v["configMap"]["name"] == config_map["metadata"]["name"])
        .context("no volume of the installer ConfigMap")?;
    ensure!(
        container["volumeMounts"]
            .as_array()
            .context("volumeMounts")?
            .iter()
            .any(|m| m["name"] == deploy_volume["name"] && m["mountPath"] == config_src.as_str()),
        "the ConfigMap is not mounted at COFFER_CONFIG_SRC {config_src}"
    );
    let node_root = env("COFFER_NODE_ROOT").context("COFFER_NODE_ROOT")?;
    ensure!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["hostPath"]["path"] == "/")
            && container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == node_root.as_str()),
        "the node's root is not mounted at COFFER_NODE_ROOT {node_root}"
    );
    ensure!(
        env("COFFER_ACTION").as_deref() == Some("install")
            && container["args"][0]
                .as_str()
                .is_some_and(|a| a.contains("install.sh \"$COFFER_ACTION\"")),
        "the installer does not run install.sh $COFFER_ACTION"
    );
    ensure!(
        pod["hostPID"] == true,
        "restarting containerd through nsenter needs hostPID"
    );

    let script = std::fs::read_to_string(deploy().join("node/install.sh"))?;
    for (handler, file) in HANDLERS {
        let class = find(&docs, "RuntimeClass", handler)?;
        ensure!(class["metadata"]["name"] == *handler && class["handler"] == *handler);
        let selector = class["scheduling"]["nodeSelector"]
            .as_object()
            .with_context(|| format!("{handler}: no nodeSelector"))?;
        ensure!(!selector.is_empty());
        for label in selector.keys() {
            ensure!(
                script.contains(&format!("={label}\n")),
                "{handler}: label {label} is not one install.sh sets"
            );
        }
        let config = RuntimeConfig::load(&deploy().join("node").join(file))?;
        let overhead = quantity_mib(
            class["overhead"]["podFixed"]["memory"]
                .as_str()
                .with_context(|| format!("{handler}: no memory overhead"))?,
        )?;
        ensure!(
            overhead >= u64::from(config.guest.memory_mib) + QEMU_OVERHEAD_MIB,
            "{handler}: overhead {overhead} MiB does not cover the guest's {} MiB + QEMU",
            config.guest.memory_mib
        );
        ensure!(
            class["overhead"]["podFixed"]["cpu"].is_string(),
            "{handler}: no cpu overhead"
        );
    }
    Ok(())
}

// --- the node script -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
}

/// Every entry under `root`: kind, permission bits, contents or link target.
fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            let rel = path.strip_prefix(root)?.to_path_buf();
            let node = if meta.file_type().is_symlink() {
                Node::Link(std::fs::read_link(&path)?)
            } else if meta.is_dir() {
                stack.push(path.clone());
                Node::Dir(mode)
            } else {
                Node::File(mode, std::fs::read(&path)?)
            };
            tree.insert(rel, node);
        }
    }
    Ok(tree)
}

fn diff(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> String {
    let mut out = Vec::new();
    for (path, node) in a {
        match b.get(path) {
            None => out.push(format!("- {}", path.display())),
            Some(other) if other != node => out.push(format!("~ {}", path.display())),
            _ => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("+ {}", path.display()));
    }
    out.join("\n")
}

/// A node root, a payload, and a fake containerd restart and label command that log to files.
struct NodeFixture {
    dir: PathBuf,
    root: PathBuf,
    payload: PathBuf,
}

impl NodeFixture {
    fn new(work: &Path, name: &str) -> anyhow::Result<Self> {
        let dir = work.join(name);
        let root = dir.join("root");
        let payload = dir.join("payload");
        std::fs::create_dir_all(root.join("usr/bin"))?;
        std::fs::create_dir_all(payload.join("bin"))?;
        std::fs::create_dir_all(payload.join("guest"))?;
        // The node's QEMU (install.sh checks for it) and a binary of its own in /usr/bin.
        std::fs::write(root.join("usr/bin/qemu-system-x86_64"), "#!/bin/sh\n")?;
        std::fs::set_permissions(
            root.join("usr/bin/qemu-system-x86_64"),
            std::fs::Permissions::from_mode(0o755),
        )?;
        // Payload files with restrictive modes: install.sh must set the modes itself.
        for name in BINARIES {
            let file = payload.join("bin").join(name);
            std::fs::write(&file, format!("#!/bin/sh\n# fake {name}\n"))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700))?;
        }
        for name in GUEST_FILES {
            let file = payload.join("guest").join(name);
            std::fs::write(&file, format!("guest {name}"))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
        let label = dir.join("label.sh");
        std::fs::write(
            &label,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {}\n",
                dir.join("labels.log").display()
            ),
        )?;
        std::fs::set_permissions(&label, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir, root, payload })
    }

    /// Runs `install.sh action`; the output, whatever the status.
    fn script(&self, action: &str) -> anyhow::Result<Output> {
        Command::new("bash")
            .arg(deploy().join("node/install.sh"))
            .arg(action)
            .env("COFFER_NODE_ROOT", &self.root)
            .env("COFFER_PAYLOAD", &self.payload)
            .env_remove("COFFER_CONFIG_SRC")
            .env(
                "COFFER_RESTART_CMD",
                format!(
                    "echo restart >> {}",
                    self.dir.join("restarts.log").display()
                ),
            )
            .env("COFFER_LABEL_CMD", self.dir.join("label.sh"))
            .env_remove("NODE_NAME")
            .output()
            .context("running install.sh")
    }

    fn script_ok(&self, action: &str) -> anyhow::Result<()> {
        let out = self.script(action)?;
        ensure!(
            out.status.success(),
            "install.sh {action}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("restarts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn labels(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("labels.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("label patch is JSON")["metadata"]["labels"]
                    .clone()
            })
            .collect()
    }
}

/// `containerd config dump` of the node's config.toml: what containerd itself makes of it.
fn containerd_view(config: &Path, work: &Path) -> anyhow::Result<Value> {
    require_tool("containerd");
    let out = run(Command::new("containerd")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"]))?;
    let dumped = work.join("containerd-dump.toml");
    std::fs::write(&dumped, &out.stdout)?;
    toml_json(&dumped)
}

/// `path` was installed from `source` with `mode`.
fn check_placed(path: &Path, source: &Path, mode: u32) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    ensure!(
        meta.permissions().mode() & 0o7777 == mode,
        "{}: mode {:o}, not {mode:o}",
        path.display(),
        meta.permissions().mode()
    );
    ensure!(
        std::fs::read(path)? == std::fs::read(source)?,
        "{} differs from {}",
        path.display(),
        source.display()
    );
    Ok(())
}

/// Checks the node after an install.
fn check_installed(node: &NodeFixture, work: &Path) -> anyhow::Result<()> {
    let root = &node.root;
    for name in BINARIES {
        check_placed(
            &root.join("opt/coffer/bin").join(name),
            &node.payload.join("bin").join(name),
            0o755,
        )?;
    }
    for name in ["containerd-shim-coffer-v2", "coffer"] {
        let link = std::fs::read_link(root.join("usr/local/bin").join(name))?;
        ensure!(
            link == Path::new("/opt/coffer/bin").join(name),
            "{name} links to {}",
            link.display()
        );
    }
    for name in GUEST_FILES {
        check_placed(
            &root.join("opt/coffer/share/guest").join(name),
            &node.payload.join("guest").join(name),
            0o644,
        )?;
    }
    for (_, file) in HANDLERS {
        let path = root.join("etc/coffer").join(file);
        ensure!(
            std::fs::read(&path)? == std::fs::read(deploy().join("node").join(file))?,
            "{} differs from deploy/node/{file}",
            path.display()
        );
        ensure!(std::fs::metadata(&path)?.permissions().mode() & 0o7777 == 0o644);
        RuntimeConfig::load(&path)?;
    }
    let config = root.join("etc/containerd/config.toml");
    let text = std::fs::read_to_string(&config)?;
    ensure!(
        text.matches("# >>> coffer runtimes").count() == 1
            && text.matches("# <<< coffer runtimes <<<").count() == 1,
        "config.toml has not exactly one coffer block:\n{text}"
    );
    let view = containerd_view(&config, work)?;
    let runtimes = &view["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    for (handler, file) in HANDLERS {
        ensure!(
            runtimes[*handler]["runtime_type"] == SHIM_RUNTIME_TYPE
                && runtimes[*handler]["options"]["ConfigPath"]
                    == format!("/etc/coffer/{file}").as_str(),
            "containerd sees {handler} as {}",
            runtimes[*handler]
        );
    }
    Ok(())
}

/// A node with a containerd config of its own (no final newline, to make byte-exactness hard)
/// and SEV-SNP enabled in KVM: install, install again, uninstall.
fn node_install_roundtrip(work: &Path) -> anyhow::Result<()> {
    let node = NodeFixture::new(work, "node-existing")?;
    let config = node.root.join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap())?;
    let original = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = true";
    std::fs::write(&config, original)?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
    std::fs::create_dir_all(node.root.join("sys/module/kvm_amd/parameters"))?;
    std::fs::write(
        node.root.join("sys/module/kvm_amd/parameters/sev_snp"),
        "Y\n",
    )?;
    std::fs::create_dir_all(node.root.join("usr/local/bin"))?;
    std::fs::write(node.root.join("usr/local/bin/other-tool"), "keep me")?;
    let before = snapshot(&node.root)?;

    node.script_ok("install")?;
    check_installed(&node, work)?;
    ensure!(
        node.restarts() == 1,
        "{} restarts after install",
        node.restarts()
    );
    let view = containerd_view(&config, work)?;
    let cri = &view["plugins"]["io.containerd.grpc.v1.cri"];
    ensure!(
        cri["sandbox_image"] == "registry.k8s.io/pause:3.9"
            && cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] == true,
        "the node's own containerd settings are gone: {cri}"
    );
    ensure!(
        std::fs::metadata(&config)?.permissions().mode() & 0o777 == 0o600,
        "config.toml lost its mode"
    );
    let labels = node.labels();
    ensure!(
        labels.len() == 1
            && labels[0]["coffer.dev/runtime"] == "true"
            && labels[0]["coffer.dev/snp"] == "true"
            && labels[0]["coffer.dev/tdx"].is_null(),
        "labels after install: {labels:?}"
    );
    let installed = snapshot(&node.root)?;

    node.script_ok("install")?;
    let again = snapshot(&node.root)?;
    ensure!(
        again == installed,
        "a second install changed the node:\n{}",
        diff(&installed, &again)
    );
    ensure!(
        node.restarts() == 1,
        "an install that changed nothing restarted containerd"
    );

    node.script_ok("uninstall")?;
    let after = snapshot(&node.root)?;
    ensure!(
        after == before,
        "uninstall did not restore the node:\n{}",
        diff(&before, &after)
    );
    ensure!(
        std::fs::read_to_string(&config)? == original,
        "config.toml is not byte-identical"
    );
    ensure!(
        node.restarts() == 2,
        "{} restarts after uninstall",
        node.restarts()
    );
    let labels = node.labels();
    ensure!(
        labels.last().is_some_and(
            |l| ["coffer.dev/runtime", "coffer.dev/snp", "coffer.dev/tdx"]
                .iter()
                .all(|k| l.get(*k) == Some(&Value::Null))
        ),
        "labels after uninstall: {labels:?}"
    );
    Ok(())
}

/// A node without /etc/containerd: install creates config.toml (and its directory); uninstall
/// removes both.
fn node_without_containerd_config(work: &Path) -> anyhow::Result<()> {
    let node = NodeFixture::new(work, "node-bare")?;
    let before = snapshot(&node.root)?;
    node.script_ok("install")?;
    check_installed(&node, work)?;
    let labels = node.labels();
    ensure!(
        labels.len() == 1
            && labels[0]["coffer.dev/snp"].is_null()
            && labels[0]["coffer.dev/tdx"].is_null(),
        "no TEE here, yet labels {labels:?}"
    );
    node.script_ok("uninstall")?;
    let after = snapshot(&node.root)?;
    ensure!(
        after == before,
        "uninstall did not restore the node:\n{}",
        diff(&before, &after)
    );
    Ok(())
}

/// install.sh refuses, changing nothing, when a file it would write is not its own, when
/// containerd's config is not version 2, or when it defines a coffer runtime itself.
fn node_install_refuses(work: &Path) -> anyhow::Result<()> {
    let runc_coffer = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.coffer]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    for (name, path, contents, want) in [
        (
            "foreign-shim",
            "usr/local/bin/containerd-shim-coffer-v2",
            "someone else's shim",
            "refusing to overwrite",
        ),
        (
            "foreign-config",
            "etc/coffer/runtime.toml",
            "state_dir = \"/x\"\n",
            "refusing to overwrite",
        ),
        (
            "containerd-v1",
            "etc/containerd/config.toml",
            "[plugins.cri]\n",
            "not a containerd config version 2",
        ),
        (
            "own-coffer-runtime",
            "etc/containerd/config.toml",
            runc_coffer,
            "already defines a coffer runtime",
        ),
    ] {
        let node = NodeFixture::new(work, &format!("node-refuse-{name}"))?;
        let file = node.root.join(path);
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(&file, contents)?;
        let before = snapshot(&node.root)?;
        let out = node.script("install")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{name}: install succeeded");
        ensure!(stderr.contains(want), "{name}: {stderr}");
        let after = snapshot(&node.root)?;
        ensure!(
            after == before,
            "{name}: a refused install changed the node:\n{}",
            diff(&before, &after)
        );
        ensure!(
            node.restarts() == 0 && node.labels().is_empty(),
            "{name}: side effects"
        );
    }
    Ok(())
}

// --- the broker ----------------------------------------------------------------------------------

/// The broker's ConfigMap configuration, with its files where the Deployment mounts them, starts
/// the real `coffer-kbs`, and the probe's request (path, port, scheme from the Deployment)
/// answers 200. Also: the shipped policy is the broker's default policy.
fn kbs_serves_its_probe(work: &Path) -> anyhow::Result<()> {
    require_tool("curl");
    let (_, kbs) = rendered(work)?;
    let docs = yaml_docs(&kbs)?;
    let deployment = find(&docs, "Deployment", "coffer-kbs")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(
        pod["securityContext"]["runAsNonRoot"] == true,
        "broker runs as root"
    );
    ensure!(
        container["securityContext"]["readOnlyRootFilesystem"] == true
            && container["securityContext"]["allowPrivilegeEscalation"] == false,
        "broker container securityContext {}",
        container["securityContext"]
    );
    // Lay the volumes out under `mnt` as the kubelet would.
    let mnt = work.join("kbs-mnt");
    for mount in container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?
    {
        let target = mnt.join(
            mount["mountPath"]
                .as_str()
                .context("mountPath")?
                .trim_start_matches('/'),
        );
        std::fs::create_dir_all(&target)?;
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .context("volume of a mount")?;
        let (kind, name) = if let Some(n) = volume["configMap"]["name"].as_str() {
            ("ConfigMap", n)
        } else if let Some(n) = volume["secret"]["secretName"].as_str() {
            ("Secret", n)
        } else {
            continue; // any other volume: an empty directory
        };
        let source = docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("no {kind} {name}"))?;
        for (key, value) in source["data"].as_object().context("data")? {
            let value = value.as_str().context("data value")?;
            let bytes = if kind == "Secret" {
                let mut child = Command::new("base64")
                    .arg("-d")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), value.as_bytes())?;
                child.wait_with_output()?.stdout
            } else {
                value.as_bytes().to_vec()
            };
            std::fs::write(target.join(key), bytes)?;
        }
    }
    let policy = std::fs::read_to_string(mnt.join("etc/coffer-kbs/config/policy.rego"))?;
    ensure!(
        policy
            == std::fs::read_to_string(
                repo().join("attestation/src/kbs/server/default-policy.rego")
            )?,
        "deploy/kbs/policy.rego is not the broker's default policy"
    );
    // The command line's config file, with the node paths moved under `mnt` and a free port.
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(args.first() == Some(&"--config"), "args {args:?}");
    let config_path = mnt.join(args[1].trim_start_matches('/'));
    let settings = toml_json(&config_path)?;
    let listen = settings["http"]["listen"]
        .as_str()
        .context("http.listen")?
        .to_owned();
    let port: u16 = listen.rsplit(':').next().unwrap().parse()?;
    let https = container["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .find(|p| p["containerPort"] == port)
        .with_context(|| format!("no container port {port} (http.listen {listen})"))?;
    let free = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let text = std::fs::read_to_string(&config_path)?
        .replace(&format!("\"{listen}\""), &format!("\"127.0.0.1:{free}\""))
        .replace(
            "\"/etc/coffer-kbs/",
            &format!("\"{}/etc/coffer-kbs/", mnt.display()),
        )
        .replace(
            "\"/var/lib/coffer-kbs/",
            &format!("\"{}/var/lib/coffer-kbs/", mnt.display()),
        );
    // The store: a throwaway PostgreSQL cluster with the role and database the configuration
    // names, the role's password from the db Secret, reached on its Unix socket.
    let pg = coffer_attestation::testing::postgres::Postgres::start()?;
    let connection = settings["store"]["postgres"]["connection"]
        .as_str()
        .context("store.postgres.connection")?;
    let field = |name: &str| {
        connection
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .with_context(|| format!("store.postgres.connection has no {name}"))
    };
    let (role, db) = (field("user")?, field("dbname")?);
    let password = std::fs::read_to_string(mnt.join("etc/coffer-kbs/db/password"))?;
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{}'",
            password.trim_end_matches('\n')
        ),
    )?;
    pg.psql("postgres", &format!("CREATE DATABASE {db} OWNER {role}"))?;
    let text = text.replace(
        &format!("host={} port={}", field("host")?, field("port")?),
        &format!("host={} port=5432", pg.dir().display()),
    );
    let local_config = work.join("kbs-local.toml");
    std::fs::write(&local_config, text)?;
    let mut broker = Command::new(bin("coffer-kbs"))
        .arg("--config")
        .arg(&local_config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("kbs.log"))?)
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let get = &container[probe]["httpGet"];
            ensure!(
                get["scheme"] == "HTTPS",
                "{probe}: scheme {}",
                get["scheme"]
            );
            ensure!(
                get["port"] == https["name"] || get["port"] == port,
                "{probe}: port {} is not the broker's",
                get["port"]
            );
            let path = get["path"].as_str().context("probe path")?;
            let url = format!("https://127.0.0.1:{free}{path}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = Command::new("curl")
                    .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
                    .output()?;
                if String::from_utf8_lossy(&out.stdout) == "200" {
                    break;
                }
                if let Some(status) = broker.try_wait()? {
                    bail!(
                        "coffer-kbs exited ({status}): {}",
                        std::fs::read_to_string(work.join("kbs.log")).unwrap_or_default()
                    );
                }
                ensure!(
                    Instant::now() < deadline,
                    "{probe} {url}: no 200 within 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Without its store the broker is alive but not ready: the readiness probe takes it out
        // of the Service instead of letting it answer stale.
        pg.stop()?;
        let status = |path: &str| -> anyhow::Result<String> {
            let url = format!("https://127.0.0.1:{free}{path}");
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let ready = container["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .context("readiness path")?;
        let live = container["livenessProbe"]["httpGet"]["path"]
            .as_str()
            .context("liveness path")?;
        ensure!(status(ready)? == "503", "{ready} answers without the store");
        ensure!(status(live)? == "200", "{live} fails without the store");
        Ok(())
    })();
    let _ = broker.kill();
    let _ = broker.wait();
    result
}

/// The broker's Deployment is the HA set-up deploy/README.md describes: three replicas spread
/// over nodes, a PodDisruptionBudget leaving two, a Service without session affinity, readiness
/// on the store (`/ready`) and liveness on the process (`/health`), session keys and database
/// password from Secrets, no volume of its own, and the configuration agreeing with the mounts.
fn kbs_is_highly_available(work: &Path) -> anyhow::Result<()> {
    let (_, kbs) = rendered(work)?;
    let docs = yaml_docs(&kbs)?;
    let deployment = find(&docs, "Deployment", "coffer-kbs")?;
    let replicas = deployment["spec"]["replicas"]
        .as_u64()
        .context("replicas")?;
    ensure!(replicas >= 3, "{replicas} replicas");
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    let pdb = find(&docs, "PodDisruptionBudget", "coffer-kbs")?;
    let min = pdb["spec"]["minAvailable"]
        .as_u64()
        .context("minAvailable")?;
    ensure!(
        min >= 2 && min < replicas && pdb["spec"]["selector"]["matchLabels"] == *labels,
        "pdb {}",
        pdb["spec"]
    );
    let service = find(&docs, "Service", "coffer-kbs")?;
    ensure!(
        service["spec"]["sessionAffinity"]
            .as_str()
            .unwrap_or("None")
            == "None",
        "service session affinity {}",
        service["spec"]["sessionAffinity"]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/ready");
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/health");
    let volumes = pod["volumes"].as_array().context("volumes")?;
    ensure!(
        volumes
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none()),
        "a replica has a volume of its own"
    );
    let mount_of_secret = |prefix: &str| -> anyhow::Result<String> {
        let volume = volumes
            .iter()
            .find(|v| {
                v["secret"]["secretName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no volume of Secret {prefix}*"))?;
        let mount = container["volumeMounts"]
            .as_array()
            .context("volumeMounts")?
            .iter()
            .find(|m| m["name"] == volume["name"])
            .with_context(|| format!("Secret {prefix}* not mounted"))?;
        Ok(mount["mountPath"].as_str().context("mountPath")?.to_owned())
    };
    let sessions = mount_of_secret("coffer-kbs-sessions")?;
    let db = mount_of_secret("coffer-kbs-db")?;
    let config = toml_json(&deploy().join("kbs/coffer-kbs.toml"))?;
    let keys: Vec<&str> = config["sessions"]["keys"]
        .as_array()
        .context("sessions.keys")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        keys.len() == 2 && keys.iter().all(|k| k.starts_with(&format!("{sessions}/"))),
        "sessions.keys {keys:?} are not the two keys of the sessions Secret ({sessions})"
    );
    ensure!(
        config["store"]["backend"] == "postgres",
        "store {}",
        config["store"]
    );
    let password_file = config["store"]["postgres"]["password_file"]
        .as_str()
        .context("store.postgres.password_file")?;
    ensure!(
        password_file.starts_with(&format!("{db}/")),
        "password_file {password_file} is not in the db Secret ({db})"
    );
    let tls_ca = config["store"]["postgres"]["tls_ca"]
        .as_str()
        .context("store.postgres.tls_ca: the database is reached over TCP")?;
    ensure!(
        tls_ca.starts_with(&format!("{db}/")),
        "tls_ca {tls_ca} is not in the db Secret ({db})"
    );
    Ok(())
}

/// The shell scripts are shellcheck-clean.
fn scripts_lint() -> anyhow::Result<()> {
    require_tool("shellcheck");
    let mut scripts = vec![
        deploy().join("node/install.sh"),
        repo().join("tests/setup-deploy.sh"),
    ];
    if let Ok(dir) = std::fs::read_dir(repo().join("host/shim/bench")) {
        scripts.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sh")),
        );
    }
    run(Command::new("shellcheck").args(&scripts))?;
    Ok(())
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let mut suite = Suite::new("deploy");
    case!(
        suite,
        "manifests_pass_schema_validation",
        manifests_validate(w)
    );
    case!(
        suite,
        "broken_manifest_fails_validation",
        broken_manifest_fails(w)
    );
    case!(suite, "drop_in_and_runtime_configs_load", node_files_load());
    case!(
        suite,
        "manifests_match_node_files",
        manifests_match_node_files(w)
    );
    case!(
        suite,
        "node_install_idempotent_uninstall_exact",
        node_install_roundtrip(w)
    );
    case!(
        suite,
        "node_without_containerd_config",
        node_without_containerd_config(w)
    );
    case!(
        suite,
        "node_install_refuses_foreign_files",
        node_install_refuses(w)
    );
    case!(
        suite,
        "kbs_config_serves_its_probes",
        kbs_serves_its_probe(w)
    );
    case!(suite, "kbs_is_highly_available", kbs_is_highly_available(w));
    case!(suite, "scripts_pass_shellcheck", scripts_lint());
    suite.finish()
}
