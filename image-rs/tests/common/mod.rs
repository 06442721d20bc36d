//! Shared test helpers: the registry harness, real image tools (umoci, skopeo), OCI layout
//! editing and file-by-file tree comparison.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

#[macro_use]
pub mod vectors;
pub mod registry;
pub mod token;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub use registry::{RegistryOptions, TestRegistry, require_tool};

/// The skopeo-made ocicrypt layouts and their keys (`tests/vectors/ocicrypt/`).
pub const VECTORS: &str = vectors_dir!("ocicrypt");

/// Runs a tool and asserts success, returning stdout.
pub fn run(tool: &str, package: &str, args: &[&str]) -> String {
    require_tool(tool, package);
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo copy` to the plain-HTTP test registry.
pub fn skopeo_copy(src: &str, dest: &str, extra: &[&str]) {
    let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(src);
    args.push(dest);
    run("skopeo", "skopeo", &args);
}

/// Builds an OCI image layout with umoci: one layer per closure, each applied to the rootfs
/// unpacked from the previous state (so deletions become whiteouts).
pub fn umoci_image(layout: &Path, tag: &str, layers: &[&dyn Fn(&Path)]) {
    let layout_s = layout.to_str().unwrap();
    if !layout.exists() {
        run("umoci", "umoci", &["init", "--layout", layout_s]);
    }
    let image = format!("{layout_s}:{tag}");
    run("umoci", "umoci", &["new", "--image", &image]);
    for (i, layer) in layers.iter().enumerate() {
        let bundle = layout.with_file_name(format!(
            "{}-bundle-{tag}-{i}",
            layout.file_name().unwrap().to_string_lossy()
        ));
        let bundle_s = bundle.to_str().unwrap();
        run("umoci", "umoci", &["unpack", "--image", &image, bundle_s]);
        layer(&bundle.join("rootfs"));
        run("umoci", "umoci", &["repack", "--image", &image, bundle_s]);
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

/// `umoci unpack` of an image: the reference root produced by a real tool.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let image = format!("{}:{tag}", layout.display());
    run(
        "umoci",
        "umoci",
        &["unpack", "--image", &image, bundle.to_str().unwrap()],
    );
    bundle.join("rootfs")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes a blob into an OCI layout, returning its digest and size.
pub fn put_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let hex = sha256_hex(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

pub fn get_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// Rewrites the single image of `layout`: `edit` may change the manifest and config JSON (and
/// write blobs with [`put_blob`]); the config, manifest and index are then re-hashed.
pub fn edit_layout(layout: &Path, edit: impl FnOnce(&Path, &mut Value, &mut Value)) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mut manifest: Value = serde_json::from_slice(&get_blob(layout, &manifest_digest)).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: Value = serde_json::from_slice(&get_blob(layout, &config_digest)).unwrap();
    edit(layout, &mut manifest, &mut config);
    let (digest, size) = put_blob(layout, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = put_blob(layout, &serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Copies a directory tree (an OCI layout) with `cp -a`.
pub fn copy_tree(src: &Path, dest: &Path) {
    run(
        "cp",
        "coreutils",
        &["-a", src.to_str().unwrap(), dest.to_str().unwrap()],
    );
}

/// One node of a tree, for file-by-file comparison.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        sha256: String,
    },
    Symlink {
        target: PathBuf,
    },
    Other,
}

/// Every entry under `root` (root itself excluded), by relative path.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let mode = meta.mode() & 0o7777;
            let node = if meta.file_type().is_symlink() {
                Node::Symlink {
                    target: std::fs::read_link(&path).unwrap(),
                }
            } else if meta.is_dir() {
                walk(root, &path, out);
                Node::Dir {
                    mode,
                    uid: meta.uid(),
                    gid: meta.gid(),
                }
            } else if meta.is_file() {
                Node::File {
                    mode,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    sha256: sha256_hex(&std::fs::read(&path).unwrap()),
                }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts two roots are equal file by file.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert!(!ta.is_empty(), "empty tree at {}", a.display());
    for (path, node) in &ta {
        assert_eq!(
            Some(node),
            tb.get(path),
            "{} differs ({} vs {})",
            path.display(),
            a.display(),
            b.display()
        );
    }
    for path in tb.keys() {
        assert!(
            ta.contains_key(path),
            "{} only in {}",
            path.display(),
            b.display()
        );
    }
}
