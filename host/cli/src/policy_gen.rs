//! `coffer policy gen POD.yaml`: initdata whose `confidential.rego` policy admits exactly that pod.
//!
//! Each container (init containers first) becomes one policy-data entry (schema:
//! `policies/POLICY-DATA.md`). Image tags are resolved to digests from the registry, and the image
//! config supplies what Kubernetes takes from it (entrypoint, command, environment, working
//! directory, user), following the kubelet's rules:
//!
//! * argv = `command` + `args`; without `command`, the image's `Entrypoint` + (`args`, or the
//!   image's `Cmd` when `args` is absent);
//! * environment = the image's `Env` overridden by the container's `env` values, and the
//!   runtime's default `PATH` and `HOME` (`coffer_runtime::spec::DEFAULT_ENV`) for whichever of
//!   them neither sets; `valueFrom` variables and the variables the kubelet injects (`HOSTNAME`,
//!   `KUBERNETES_*`) may take any value;
//! * fields the Kubernetes API does not define are an error naming their path (`pod_schema`);
//! * user = `runAsUser`/`runAsGroup` (container, then pod), else the image's numeric `User`;
//! * exec = the `exec` commands of liveness, readiness and startup probes;
//! * supplementary groups = the pod's `supplementalGroups` and `fsGroup` (the kubelet adds both;
//!   groups the image's `/etc/group` would add are not consulted: list them there);
//! * a read-only root filesystem where `readOnlyRootFilesystem` asks for one, and the memory limit
//!   (`resources.limits.memory`) as the container's ceiling;
//! * no seccomp profile (Kubernetes' default, `Unconfined`): a `RuntimeDefault` or `Localhost`
//!   profile is written by the node's container runtime, so it cannot be pinned from the
//!   manifest and is refused; no AppArmor or SELinux label (the guest loads no such policy);
//! * logs allowed only with the pod annotation `coffer.dev/allow-logs: "true"`;
//! * the workload identity (a broker-issued SPIFFE SVID) for each container named by a pod
//!   annotation `coffer.dev/workload-identity.<container>: <directory>`: its entry lists the
//!   identity mount, and initdata names the identity `ns/<namespace>/sa/<serviceAccountName>`
//!   (each `default` when absent);
//! * sealed secrets: environment values `sealed.kbs:///…`, and Secret volumes whose Secret (a
//!   further YAML document of the manifest) holds sealed references, each key a sealed file
//!   (`sealed_volumes`).
//!
//! What the policy cannot admit safely is an error, never silently dropped: privileged
//! containers, host namespaces, volumes other than sealed Secrets, `envFrom`, non-numeric users.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::Args;
use coffer_image::RegistriesConfig;
use coffer_image::registry::Registry;
use coffer_initdata::{Algorithm, Entry, Initdata};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sealed_volumes::{Secrets, Volume, VolumeMount};

/// The pod annotation that lets the host read containers' output.
pub const ALLOW_LOGS_ANNOTATION: &str = "coffer.dev/allow-logs";
/// The pod annotation prefix giving a container (named after the prefix) the pod's workload
/// identity in a directory (the annotation's value).
pub const IDENTITY_ANNOTATION_PREFIX: &str = "coffer.dev/workload-identity.";

/// Variables the kubelet sets whose values are only known at run time.
const KUBELET_VARIABLES: [&str; 9] = [
    "HOSTNAME",
    "KUBERNETES_PORT",
    "KUBERNETES_PORT_443_TCP",
    "KUBERNETES_PORT_443_TCP_ADDR",
    "KUBERNETES_PORT_443_TCP_PORT",
    "KUBERNETES_PORT_443_TCP_PROTO",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBERNETES_SERVICE_PORT_HTTPS",
];

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Pod manifest (YAML, `kind: Pod`), optionally with the `kind: Secret` documents its
    /// volumes use (values: sealed references).
    pod: PathBuf,
    /// Registries as the host reaches them to resolve tags; the configuration file and the
    /// plain-HTTP hosts are also placed in initdata (the credentials never are).
    #[command(flatten)]
    registry: crate::oci_image::RegistryArgs,
    /// Key broker URL for the guest.
    #[arg(long)]
    kbs_url: Option<String>,
    /// CA certificate(s) (PEM) the broker's certificate must chain to.
    #[arg(long, value_name = "PEM")]
    kbs_ca: Option<PathBuf>,
    /// What the guest attests with: tee (its hardware, the default) or sample (development on
    /// hosts without a TEE; a TEE guest refuses it, and a broker accepts it only when configured
    /// to).
    #[arg(long, value_parser = ["tee", "sample"], requires = "kbs_url")]
    kbs_evidence: Option<String>,
    /// Image signature policy (containers-policy.json) for the guest.
    #[arg(long)]
    image_policy: Option<PathBuf>,
    /// Digest algorithm: sha256 for SEV-SNP (HOSTDATA), sha384 for TDX (MRCONFIGID).
    #[arg(long, default_value = "sha256", value_parser = parse_algorithm)]
    algorithm: Algorithm,
    /// Write the initdata here instead of stdout.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Print the `io.katacontainers.config.hypervisor.cc_init_data` annotation value instead.
    #[arg(long)]
    annotation: bool,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|e| format!("{e}"))
}

#[derive(Debug, Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    #[serde(default)]
    host_network: bool,
    #[serde(default, rename = "hostPID")]
    host_pid: bool,
    #[serde(default, rename = "hostIPC")]
    host_ipc: bool,
    #[serde(default)]
    share_process_namespace: bool,
    #[serde(default)]
    security_context: SecurityContext,
    #[serde(default)]
    ephemeral_containers: Vec<Value>,
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default)]
    service_account_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    image: String,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    env_from: Vec<Value>,
    working_dir: Option<String>,
    #[serde(default)]
    security_context: SecurityContext,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    volume_devices: Vec<Value>,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    resources: Resources,
    liveness_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    startup_probe: Option<Probe>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value: Option<String>,
    value_from: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    privileged: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    capabilities: Option<CapabilityChanges>,
    read_only_root_filesystem: Option<bool>,
    seccomp_profile: Option<SeccompProfile>,
    #[serde(default)]
    supplemental_groups: Vec<u32>,
    fs_group: Option<u32>,
    se_linux_options: Option<Value>,
    app_armor_profile: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct SeccompProfile {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
struct Resources {
    #[serde(default)]
    limits: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct CapabilityChanges {
    #[serde(default)]
    add: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Probe {
    exec: Option<ExecAction>,
}

#[derive(Debug, Deserialize)]
struct ExecAction {
    #[serde(default)]
    command: Vec<String>,
}

/// The parts of an OCI image config Kubernetes uses.
#[derive(Debug, Default, Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<ImageRunConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// An image resolved from the registry.
struct Resolved {
    pinned: String,
    run: ImageRunConfig,
}

pub async fn generate(args: GenArgs) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.pod)
        .with_context(|| format!("reading {}", args.pod.display()))?;
    let (pod, secrets) = manifest(&text).with_context(|| format!("{}", args.pod.display()))?;
    check_pod(&pod, &secrets)?;

    let (registries, registries_text) = args.registry.load()?;
    let registry = Registry::new(registries.clone(), args.registry.credentials()?)
        .context("setting up the registry client")?;

    let allow_logs = pod
        .metadata
        .annotations
        .get(ALLOW_LOGS_ANNOTATION)
        .is_some_and(|v| v == "true");
    let identities = identity_dirs(&pod)?;
    let mut entries = Vec::new();
    for container in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
        let resolved = resolve(&registry, &container.image)
            .await
            .with_context(|| format!("container {}: image {}", container.name, container.image))?;
        let mut entry = entry(container, &pod.spec, &secrets, &resolved, allow_logs)
            .with_context(|| format!("container {}", container.name))?;
        if let (Some(dir), Some(mounts)) = (
            identities.get(&container.name),
            entry["mounts"].as_array_mut(),
        ) {
            mounts.push(json!({
                "destination": dir,
                "source": "spiffe",
                "type": coffer_runtime::spec::IDENTITY_MOUNT_TYPE,
                "options": [],
            }));
        }
        entries.push(entry);
        eprintln!("coffer: container {} → {}", container.name, resolved.pinned);
    }
    let data = serde_json::to_string_pretty(&json!({ "containers": entries }))?;

    let mut initdata_entries = BTreeMap::from([
        (
            Entry::Policy,
            coffer_policies::CONFIDENTIAL_POLICY.to_owned(),
        ),
        (Entry::PolicyData, data),
    ]);
    if !identities.is_empty() {
        let name = |value: &Option<String>| value.clone().unwrap_or_else(|| "default".into());
        initdata_entries.insert(
            Entry::WorkloadIdentity,
            format!(
                "ns/{}/sa/{}",
                name(&pod.metadata.namespace),
                name(&pod.spec.service_account_name)
            ),
        );
        ensure!(
            args.kbs_url.is_some(),
            "the pod asks for a workload identity ({IDENTITY_ANNOTATION_PREFIX}…): it comes from the key broker, so pass --kbs-url"
        );
    }
    if let Some(url) = &args.kbs_url {
        initdata_entries.insert(Entry::KbsUrl, url.clone());
    }
    if let Some(evidence) = &args.kbs_evidence {
        initdata_entries.insert(Entry::KbsEvidence, evidence.clone());
    }
    if let Some(path) = &args.kbs_ca {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            pem.contains("-----BEGIN CERTIFICATE-----"),
            "--kbs-ca {} holds no PEM certificate",
            path.display()
        );
        initdata_entries.insert(Entry::KbsCa, pem);
    }
    if let Some(path) = &args.image_policy {
        let policy =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        coffer_image::Policy::from_json(&policy, base)
            .with_context(|| format!("image policy {}", path.display()))?;
        initdata_entries.insert(Entry::ImagePolicy, policy);
    }
    let registries_entry = if args.registry.insecure_hosts().is_empty() {
        registries_text
    } else {
        Some(toml_of(&registries)?)
    };
    if let Some(text) = registries_entry {
        initdata_entries.insert(Entry::Registries, text);
    }

    let initdata =
        Initdata::build(args.algorithm, &initdata_entries).context("rendering initdata")?;
    let output = if args.annotation {
        format!("{}\n", initdata.to_annotation())
    } else {
        String::from_utf8_lossy(initdata.raw()).into_owned()
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, &output).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{output}"),
    }
    eprintln!(
        "coffer: initdata for pod {} ({} containers): {}",
        if pod.metadata.name.is_empty() {
            "<unnamed>"
        } else {
            &pod.metadata.name
        },
        entries.len(),
        initdata.digest()
    );
    Ok(0)
}

fn toml_of(config: &RegistriesConfig) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    for entry in &config.registries {
        ensure!(
            entry.mirrors.is_empty() && entry.lookaside.is_none(),
            "combine --insecure-registry with a --registry-config file that lists it instead"
        );
        lines.push(format!(
            "[[registry]]\nhost = {:?}\ninsecure = {}\n",
            entry.host, entry.insecure
        ));
    }
    ensure!(
        config.ca_files.is_empty(),
        "CA files cannot be carried in initdata by path"
    );
    let text = lines.join("\n");
    RegistriesConfig::from_toml(&text).context("rendering the registry config")?;
    Ok(text)
}

/// The manifest's Pod and the Secrets it came with.
fn manifest(text: &str) -> anyhow::Result<(Pod, Secrets)> {
    let mut pod = None;
    let mut secrets = Secrets::default();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("YAML document {}", i + 1))?;
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(Value::as_str) {
            Some("Pod") => {
                ensure!(pod.is_none(), "holds more than one Pod");
                crate::pod_schema::check_pod(&value)
                    .with_context(|| format!("document {} is not a valid Pod", i + 1))?;
                pod = Some(
                    serde_json::from_value::<Pod>(value)
                        .with_context(|| format!("document {} is not a valid Pod", i + 1))?,
                );
            }
            Some("Secret") => secrets.add(
                serde_json::from_value(value)
                    .with_context(|| format!("document {} is not a valid Secret", i + 1))?,
            )?,
            kind => bail!(
                "document {} is {}; policy gen takes a Pod and its Secrets (for a Deployment, \
                 use its pod template as a Pod)",
                i + 1,
                match kind {
                    Some(kind) => format!("of kind {}", coffer_log::escaped_prefix(kind, 60)),
                    None => "without a kind".to_owned(),
                }
            ),
        }
    }
    let pod = pod.context("holds no Pod")?;
    Ok((pod, secrets))
}

/// Pod-level settings the confidential policy never admits.
fn check_pod(pod: &Pod, secrets: &Secrets) -> anyhow::Result<()> {
    let spec = &pod.spec;
    for (set, what) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
        (spec.share_process_namespace, "shareProcessNamespace"),
    ] {
        ensure!(
            !set,
            "pod sets {what}: a confidential pod cannot share namespaces outside its containers"
        );
    }
    ensure!(
        spec.ephemeral_containers.is_empty(),
        "pod has ephemeralContainers: they cannot be pinned in advance"
    );
    ensure!(!spec.containers.is_empty(), "pod has no containers");
    let mut names = BTreeSet::new();
    for c in spec.init_containers.iter().chain(&spec.containers) {
        ensure!(
            names.insert(&c.name),
            "container name {} is used twice",
            c.name
        );
        check_container(c, spec)
            .and_then(|()| {
                crate::sealed_volumes::sealed_files(&c.volume_mounts, &spec.volumes, secrets)
                    .map(drop)
            })
            .with_context(|| format!("container {}", c.name))?;
    }
    Ok(())
}

/// Container settings the confidential policy never admits (checked before any registry access).
fn check_container(c: &Container, pod: &PodSpec) -> anyhow::Result<()> {
    let sc = &c.security_context;
    let psc = &pod.security_context;
    let seccomp = sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref());
    if let Some(profile) = seccomp.filter(|p| p.kind != "Unconfined") {
        bail!(
            "seccompProfile {}: the node's container runtime writes that profile, so it cannot be pinned from the manifest (use Unconfined, or list the profile in the policy data by hand)",
            profile.kind
        );
    }
    ensure!(
        sc.se_linux_options.is_none()
            && psc.se_linux_options.is_none()
            && sc.app_armor_profile.is_none()
            && psc.app_armor_profile.is_none(),
        "seLinuxOptions/appArmorProfile name policies the guest does not load"
    );
    ensure!(
        c.security_context.privileged != Some(true),
        "privileged containers cannot be admitted in confidential mode"
    );
    ensure!(
        c.volume_devices.is_empty(),
        "volumeDevices cannot be admitted: a host block device's contents cannot be pinned"
    );
    ensure!(
        c.env_from.is_empty(),
        "envFrom cannot be pinned (its variable names come from the host at run time); list the variables in env"
    );
    Ok(())
}

async fn resolve(registry: &Registry, image: &str) -> anyhow::Result<Resolved> {
    let fetched = crate::oci_image::fetch_image(registry, image).await?;
    let run = run_config(&fetched.config).with_context(|| {
        format!(
            "the config of image {}",
            coffer_log::escaped_prefix(image, 200)
        )
    })?;
    Ok(Resolved {
        pinned: format!("{}@{}", repository_of(image), fetched.digest),
        run,
    })
}

/// The run configuration of an image config, its `Env` checked as the guest agent checks it at
/// run time (REG-04): an entry without `=` is refused here rather than pinned into a policy whose
/// container could never start.
fn run_config(config: &[u8]) -> anyhow::Result<ImageRunConfig> {
    let file: ImageConfigFile =
        serde_json::from_slice(config).context("the image config is not valid JSON")?;
    let run = file.config.unwrap_or_default();
    if let Some(bad) = run.env.iter().flatten().find(|var| !var.contains('=')) {
        bail!(
            "its Env entry \"{}\" has no '=' (NAME=VALUE); the guest refuses it at run time",
            coffer_log::escaped_prefix(bad, 60)
        );
    }
    Ok(run)
}

/// `host/repo:tag@sha256:…` → `host/repo` (the reference as written, without tag or digest).
fn repository_of(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// The identity directory of each container a `coffer.dev/workload-identity.<container>`
/// annotation names.
fn identity_dirs(pod: &Pod) -> anyhow::Result<BTreeMap<String, String>> {
    let mut dirs = BTreeMap::new();
    for (key, dir) in &pod.metadata.annotations {
        let Some(name) = key.strip_prefix(IDENTITY_ANNOTATION_PREFIX) else {
            continue;
        };
        ensure!(
            pod.spec
                .init_containers
                .iter()
                .chain(&pod.spec.containers)
                .any(|c| c.name == name),
            "annotation {key}: the pod has no container {name:?}"
        );
        ensure!(
            dir.starts_with('/') && dir.len() > 1 && !dir.split('/').any(|p| p == ".."),
            "annotation {key}: {dir:?} is not an absolute directory other than /"
        );
        dirs.insert(name.to_owned(), dir.clone());
    }
    Ok(dirs)
}

fn entry(
    c: &Container,
    pod: &PodSpec,
    secret_docs: &Secrets,
    image: &Resolved,
    allow_logs: bool,
) -> anyhow::Result<Value> {
    let sc = &c.security_context;
    let psc = &pod.security_context;

    let args: Vec<String> = match &c.command {
        Some(command) => command
            .iter()
            .chain(c.args.iter().flatten())
            .cloned()
            .collect(),
        None => {
            let entrypoint = image.run.entrypoint.iter().flatten();
            match &c.args {
                Some(args) => entrypoint.chain(args).cloned().collect(),
                None => entrypoint
                    .chain(image.run.cmd.iter().flatten())
                    .cloned()
                    .collect(),
            }
        }
    };
    ensure!(
        !args.is_empty(),
        "neither the pod nor the image gives a command"
    );

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in image.run.env.iter().flatten() {
        // `run_config` refused entries without `=`.
        if let Some((name, value)) = var.split_once('=') {
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    let mut any_value: BTreeSet<String> =
        KUBELET_VARIABLES.iter().map(|v| (*v).to_owned()).collect();
    for var in &c.env {
        match (&var.value, &var.value_from) {
            (_, Some(_)) => {
                env.remove(&var.name);
                any_value.insert(var.name.clone());
            }
            (value, None) => {
                env.insert(var.name.clone(), value.clone().unwrap_or_default());
            }
        }
    }
    // What the runtime adds to every process (`sandbox run`; containerd for the shim) for the
    // variables neither the image nor the pod sets.
    for var in coffer_runtime::spec::default_env(|k| env.contains_key(k) || any_value.contains(k)) {
        let (name, value) = var.split_once('=').unwrap_or((&var, ""));
        env.insert(name.to_owned(), value.to_owned());
    }
    // Sealed values (`sealed.kbs:///…`) and sealed files name the broker secrets this container
    // may receive; each file is a mount pinned to its destination.
    let files = crate::sealed_volumes::sealed_files(&c.volume_mounts, &pod.volumes, secret_docs)?;
    let secrets: BTreeSet<String> = env
        .values()
        .filter_map(|v| v.strip_prefix("sealed."))
        .map(str::to_owned)
        .chain(files.iter().map(|(_, r)| r.clone()))
        .collect();
    let mounts: Vec<Value> = files
        .iter()
        .map(|(destination, reference)| {
            json!({
                "destination": destination,
                "source": reference,
                "type": coffer_runtime::spec::SEALED_MOUNT_TYPE,
                "options": [],
            })
        })
        .collect();
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    let (image_uid, image_gid) = image_user(image.run.user.as_deref())?;
    let uid = sc
        .run_as_user
        .or(psc.run_as_user)
        .or(image_uid)
        .unwrap_or(0);
    let gid = match sc.run_as_group.or(psc.run_as_group).or(image_gid) {
        Some(gid) => gid,
        None if uid == 0 => 0,
        None => bail!(
            "user {uid} has no group: set runAsGroup (the image's /etc/group is not consulted)"
        ),
    };
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| image.run.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_owned());

    let capabilities: Vec<String> = sc
        .capabilities
        .iter()
        .flat_map(|c| &c.add)
        .map(|cap| {
            let upper = cap.to_ascii_uppercase();
            if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            }
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The kubelet gives the process the pod's supplementary groups and fsGroup; containerd adds
    // the primary group, which the policy always allows.
    let additional_gids: BTreeSet<u32> = psc
        .supplemental_groups
        .iter()
        .copied()
        .chain(psc.fs_group)
        .filter(|g| *g != gid)
        .collect();
    let mut resources = serde_json::Map::new();
    if let Some(memory) = c.resources.limits.get("memory") {
        let text = match memory {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => bail!("resources.limits.memory is not a quantity"),
        };
        resources.insert("memory_limit".into(), json!(memory_bytes(&text)?));
    }
    let exec: Vec<&Vec<String>> = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
        .filter_map(|p| p.exec.as_ref().map(|e| &e.command))
        .filter(|command| !command.is_empty())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut entry = json!({
        "name": c.name,
        "image": image.pinned,
        "args": args,
        "env": env,
        "env_names_any_value": any_value,
        "secrets": secrets,
        "mounts": mounts,
        "cwd": cwd,
        "user": {"uid": uid, "gid": gid},
        "terminal": c.tty,
        "capabilities": capabilities,
        "allow_privilege_escalation": sc.allow_privilege_escalation.unwrap_or(true),
        "exec": exec,
        "logs": allow_logs,
        "stdin": c.stdin,
        "additional_gids": additional_gids,
        "readonly_rootfs": sc.read_only_root_filesystem.unwrap_or(false),
    });
    if !resources.is_empty()
        && let Some(object) = entry.as_object_mut()
    {
        object.insert("resources".into(), Value::Object(resources));
    }
    Ok(entry)
}

/// A Kubernetes memory quantity (`128Mi`, `1G`, `1.5Gi`, `268435456`, `129e6`) in bytes, rounded
/// up as the kubelet does.
fn memory_bytes(quantity: &str) -> anyhow::Result<u64> {
    let q = quantity.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (number, scale) = suffixes
        .iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((q, 1.0));
    let valid = !number.is_empty()
        && number
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| valid && v.is_finite() && *v >= 0.0)
        .with_context(|| format!("memory limit {quantity:?} is not a quantity"))?;
    let bytes = (value * scale).ceil();
    ensure!(bytes <= 9.0e18, "memory limit {quantity:?} is out of range");
    Ok(bytes as u64)
}

/// The image config's `User` as numeric ids; names cannot be resolved without the image's files.
fn image_user(user: Option<&str>) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok((None, None));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let parse = |s: &str| {
        s.parse::<u32>().map_err(|_| {
            anyhow::anyhow!(
                "the image runs as user {user:?}; names cannot be resolved here: set runAsUser/runAsGroup"
            )
        })
    };
    Ok((Some(parse(u)?), g.map(parse).transpose()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(
            repository_of("127.0.0.1:5000/peers/hello:signed"),
            "127.0.0.1:5000/peers/hello"
        );
        assert_eq!(
            repository_of("127.0.0.1:5000/peers/hello"),
            "127.0.0.1:5000/peers/hello"
        );
        assert_eq!(repository_of("busybox@sha256:abc"), "busybox");
        assert_eq!(repository_of("r.io/a/b:1@sha256:abc"), "r.io/a/b");
    }

    #[test]
    fn memory_quantities_are_bytes() {
        for (q, bytes) in [
            ("268435456", 268_435_456),
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("129e6", 129_000_000),
            ("100k", 100_000),
        ] {
            assert_eq!(memory_bytes(q).unwrap(), bytes, "{q}");
        }
        for bad in ["", "Mi", "12Q", "-1Gi", "1..2", "nan"] {
            assert!(memory_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_user_is_numeric_only() {
        assert_eq!(image_user(None).unwrap(), (None, None));
        assert_eq!(
            image_user(Some("1000:100")).unwrap(),
            (Some(1000), Some(100))
        );
        assert_eq!(image_user(Some("1000")).unwrap(), (Some(1000), None));
        assert!(image_user(Some("nobody")).is_err());
    }

    #[test]
    fn identity_annotations_name_containers_and_directories() {
        let pod = |annotation: &str| {
            manifest(&format!(
                "kind: Pod\nmetadata: {{name: p, annotations: {{{annotation}}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\n"
            ))
            .unwrap()
            .0
        };
        assert_eq!(
            identity_dirs(&pod("coffer.dev/workload-identity.app: /run/spiffe")).unwrap(),
            BTreeMap::from([("app".to_owned(), "/run/spiffe".to_owned())])
        );
        assert!(
            identity_dirs(&pod("coffer.dev/allow-logs: \"true\""))
                .unwrap()
                .is_empty()
        );
        for (annotation, why) in [
            (
                "coffer.dev/workload-identity.web: /run/spiffe",
                "no container \"web\"",
            ),
            (
                "coffer.dev/workload-identity.app: run",
                "not an absolute directory",
            ),
            (
                "coffer.dev/workload-identity.app: /",
                "not an absolute directory",
            ),
            (
                "coffer.dev/workload-identity.app: /a/../etc",
                "not an absolute directory",
            ),
        ] {
            let err = identity_dirs(&pod(annotation)).unwrap_err().to_string();
            assert!(err.contains(why), "{annotation}: {err}");
        }
    }

    #[test]
    fn reg07_image_env_entries_without_equals_are_refused() {
        let config = |env: &str| format!(r#"{{"config":{{"Env":{env},"Cmd":["/app"]}}}}"#);
        let run = run_config(config(r#"["A=1","B=","C=x=y"]"#).as_bytes()).unwrap();
        assert_eq!(run.env.unwrap(), ["A=1", "B=", "C=x=y"]);
        assert!(run_config(br#"{"config":{}}"#).unwrap().env.is_none());
        let long = format!("\\u001b[31m{}", "N".repeat(500));
        for (entry, quoted) in [
            ("PATH", "\"PATH\""),
            ("", "\"\""),
            (long.as_str(), "\"\\u{1b}[31mNNN"),
        ] {
            let err = run_config(config(&format!(r#"["A=1","{entry}"]"#)).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(quoted), "{err}");
            assert!(err.contains("has no '='"), "{err}");
            assert!(err.len() < 200, "{err}");
        }
    }

    #[test]
    fn manifest_is_one_pod_and_its_secrets() {
        let pod = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: x}]}\n";
        let secret =
            "kind: Secret\nmetadata: {name: s}\nstringData: {k: \"sealed.kbs:///a/b/c\"}\n";
        let (p, secrets) = manifest(&format!("{pod}---\n{secret}---\n")).unwrap();
        assert_eq!(p.metadata.name, "p");
        let volumes: Vec<Volume> =
            serde_norway::from_str("[{name: v, secret: {secretName: s}}]").unwrap();
        let mounts: Vec<VolumeMount> =
            serde_norway::from_str("[{name: v, mountPath: /m}]").unwrap();
        assert_eq!(
            crate::sealed_volumes::sealed_files(&mounts, &volumes, &secrets).unwrap(),
            vec![("/m/k".to_owned(), "kbs:///a/b/c".to_owned())]
        );
        for (text, why) in [
            (format!("{pod}---\n{pod}"), "more than one Pod"),
            (secret.to_owned(), "holds no Pod"),
            (
                format!("{pod}---\nkind: Deployment\n"),
                "use its pod template",
            ),
            (format!("{pod}---\n{secret}---\n{secret}"), "appears twice"),
        ] {
            let err = format!("{:#}", manifest(&text).unwrap_err());
            assert!(err.contains(why), "{err}");
        }
    }
}
