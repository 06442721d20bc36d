//! The closed container spec: the host's OCI runtime spec decoded into the policy's
//! [`CreateContainer`](pol::CreateContainer) (and an exec's process into
//! [`Process`](pol::Process)), and the `config.json` the OCI runtime runs rendered from that value
//! alone.
//!
//! # Closed
//!
//! The model holds every field the guest honours. Decoding walks the host's JSON itself (not a
//! lenient OCI type that would drop what it does not know): a member outside the model whose value
//! is not its default (`null`, `false`, `0`, `""`, `[]`, or an object of defaults) refuses the
//! request with [`SpecError::Unsupported`] naming it, e.g. `linux.personality` or
//! `process.ioPriority` — never dropped, never passed through. Values inside the model are
//! checked here too (names libcontainer could not read, a soft rlimit over its hard one, a
//! namespace type listed twice, a cgroup file that is not one), so the policy decides on values
//! that mean one thing.
//!
//! Two members are the guest's to choose and their host values are ignored: `root.path` (the
//! guest's rootfs) and `linux.cgroupsPath` (the agent's cgroup). `ociVersion` is the document's
//! version, not a setting.
//!
//! # Rendered
//!
//! [`render_container`] writes every modelled field explicitly (an empty capability set is `[]`,
//! which the runtime applies as "none", where an absent one would keep the runtime's own), so the
//! runtime's view of the rendered document decodes back to the authorized value (the property
//! test below checks that through `oci_spec`, libcontainer's reader).

use std::collections::BTreeMap;

use coffer_policies as pol;
use serde_json::{Map, Value, json};
use thiserror::Error;

/// A spec the guest does not run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// A member outside the model is set.
    #[error("oci spec field {field} is not supported in the guest (only its default is accepted)")]
    Unsupported {
        /// Its path, e.g. `linux.personality`.
        field: String,
    },
    /// A modelled member has a value the guest does not accept.
    #[error("oci spec field {field} {reason}")]
    Invalid {
        /// Its path, e.g. `process.rlimits[0].soft`.
        field: String,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: if field.is_empty() {
            "(document)".to_owned()
        } else {
            field.to_owned()
        },
        reason: reason.into(),
    }
}

/// Whether `value` is a JSON default: `null`, `false`, `0`, `""`, `[]`, or an object of defaults.
fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_default),
    }
}

/// One JSON object being decoded: members are taken as the model reads them; [`Object::finish`]
/// refuses whatever is left unless it is at its default.
struct Object {
    path: String,
    members: Map<String, Value>,
}

impl Object {
    fn new(path: String, value: Value) -> Result<Self, SpecError> {
        match value {
            Value::Object(members) => Ok(Self { path, members }),
            Value::Null => Ok(Self {
                path,
                members: Map::new(),
            }),
            _ => Err(invalid(&path, "must be an object")),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The member `key` (`None` when absent or `null`) and its path.
    fn take(&mut self, key: &str) -> (String, Option<Value>) {
        let field = self.field(key);
        (field, self.members.remove(key).filter(|v| !v.is_null()))
    }

    /// A member the guest chooses itself: its value, whatever it is, is not used.
    fn ignore(&mut self, key: &str) {
        self.members.remove(key);
    }

    fn object(&mut self, key: &str) -> Result<Self, SpecError> {
        let (field, value) = self.take(key);
        Self::new(field, value.unwrap_or(Value::Null))
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, SpecError> {
        match self.take(key) {
            (_, None) => Ok(None),
            (_, Some(Value::String(s))) => Ok(Some(s)),
            (field, Some(_)) => Err(invalid(&field, "must be a string")),
        }
    }

    /// A string whose empty value means "not set".
    fn label(&mut self, key: &str) -> Result<Option<String>, SpecError> {
        Ok(self.string(key)?.filter(|s| !s.is_empty()))
    }

    fn required_string(&mut self, key: &str) -> Result<String, SpecError> {
        let field = self.field(key);
        self.string(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(&field, "is required"))
    }

    fn bool(&mut self, key: &str) -> Result<bool, SpecError> {
        match self.take(key) {
            (_, None) => Ok(false),
            (_, Some(Value::Bool(b))) => Ok(b),
            (field, Some(_)) => Err(invalid(&field, "must be a boolean")),
        }
    }

    fn number<T: TryFrom<i128>>(&mut self, key: &str) -> Result<Option<T>, SpecError> {
        match self.take(key) {
            (_, None) => Ok(None),
            (field, Some(value)) => number(&field, &value).map(Some),
        }
    }

    fn strings(&mut self, key: &str) -> Result<Vec<String>, SpecError> {
        self.array(key)?
            .into_iter()
            .map(|(field, value)| match value {
                Value::String(s) => Ok(s),
                _ => Err(invalid(&field, "must be a string")),
            })
            .collect()
    }

    /// The elements of an array member, each with its path.
    fn array(&mut self, key: &str) -> Result<Vec<(String, Value)>, SpecError> {
        match self.take(key) {
            (_, None) => Ok(Vec::new()),
            (field, Some(Value::Array(items))) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("{field}[{i}]"), v))
                .collect()),
            (field, Some(_)) => Err(invalid(&field, "must be an array")),
        }
    }

    fn string_map(&mut self, key: &str) -> Result<BTreeMap<String, String>, SpecError> {
        let (field, value) = self.take(key);
        let Some(value) = value else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(members) = value else {
            return Err(invalid(&field, "must be an object of strings"));
        };
        members
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(invalid(&format!("{field}.{k}"), "must be a string")),
            })
            .collect()
    }

    /// Refuses the first member left that is not at its default, named down to the innermost
    /// object member that is set (`hooks.prestart`, `linux.personality.domain`).
    fn finish(self) -> Result<(), SpecError> {
        let Some(mut set) = self.members.iter().find(|(_, v)| !is_default(v)) else {
            return Ok(());
        };
        let mut field = self.path.clone();
        loop {
            let (key, value) = set;
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(key);
            match value {
                Value::Object(inner) => match inner.iter().find(|(_, v)| !is_default(v)) {
                    Some(next) => set = next,
                    None => break,
                },
                _ => break,
            }
        }
        Err(SpecError::Unsupported { field })
    }
}

fn number<T: TryFrom<i128>>(field: &str, value: &Value) -> Result<T, SpecError> {
    let n = match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    };
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| invalid(field, "must be an integer in range"))
}

/// Checks that `name` is a value of the OCI enum `T` (as libcontainer reads it); its canonical
/// spelling.
fn oci_name<T: serde::de::DeserializeOwned + serde::Serialize>(
    field: &str,
    name: &str,
    what: &str,
) -> Result<String, SpecError> {
    serde_json::from_value::<T>(Value::String(name.to_owned()))
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or_else(|| invalid(field, format!("{name:?} is not {what}")))
}

/// Decodes a `CreateContainer`'s OCI runtime spec (`json`, size already checked) into the
/// closed model, for container `container_id` with root filesystem `rootfs`.
pub fn decode_container(
    container_id: &str,
    rootfs: pol::Rootfs,
    json: &[u8],
) -> Result<pol::CreateContainer, SpecError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| invalid("", format!("is not a valid document: {e}")))?;
    let mut top = Object::new(String::new(), value)?;
    if !matches!(top.members.get("process"), Some(Value::Object(_))) {
        return Err(invalid("process", "is required"));
    }
    // The document's version, not a setting.
    top.ignore("ociVersion");
    let mut root = top.object("root")?;
    root.ignore("path");
    let root_readonly = root.bool("readonly")?;
    root.finish()?;
    let mounts = top
        .array("mounts")?
        .into_iter()
        .map(|(field, v)| decode_mount(Object::new(field, v)?))
        .collect::<Result<_, _>>()?;
    let process = decode_process_object(top.object("process")?)?;
    let hostname = top.label("hostname")?;
    let domainname = top.label("domainname")?;
    let annotations = top.string_map("annotations")?;

    let mut linux = top.object("linux")?;
    // The agent's cgroup, always.
    linux.ignore("cgroupsPath");
    let namespaces = decode_namespaces(&mut linux)?;
    let devices = linux
        .array("devices")?
        .into_iter()
        .map(|(field, v)| decode_device(Object::new(field, v)?))
        .collect::<Result<_, _>>()?;
    let (device_cgroup, resources) = decode_resources(linux.object("resources")?)?;
    let sysctls = linux.string_map("sysctl")?;
    let masked_paths = linux.strings("maskedPaths")?;
    let readonly_paths = linux.strings("readonlyPaths")?;
    let seccomp = match linux.take("seccomp") {
        (_, None) => None,
        (field, Some(v)) => Some(decode_seccomp(Object::new(field, v)?)?),
    };
    let mount_label = linux.label("mountLabel")?;
    linux.finish()?;
    top.finish()?;

    Ok(pol::CreateContainer {
        container_id: container_id.to_owned(),
        rootfs,
        process,
        namespaces,
        mounts,
        devices,
        device_cgroup,
        hooks_present: false,
        sysctls,
        masked_paths,
        readonly_paths,
        hostname,
        domainname,
        root_readonly,
        annotations,
        seccomp,
        resources,
        mount_label,
    })
}

/// Decodes an `ExecProcess`'s OCI process document (`json`, size already checked).
pub fn decode_process(json: &[u8]) -> Result<pol::Process, SpecError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| invalid("", format!("is not a valid document: {e}")))?;
    decode_process_object(Object::new("process".to_owned(), value)?)
}

fn decode_process_object(mut p: Object) -> Result<pol::Process, SpecError> {
    let terminal = p.bool("terminal")?;
    let console_size = match p.take("consoleSize") {
        (_, None) => None,
        (field, Some(v)) => {
            let mut size = Object::new(field, v)?;
            let height = size.number("height")?.unwrap_or(0);
            let width = size.number("width")?.unwrap_or(0);
            size.finish()?;
            Some(pol::ConsoleSize { height, width })
        }
    };
    let user = decode_user(p.object("user")?)?;
    let args_field = p.field("args");
    let args = p.strings("args")?;
    if args.first().is_none_or(String::is_empty) {
        return Err(invalid(&args_field, "must name a program"));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(invalid(
            &format!("{args_field}[{i}]"),
            "contains a NUL byte",
        ));
    }
    // The environment is passed to the process as this exact list (REG-04): entries execve
    // cannot carry as they are (a NUL ends the string early) or that name no variable are
    // refused rather than read one way by the policy and another by the process.
    let env_field = p.field("env");
    let env = p.strings("env")?;
    for (i, var) in env.iter().enumerate() {
        let problem = match var.split_once('=') {
            _ if var.contains('\0') => "contains a NUL byte",
            None => "must be NAME=VALUE",
            Some(("", _)) => "names no variable (empty before =)",
            Some(_) => continue,
        };
        return Err(invalid(&format!("{env_field}[{i}]"), problem));
    }
    let cwd_field = p.field("cwd");
    let cwd = p.required_string("cwd")?;
    if !cwd.starts_with('/') {
        return Err(invalid(&cwd_field, "must be an absolute path"));
    }
    let capabilities = decode_capabilities(p.object("capabilities")?)?;
    let rlimits = decode_rlimits(&mut p)?;
    let no_new_privileges = p.bool("noNewPrivileges")?;
    let apparmor_profile = p.label("apparmorProfile")?;
    let oom_field = p.field("oomScoreAdj");
    let oom_score_adj: Option<i32> = p.number("oomScoreAdj")?;
    if oom_score_adj.is_some_and(|v| !(-1000..=1000).contains(&v)) {
        return Err(invalid(&oom_field, "must be in -1000..=1000"));
    }
    let selinux_label = p.label("selinuxLabel")?;
    p.finish()?;
    Ok(pol::Process {
        args,
        env,
        cwd,
        user,
        terminal,
        capabilities,
        no_new_privileges,
        rlimits,
        oom_score_adj,
        apparmor_profile,
        selinux_label,
        console_size,
    })
}

fn decode_user(mut u: Object) -> Result<pol::User, SpecError> {
    let uid = u.number("uid")?.unwrap_or(0);
    let gid = u.number("gid")?.unwrap_or(0);
    let umask_field = u.field("umask");
    let umask: Option<u32> = u.number("umask")?;
    if umask.is_some_and(|m| m > 0o777) {
        return Err(invalid(&umask_field, "must be at most 0o777"));
    }
    let additional_gids = u
        .array("additionalGids")?
        .into_iter()
        .map(|(field, v)| number(&field, &v))
        .collect::<Result<_, _>>()?;
    u.finish()?;
    Ok(pol::User {
        uid,
        gid,
        additional_gids,
        umask,
    })
}

fn decode_capabilities(mut c: Object) -> Result<pol::Capabilities, SpecError> {
    let mut set = |key: &str| -> Result<Vec<String>, SpecError> {
        let mut names = c
            .array(key)?
            .into_iter()
            .map(|(field, v)| match v {
                Value::String(name) if name.starts_with("CAP_") => {
                    oci_name::<oci_spec::runtime::Capability>(&field, &name, "a capability")
                }
                _ => Err(invalid(&field, "must be a capability name CAP_…")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        names.dedup();
        Ok(names)
    };
    let capabilities = pol::Capabilities {
        bounding: set("bounding")?,
        effective: set("effective")?,
        permitted: set("permitted")?,
        inheritable: set("inheritable")?,
        ambient: set("ambient")?,
    };
    c.finish()?;
    Ok(capabilities)
}

fn decode_rlimits(p: &mut Object) -> Result<Vec<pol::Rlimit>, SpecError> {
    let mut rlimits: Vec<pol::Rlimit> = Vec::new();
    for (field, v) in p.array("rlimits")? {
        let mut r = Object::new(field.clone(), v)?;
        let type_field = r.field("type");
        let kind = r.required_string("type")?;
        let kind = oci_name::<oci_spec::runtime::PosixRlimitType>(
            &type_field,
            &kind,
            "a resource limit (RLIMIT_…)",
        )?;
        let hard = r.number("hard")?.unwrap_or(0);
        let soft = r.number("soft")?.unwrap_or(0);
        r.finish()?;
        if soft > hard {
            return Err(invalid(&field, "has a soft limit above its hard limit"));
        }
        if rlimits.iter().any(|seen| seen.kind == kind) {
            return Err(invalid(&field, format!("sets {kind} a second time")));
        }
        rlimits.push(pol::Rlimit { kind, soft, hard });
    }
    Ok(rlimits)
}

fn decode_mount(mut m: Object) -> Result<pol::Mount, SpecError> {
    let destination = m.required_string("destination")?;
    let source = m.string("source")?.unwrap_or_default();
    let kind = m.string("type")?.unwrap_or_default();
    let options = m.strings("options")?;
    m.finish()?;
    Ok(pol::Mount {
        destination,
        source,
        kind,
        options,
    })
}

fn decode_namespaces(linux: &mut Object) -> Result<Vec<pol::Namespace>, SpecError> {
    let mut namespaces: Vec<pol::Namespace> = Vec::new();
    for (field, v) in linux.array("namespaces")? {
        let mut ns = Object::new(field.clone(), v)?;
        let type_field = ns.field("type");
        let name = ns.required_string("type")?;
        let kind = pol::NamespaceType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| invalid(&type_field, format!("{name:?} is not a namespace type")))?;
        let path = ns.label("path")?;
        ns.finish()?;
        if namespaces.iter().any(|seen| seen.kind == kind) {
            return Err(invalid(&field, format!("lists the {name} namespace twice")));
        }
        namespaces.push(pol::Namespace { kind, path });
    }
    Ok(namespaces)
}

fn decode_device(mut d: Object) -> Result<pol::Device, SpecError> {
    let path = d.required_string("path")?;
    let type_field = d.field("type");
    let kind = d.required_string("type")?;
    if !matches!(kind.as_str(), "c" | "b" | "u" | "p") {
        return Err(invalid(&type_field, "must be c, b, u or p"));
    }
    let major = d.number("major")?.unwrap_or(0);
    let minor = d.number("minor")?.unwrap_or(0);
    let file_mode = d.number("fileMode")?;
    let uid = d.number("uid")?;
    let gid = d.number("gid")?;
    d.finish()?;
    Ok(pol::Device {
        path,
        kind,
        major,
        minor,
        file_mode,
        uid,
        gid,
    })
}

fn decode_device_rule(mut r: Object) -> Result<pol::DeviceRule, SpecError> {
    let allow = r.bool("allow")?;
    let type_field = r.field("type");
    let kind = r.string("type")?.unwrap_or_else(|| "a".to_owned());
    if !matches!(kind.as_str(), "a" | "c" | "b") {
        return Err(invalid(&type_field, "must be a, c or b"));
    }
    let major_field = r.field("major");
    let major: Option<i64> = r.number("major")?;
    let minor_field = r.field("minor");
    let minor: Option<i64> = r.number("minor")?;
    for (field, n) in [(&major_field, major), (&minor_field, minor)] {
        if n.is_some_and(|n| n < 0) {
            return Err(invalid(
                field,
                "must not be negative (null matches every number)",
            ));
        }
    }
    let access_field = r.field("access");
    let access = r.string("access")?.unwrap_or_else(|| "rwm".to_owned());
    let valid = !access.is_empty()
        && access.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        && ['r', 'w', 'm']
            .iter()
            .all(|c| access.matches(*c).count() <= 1);
    if !valid {
        return Err(invalid(&access_field, "must combine r, w and m"));
    }
    r.finish()?;
    Ok(pol::DeviceRule {
        allow,
        kind,
        major,
        minor,
        access,
    })
}

/// The cgroup v2 controllers whose files `linux.resources.unified` may set.
const UNIFIED_CONTROLLERS: [&str; 8] = [
    "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];

/// A `<controller>.<file>` name of a cgroup v2 controller's interface file: the OCI runtime
/// writes the value to that name inside the container's cgroup, so anything else (a path, a
/// `cgroup.` core file such as `cgroup.procs`) is refused.
fn valid_unified_key(key: &str) -> bool {
    let Some((controller, file)) = key.split_once('.') else {
        return false;
    };
    UNIFIED_CONTROLLERS.contains(&controller)
        && !file.is_empty()
        && file
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'))
        && !file.contains("..")
}

fn decode_resources(mut r: Object) -> Result<(Vec<pol::DeviceRule>, pol::Resources), SpecError> {
    let device_cgroup = r
        .array("devices")?
        .into_iter()
        .map(|(field, v)| decode_device_rule(Object::new(field, v)?))
        .collect::<Result<_, _>>()?;
    let mut m = r.object("memory")?;
    let memory = pol::MemoryLimits {
        limit: m.number("limit")?,
        reservation: m.number("reservation")?,
        swap: m.number("swap")?,
        swappiness: m.number("swappiness")?,
    };
    m.finish()?;
    let mut c = r.object("cpu")?;
    let cpu = pol::CpuLimits {
        shares: c.number("shares")?,
        quota: c.number("quota")?,
        period: c.number("period")?,
        cpus: c.label("cpus")?,
        mems: c.label("mems")?,
    };
    c.finish()?;
    let mut p = r.object("pids")?;
    let pids_limit = p.number("limit")?;
    p.finish()?;
    let mut hugepage_limits = Vec::new();
    for (field, v) in r.array("hugepageLimits")? {
        let mut h = Object::new(field, v)?;
        let page_size = h.required_string("pageSize")?;
        let limit = h.number("limit")?.unwrap_or(0);
        h.finish()?;
        hugepage_limits.push(pol::HugepageLimit { page_size, limit });
    }
    let unified_field = r.field("unified");
    let unified = r.string_map("unified")?;
    if let Some(key) = unified.keys().find(|k| !valid_unified_key(k)) {
        return Err(invalid(
            &format!("{unified_field}.{key}"),
            "is not a cgroup v2 controller file (<controller>.<file>)",
        ));
    }
    r.finish()?;
    Ok((
        device_cgroup,
        pol::Resources {
            memory,
            cpu,
            pids_limit,
            hugepage_limits,
            unified,
        },
    ))
}

/// Seccomp actions the guest applies (`SCMP_ACT_NOTIFY` needs a listener the model has not).
const SECCOMP_ACTIONS: [&str; 8] = [
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_ALLOW",
];

fn seccomp_action(o: &mut Object, key: &str) -> Result<String, SpecError> {
    let field = o.field(key);
    let action = o.required_string(key)?;
    if SECCOMP_ACTIONS.contains(&action.as_str()) {
        Ok(action)
    } else {
        Err(invalid(
            &field,
            format!("{action:?} is not a seccomp action the guest applies"),
        ))
    }
}

fn decode_seccomp(mut s: Object) -> Result<pol::Seccomp, SpecError> {
    let default_action = seccomp_action(&mut s, "defaultAction")?;
    let default_errno_ret = s.number("defaultErrnoRet")?;
    let architectures = s
        .array("architectures")?
        .into_iter()
        .map(|(field, v)| match v {
            Value::String(a) => {
                oci_name::<oci_spec::runtime::Arch>(&field, &a, "a seccomp architecture")
            }
            _ => Err(invalid(&field, "must be a string")),
        })
        .collect::<Result<_, _>>()?;
    let flags = s
        .array("flags")?
        .into_iter()
        .map(|(field, v)| match v {
            Value::String(f) => oci_name::<oci_spec::runtime::LinuxSeccompFilterFlag>(
                &field,
                &f,
                "a seccomp filter flag",
            ),
            _ => Err(invalid(&field, "must be a string")),
        })
        .collect::<Result<_, _>>()?;
    let mut syscalls = Vec::new();
    for (field, v) in s.array("syscalls")? {
        let mut rule = Object::new(field, v)?;
        let names_field = rule.field("names");
        let names = rule.strings("names")?;
        if names.is_empty() || names.iter().any(String::is_empty) {
            return Err(invalid(&names_field, "must list syscall names"));
        }
        let action = seccomp_action(&mut rule, "action")?;
        let errno_ret = rule.number("errnoRet")?;
        let mut args = Vec::new();
        for (field, v) in rule.array("args")? {
            let mut arg = Object::new(field, v)?;
            let index_field = arg.field("index");
            let index: u32 = arg.number("index")?.unwrap_or(0);
            if index > 5 {
                return Err(invalid(&index_field, "must be in 0..=5"));
            }
            let value = arg.number("value")?.unwrap_or(0);
            let value_two = arg.number("valueTwo")?.unwrap_or(0);
            let op_field = arg.field("op");
            let op = arg.required_string("op")?;
            let op = oci_name::<oci_spec::runtime::LinuxSeccompOperator>(
                &op_field,
                &op,
                "a seccomp comparison (SCMP_CMP_…)",
            )?;
            arg.finish()?;
            args.push(pol::SeccompArg {
                index,
                value,
                value_two,
                op,
            });
        }
        rule.finish()?;
        syscalls.push(pol::SeccompRule {
            names,
            action,
            errno_ret,
            args,
        });
    }
    s.finish()?;
    Ok(pol::Seccomp {
        default_action,
        default_errno_ret,
        architectures,
        flags,
        syscalls,
    })
}

/// Sets `out[key]` when `value` is `Some`.
fn set_some<T: serde::Serialize>(out: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        out.insert(key.to_owned(), json!(v));
    }
}

/// The OCI process document of `p`, as the runtime runs it.
pub fn render_process(p: &pol::Process) -> Value {
    let caps = &p.capabilities;
    let mut user = Map::new();
    user.insert("uid".into(), json!(p.user.uid));
    user.insert("gid".into(), json!(p.user.gid));
    user.insert("additionalGids".into(), json!(p.user.additional_gids));
    set_some(&mut user, "umask", p.user.umask);
    let mut out = Map::new();
    out.insert("terminal".into(), json!(p.terminal));
    set_some(
        &mut out,
        "consoleSize",
        p.console_size
            .map(|s| json!({"height": s.height, "width": s.width})),
    );
    out.insert("user".into(), Value::Object(user));
    out.insert("args".into(), json!(p.args));
    out.insert("env".into(), json!(p.env));
    out.insert("cwd".into(), json!(p.cwd));
    out.insert(
        "capabilities".into(),
        json!({
            "bounding": caps.bounding,
            "effective": caps.effective,
            "permitted": caps.permitted,
            "inheritable": caps.inheritable,
            "ambient": caps.ambient,
        }),
    );
    out.insert(
        "rlimits".into(),
        p.rlimits
            .iter()
            .map(|r| json!({"type": r.kind, "hard": r.hard, "soft": r.soft}))
            .collect(),
    );
    // Written only when set: libcontainer reads a present `false` as "set" and then loads a
    // seccomp filter after dropping the capabilities that loading needs without no_new_privs.
    if p.no_new_privileges {
        out.insert("noNewPrivileges".into(), json!(true));
    }
    set_some(&mut out, "apparmorProfile", p.apparmor_profile.as_deref());
    set_some(&mut out, "oomScoreAdj", p.oom_score_adj);
    set_some(&mut out, "selinuxLabel", p.selinux_label.as_deref());
    Value::Object(out)
}

fn render_resources(c: &pol::CreateContainer) -> Value {
    let r = &c.resources;
    let mut out = Map::new();
    out.insert(
        "devices".into(),
        c.device_cgroup
            .iter()
            .map(|d| {
                let mut rule = Map::new();
                rule.insert("allow".into(), json!(d.allow));
                rule.insert("type".into(), json!(d.kind));
                set_some(&mut rule, "major", d.major);
                set_some(&mut rule, "minor", d.minor);
                rule.insert("access".into(), json!(d.access));
                Value::Object(rule)
            })
            .collect(),
    );
    let mut memory = Map::new();
    set_some(&mut memory, "limit", r.memory.limit);
    set_some(&mut memory, "reservation", r.memory.reservation);
    set_some(&mut memory, "swap", r.memory.swap);
    set_some(&mut memory, "swappiness", r.memory.swappiness);
    if !memory.is_empty() {
        out.insert("memory".into(), Value::Object(memory));
    }
    let mut cpu = Map::new();
    set_some(&mut cpu, "shares", r.cpu.shares);
    set_some(&mut cpu, "quota", r.cpu.quota);
    set_some(&mut cpu, "period", r.cpu.period);
    set_some(&mut cpu, "cpus", r.cpu.cpus.as_deref());
    set_some(&mut cpu, "mems", r.cpu.mems.as_deref());
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(limit) = r.pids_limit {
        out.insert("pids".into(), json!({ "limit": limit }));
    }
    out.insert(
        "hugepageLimits".into(),
        r.hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect(),
    );
    out.insert("unified".into(), json!(r.unified));
    Value::Object(out)
}

fn render_seccomp(s: &pol::Seccomp) -> Value {
    let mut out = Map::new();
    out.insert("defaultAction".into(), json!(s.default_action));
    set_some(&mut out, "defaultErrnoRet", s.default_errno_ret);
    out.insert("architectures".into(), json!(s.architectures));
    out.insert("flags".into(), json!(s.flags));
    out.insert(
        "syscalls".into(),
        s.syscalls
            .iter()
            .map(|rule| {
                let mut r = Map::new();
                r.insert("names".into(), json!(rule.names));
                r.insert("action".into(), json!(rule.action));
                set_some(&mut r, "errnoRet", rule.errno_ret);
                r.insert(
                    "args".into(),
                    rule.args
                        .iter()
                        .map(|a| {
                            json!({"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op})
                        })
                        .collect(),
                );
                Value::Object(r)
            })
            .collect(),
    );
    Value::Object(out)
}

/// The `config.json` the OCI runtime runs for the authorized `c`: its root filesystem at
/// `root_path` and its cgroup at `cgroups_path`, both the guest's. The caller has resolved the
/// agent's typed mounts and sealed values first.
pub fn render_container(c: &pol::CreateContainer, root_path: &str, cgroups_path: &str) -> Value {
    let mut linux = Map::new();
    linux.insert(
        "namespaces".into(),
        c.namespaces
            .iter()
            .map(|ns| {
                let mut n = Map::new();
                n.insert("type".into(), json!(ns.kind.name()));
                set_some(&mut n, "path", ns.path.as_deref());
                Value::Object(n)
            })
            .collect(),
    );
    linux.insert(
        "devices".into(),
        c.devices
            .iter()
            .map(|d| {
                let mut dev = Map::new();
                dev.insert("path".into(), json!(d.path));
                dev.insert("type".into(), json!(d.kind));
                dev.insert("major".into(), json!(d.major));
                dev.insert("minor".into(), json!(d.minor));
                set_some(&mut dev, "fileMode", d.file_mode);
                set_some(&mut dev, "uid", d.uid);
                set_some(&mut dev, "gid", d.gid);
                Value::Object(dev)
            })
            .collect(),
    );
    linux.insert("resources".into(), render_resources(c));
    linux.insert("cgroupsPath".into(), json!(cgroups_path));
    linux.insert("sysctl".into(), json!(c.sysctls));
    linux.insert("maskedPaths".into(), json!(c.masked_paths));
    linux.insert("readonlyPaths".into(), json!(c.readonly_paths));
    if let Some(seccomp) = &c.seccomp {
        linux.insert("seccomp".into(), render_seccomp(seccomp));
    }
    set_some(&mut linux, "mountLabel", c.mount_label.as_deref());

    let mut out = Map::new();
    out.insert("ociVersion".into(), json!(OCI_VERSION));
    out.insert(
        "root".into(),
        json!({"path": root_path, "readonly": c.root_readonly}),
    );
    out.insert(
        "mounts".into(),
        c.mounts
            .iter()
            .map(|m| {
                let mut mount = Map::new();
                mount.insert("destination".into(), json!(m.destination));
                if !m.kind.is_empty() {
                    mount.insert("type".into(), json!(m.kind));
                }
                if !m.source.is_empty() {
                    mount.insert("source".into(), json!(m.source));
                }
                mount.insert("options".into(), json!(m.options));
                Value::Object(mount)
            })
            .collect(),
    );
    out.insert("process".into(), render_process(&c.process));
    set_some(&mut out, "hostname", c.hostname.as_deref());
    set_some(&mut out, "domainname", c.domainname.as_deref());
    out.insert("annotations".into(), json!(c.annotations));
    out.insert("linux".into(), Value::Object(linux));
    Value::Object(out)
}

/// The runtime-spec version of the documents [`render_container`] writes.
pub const OCI_VERSION: &str = "1.0.2";

/// Mounts given in the OCI spec's JSON form, decoded as [`decode_container`] decodes them (for
/// the tests of the modules that resolve the agent's mount types).
#[cfg(test)]
pub(crate) fn mounts_from_json(mounts: &[Value]) -> Vec<pol::Mount> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Object::new(format!("mounts[{i}]"), m.clone())
                .and_then(decode_mount)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
