//! Kubernetes Secret volumes whose values are sealed references, for `coffer policy gen`.
//!
//! A confidential pod's Secret must not hold the secret itself (its value passes through the
//! API server, the kubelet and the host), only the broker reference:
//!
//! ```yaml
//! kind: Secret
//! metadata: {name: db}
//! stringData: {password: "sealed.kbs:///default/secret/db-password"}
//! ```
//!
//! Mounted as a volume, each key becomes a sealed file: the shim turns the kubelet's file into a
//! `sealed` mount and the guest agent fetches the resource from the broker after attestation.
//! Policy gen lists each file as that mount (destination pinned) and its reference as one of
//! the container's secrets. Everything else about the volume is an error, never dropped.

use std::collections::BTreeMap;

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use serde::Deserialize;

/// The prefix of a sealed value.
pub const SEALED_PREFIX: &str = "sealed.";
/// The scheme of a broker resource reference.
pub const KBS_SCHEME: &str = "kbs:///";

/// A `kind: Secret` document of the manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretDoc {
    #[serde(default)]
    metadata: SecretMetadata,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct SecretMetadata {
    #[serde(default)]
    name: String,
}

/// The Secrets of a manifest, by name, each as its keys' sealed references.
#[derive(Debug, Default)]
pub struct Secrets(BTreeMap<String, BTreeMap<String, String>>);

impl Secrets {
    /// Adds a Secret document; every value must be a sealed reference.
    pub fn add(&mut self, doc: SecretDoc) -> anyhow::Result<()> {
        let name = doc.metadata.name;
        ensure!(!name.is_empty(), "a Secret has no metadata.name");
        let mut keys = BTreeMap::new();
        for (key, encoded) in doc.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .with_context(|| format!("Secret {name} data.{key} is not base64"))?;
            let text = String::from_utf8(bytes)
                .with_context(|| format!("Secret {name} data.{key} is not text"))?;
            keys.insert(key, text);
        }
        // As the API server does: stringData wins over data.
        keys.extend(doc.string_data);
        let mut sealed = BTreeMap::new();
        for (key, value) in keys {
            let reference = sealed_reference(value.trim_end()).with_context(|| {
                format!(
                    "Secret {name} key {key}: a confidential pod's Secret must hold sealed \
                     references (sealed.kbs:///<repo>/<type>/<tag>), not values: a value passes \
                     through the host"
                )
            })?;
            sealed.insert(key, reference);
        }
        ensure!(
            self.0.insert(name.clone(), sealed).is_none(),
            "Secret {name} appears twice"
        );
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.0.get(name)
    }
}

/// The broker reference of a sealed value, checked for form.
pub fn sealed_reference(value: &str) -> anyhow::Result<String> {
    let Some(reference) = value.strip_prefix(SEALED_PREFIX) else {
        bail!("not a sealed reference");
    };
    let path = reference
        .strip_prefix(KBS_SCHEME)
        .with_context(|| format!("{reference:?} is not a {KBS_SCHEME} reference"))?;
    path.parse::<coffer_attestation::kbs::path::ResourcePath>()
        .map_err(|e| anyhow::anyhow!("{reference:?}: {e}"))?;
    Ok(reference.to_owned())
}

/// A pod volume; only Secret volumes are supported.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    name: String,
    secret: Option<SecretVolume>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretVolume {
    secret_name: String,
    items: Option<Vec<KeyToPath>>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Deserialize)]
struct KeyToPath {
    key: String,
    path: String,
}

/// A container's volume mount.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    name: String,
    mount_path: String,
    sub_path: Option<String>,
    sub_path_expr: Option<String>,
    mount_propagation: Option<String>,
}

/// The sealed files a container's volume mounts make, as `(destination, reference)`.
pub fn sealed_files(
    mounts: &[VolumeMount],
    volumes: &[Volume],
    secrets: &Secrets,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for m in mounts {
        let volume = volumes
            .iter()
            .find(|v| v.name == m.name)
            .with_context(|| format!("volume mount {}: no volume of that name", m.name))?;
        let Some(sv) = &volume.secret else {
            let kind = volume.other.keys().next().map_or("(none)", String::as_str);
            bail!(
                "volume {} is a {kind} volume: in confidential mode only Secret volumes of sealed \
                 references can be mounted (other volumes' host-side contents cannot be pinned)",
                volume.name
            );
        };
        ensure!(
            m.sub_path_expr.is_none() && m.mount_propagation.is_none(),
            "volume mount {}: subPathExpr and mountPropagation cannot be pinned",
            m.name
        );
        ensure!(
            m.mount_path.starts_with('/') && m.mount_path.len() > 1,
            "volume mount {}: mountPath {:?} must be an absolute path",
            m.name,
            m.mount_path
        );
        let keys = secrets.get(&sv.secret_name).with_context(|| {
            format!(
                "volume {} uses Secret {}, which is not in the manifest: add it (as a second YAML \
                 document) so its sealed references can be pinned{}",
                volume.name,
                sv.secret_name,
                if sv.optional {
                    "; optional Secrets cannot be pinned either"
                } else {
                    ""
                }
            )
        })?;
        // The files the kubelet writes: the listed items, else every key under its own name.
        let paths: Vec<(&str, &str)> = match &sv.items {
            Some(items) => items
                .iter()
                .map(|i| (i.key.as_str(), i.path.as_str()))
                .collect(),
            None => keys.keys().map(|k| (k.as_str(), k.as_str())).collect(),
        };
        let dir = m.mount_path.trim_end_matches('/');
        for (key, path) in paths {
            let reference = keys
                .get(key)
                .with_context(|| format!("Secret {} has no key {key}", sv.secret_name))?;
            ensure!(
                !path.is_empty()
                    && !path.starts_with('/')
                    && path
                        .split('/')
                        .all(|p| !p.is_empty() && p != ".." && p != "."),
                "Secret volume {} item path {path:?} must be a relative path without .. or .",
                volume.name
            );
            match &m.sub_path {
                // subPath mounts one file of the volume at mountPath.
                Some(sub) if sub == path => files.push((dir.to_owned(), reference.clone())),
                Some(_) => {}
                None => files.push((format!("{dir}/{path}"), reference.clone())),
            }
        }
        if let Some(sub) = &m.sub_path {
            ensure!(
                files.iter().any(|(d, _)| d == dir),
                "volume mount {}: subPath {sub:?} is not a file of Secret {}",
                m.name,
                sv.secret_name
            );
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(yaml: &str) -> anyhow::Result<Secrets> {
        let mut s = Secrets::default();
        s.add(serde_norway::from_str(yaml)?)?;
        Ok(s)
    }

    #[test]
    fn secret_values_must_be_sealed_references() {
        let s = secrets(
            "metadata: {name: db}\nstringData: {password: \"sealed.kbs:///default/secret/db\"}\n\
             data: {user: c2VhbGVkLmticzovLy9kZWZhdWx0L3NlY3JldC91c2Vy}\n",
        )
        .unwrap();
        let keys = s.get("db").unwrap();
        assert_eq!(keys["password"], "kbs:///default/secret/db");
        assert_eq!(keys["user"], "kbs:///default/secret/user");
        for bad in [
            "metadata: {name: db}\nstringData: {password: hunter2}\n",
            "metadata: {name: db}\nstringData: {password: \"sealed.http://x/a/b/c\"}\n",
            "metadata: {name: db}\nstringData: {password: \"sealed.kbs:///a/b\"}\n",
            "metadata: {name: db}\ndata: {password: \"not base64!\"}\n",
            "stringData: {password: \"sealed.kbs:///a/b/c\"}\n",
        ] {
            assert!(secrets(bad).is_err(), "{bad}");
        }
        let err = secrets("metadata: {name: db}\nstringData: {password: hunter2}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must hold sealed references"), "{err}");
        assert!(!err.contains("hunter2"), "the value is never echoed: {err}");
    }

    #[test]
    fn secret_volumes_become_pinned_files() {
        let s = secrets(
            "metadata: {name: db}\nstringData: {password: \"sealed.kbs:///default/secret/db\", \
             user: \"sealed.kbs:///default/secret/user\"}\n",
        )
        .unwrap();
        let volumes: Vec<Volume> = serde_norway::from_str(
            "- {name: creds, secret: {secretName: db}}\n\
             - {name: one, secret: {secretName: db, items: [{key: password, path: pw/file}]}}\n\
             - {name: host, hostPath: {path: /etc}}\n\
             - {name: missing, secret: {secretName: nope}}\n",
        )
        .unwrap();
        let mounts = |yaml: &str| -> Vec<VolumeMount> { serde_norway::from_str(yaml).unwrap() };
        assert_eq!(
            sealed_files(
                &mounts("- {name: creds, mountPath: /run/secrets/}"),
                &volumes,
                &s
            )
            .unwrap(),
            vec![
                (
                    "/run/secrets/password".to_owned(),
                    "kbs:///default/secret/db".to_owned()
                ),
                (
                    "/run/secrets/user".to_owned(),
                    "kbs:///default/secret/user".to_owned()
                ),
            ]
        );
        assert_eq!(
            sealed_files(&mounts("- {name: one, mountPath: /s}"), &volumes, &s).unwrap(),
            vec![(
                "/s/pw/file".to_owned(),
                "kbs:///default/secret/db".to_owned()
            )]
        );
        assert_eq!(
            sealed_files(
                &mounts("- {name: creds, mountPath: /etc/app/pw, subPath: password}"),
                &volumes,
                &s
            )
            .unwrap(),
            vec![(
                "/etc/app/pw".to_owned(),
                "kbs:///default/secret/db".to_owned()
            )]
        );
        for (yaml, why) in [
            ("- {name: host, mountPath: /h}", "hostPath volume"),
            ("- {name: missing, mountPath: /m}", "not in the manifest"),
            ("- {name: nowhere, mountPath: /m}", "no volume of that name"),
            ("- {name: creds, mountPath: rel}", "absolute"),
            (
                "- {name: creds, mountPath: /m, subPath: other}",
                "not a file of Secret db",
            ),
            (
                "- {name: creds, mountPath: /m, subPathExpr: $(X)}",
                "subPathExpr",
            ),
        ] {
            let err = sealed_files(&mounts(yaml), &volumes, &s)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{yaml}: {err}");
        }
    }
}
