//! Strict field checking of a Pod manifest, as `kubectl --validate=strict` does: a field the
//! Kubernetes API does not define (a misspelt `comand:`) is an error naming its path, never
//! silently ignored — ignoring it would pin the image's defaults in place of what the author meant.
//!
//! The objects `coffer policy gen` reads (the Pod, its metadata, spec, containers and the parts of
//! a container it pins) list every field of the Kubernetes v1 API; objects it does not read
//! (volumes' sources, affinity, …) are not descended into: the API server checks those.

use serde_json::Value;

/// The fields of one object, each with the shape of its value.
type Fields = &'static [(&'static str, Shape)];

/// What a field holds.
#[derive(Clone, Copy)]
enum Shape {
    /// Anything (not checked here).
    Open,
    /// An object with exactly these fields.
    Object(Fields),
    /// A list of such objects.
    ListOf(Fields),
}

use Shape::{ListOf, Object, Open};

static POD: Fields = &[
    ("apiVersion", Open),
    ("kind", Open),
    ("metadata", Object(METADATA)),
    ("spec", Object(POD_SPEC)),
    ("status", Open),
];

static METADATA: Fields = &[
    ("name", Open),
    ("generateName", Open),
    ("namespace", Open),
    ("selfLink", Open),
    ("uid", Open),
    ("resourceVersion", Open),
    ("generation", Open),
    ("creationTimestamp", Open),
    ("deletionTimestamp", Open),
    ("deletionGracePeriodSeconds", Open),
    ("labels", Open),
    ("annotations", Open),
    ("ownerReferences", Open),
    ("finalizers", Open),
    ("managedFields", Open),
];

static POD_SPEC: Fields = &[
    ("volumes", Open),
    ("initContainers", ListOf(CONTAINER)),
    ("containers", ListOf(CONTAINER)),
    ("ephemeralContainers", Open),
    ("restartPolicy", Open),
    ("terminationGracePeriodSeconds", Open),
    ("activeDeadlineSeconds", Open),
    ("dnsPolicy", Open),
    ("nodeSelector", Open),
    ("serviceAccountName", Open),
    ("serviceAccount", Open),
    ("automountServiceAccountToken", Open),
    ("nodeName", Open),
    ("hostNetwork", Open),
    ("hostPID", Open),
    ("hostIPC", Open),
    ("shareProcessNamespace", Open),
    ("securityContext", Object(POD_SECURITY_CONTEXT)),
    ("imagePullSecrets", Open),
    ("hostname", Open),
    ("subdomain", Open),
    ("affinity", Open),
    ("schedulerName", Open),
    ("tolerations", Open),
    ("hostAliases", Open),
    ("priorityClassName", Open),
    ("priority", Open),
    ("dnsConfig", Open),
    ("readinessGates", Open),
    ("runtimeClassName", Open),
    ("enableServiceLinks", Open),
    ("preemptionPolicy", Open),
    ("overhead", Open),
    ("topologySpreadConstraints", Open),
    ("setHostnameAsFQDN", Open),
    ("os", Open),
    ("hostUsers", Open),
    ("schedulingGates", Open),
    ("resourceClaims", Open),
    ("resources", Open),
];

static CONTAINER: Fields = &[
    ("name", Open),
    ("image", Open),
    ("command", Open),
    ("args", Open),
    ("workingDir", Open),
    ("ports", Open),
    ("envFrom", Open),
    ("env", ListOf(ENV_VAR)),
    ("resources", Object(RESOURCES)),
    ("resizePolicy", Open),
    ("restartPolicy", Open),
    ("restartPolicyRules", Open),
    ("volumeMounts", ListOf(VOLUME_MOUNT)),
    ("volumeDevices", Open),
    ("livenessProbe", Object(PROBE)),
    ("readinessProbe", Object(PROBE)),
    ("startupProbe", Object(PROBE)),
    ("lifecycle", Open),
    ("terminationMessagePath", Open),
    ("terminationMessagePolicy", Open),
    ("imagePullPolicy", Open),
    ("securityContext", Object(SECURITY_CONTEXT)),
    ("stdin", Open),
    ("stdinOnce", Open),
    ("tty", Open),
];

static ENV_VAR: Fields = &[("name", Open), ("value", Open), ("valueFrom", Open)];

static RESOURCES: Fields = &[("limits", Open), ("requests", Open), ("claims", Open)];

static VOLUME_MOUNT: Fields = &[
    ("name", Open),
    ("readOnly", Open),
    ("recursiveReadOnly", Open),
    ("mountPath", Open),
    ("subPath", Open),
    ("mountPropagation", Open),
    ("subPathExpr", Open),
];

static PROBE: Fields = &[
    ("exec", Object(&[("command", Open)])),
    ("httpGet", Open),
    ("tcpSocket", Open),
    ("grpc", Open),
    ("initialDelaySeconds", Open),
    ("timeoutSeconds", Open),
    ("periodSeconds", Open),
    ("successThreshold", Open),
    ("failureThreshold", Open),
    ("terminationGracePeriodSeconds", Open),
];

static SECURITY_CONTEXT: Fields = &[
    ("capabilities", Object(&[("add", Open), ("drop", Open)])),
    ("privileged", Open),
    ("seLinuxOptions", Open),
    ("windowsOptions", Open),
    ("runAsUser", Open),
    ("runAsGroup", Open),
    ("runAsNonRoot", Open),
    ("readOnlyRootFilesystem", Open),
    ("allowPrivilegeEscalation", Open),
    ("procMount", Open),
    ("seccompProfile", Open),
    ("appArmorProfile", Open),
];

static POD_SECURITY_CONTEXT: Fields = &[
    ("seLinuxOptions", Open),
    ("windowsOptions", Open),
    ("runAsUser", Open),
    ("runAsGroup", Open),
    ("runAsNonRoot", Open),
    ("supplementalGroups", Open),
    ("supplementalGroupsPolicy", Open),
    ("fsGroup", Open),
    ("sysctls", Open),
    ("fsGroupChangePolicy", Open),
    ("seccompProfile", Open),
    ("appArmorProfile", Open),
    ("seLinuxChangePolicy", Open),
];

/// A field the Kubernetes API does not define.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown field {path}{}", suggestion.map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
pub struct UnknownField {
    /// Where, e.g. `spec.containers[0].comand`.
    pub path: String,
    /// The defined field it is closest to, when one is close.
    pub suggestion: Option<&'static str>,
}

/// Checks a Pod document (as parsed from YAML) for fields the Kubernetes API does not define.
pub fn check_pod(pod: &Value) -> Result<(), UnknownField> {
    check(pod, POD, "")
}

fn check(value: &Value, fields: Fields, path: &str) -> Result<(), UnknownField> {
    let Some(object) = value.as_object() else {
        return Ok(()); // a wrong type is the deserializer's to report
    };
    for (key, child) in object {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some((_, shape)) = fields.iter().find(|(name, _)| name == key) else {
            return Err(UnknownField {
                path: coffer_log::escaped_prefix(&here, 120),
                suggestion: closest(key, fields),
            });
        };
        match shape {
            Open => {}
            Object(inner) => check(child, inner, &here)?,
            ListOf(inner) => {
                for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                    check(item, inner, &format!("{here}[{i}]"))?;
                }
            }
        }
    }
    Ok(())
}

/// The defined field within two edits (or differing only in case) of `key`.
fn closest(key: &str, fields: Fields) -> Option<&'static str> {
    fields
        .iter()
        .map(|(name, _)| {
            (
                *name,
                distance(&key.to_ascii_lowercase(), &name.to_ascii_lowercase()),
            )
        })
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(name, _)| name)
}

/// Levenshtein distance (short ASCII field names).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_misspelt_container_field_is_named_with_its_path() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [
            {"name": "a", "image": "x", "command": ["/a"]},
            {"name": "b", "image": "x", "comand": ["/b"]}
        ]}});
        assert_eq!(
            check_pod(&pod).err().map(|e| e.to_string()).as_deref(),
            Some("unknown field spec.containers[1].comand (did you mean command?)")
        );
    }

    #[test]
    fn defined_fields_pass_and_unread_objects_are_not_descended() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"anything": "goes"}},
            "spec": {"affinity": {"whatever": 1}, "securityContext": {"fsGroup": 1},
                "containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always",
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {"exec": {"command": ["/h"]}, "periodSeconds": 5},
                    "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}});
        assert_eq!(check_pod(&pod), Ok(()));
        let pod = json!({"spec": {"containers": [{"readinessProbe": {"exec": {"cmd": []}}}]}});
        assert_eq!(
            check_pod(&pod).err().map(|e| e.path),
            Some("spec.containers[0].readinessProbe.exec.cmd".to_owned())
        );
        let pod = json!({"spec": {"contianers": []}});
        assert_eq!(
            check_pod(&pod).err().and_then(|e| e.suggestion),
            Some("containers")
        );
    }
}
