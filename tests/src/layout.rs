//! Editing a copy of an OCI layout (the suites' hostile and odd images): blobs are written under
//! their digest and the index follows the edited manifest, so only what the test changed differs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// A copy of an OCI layout being edited.
#[derive(Debug)]
pub struct LayoutCopy {
    dir: PathBuf,
}

impl LayoutCopy {
    /// Copies the layout `from` to `to` (which must not exist).
    pub fn new(from: &Path, to: &Path) -> anyhow::Result<Self> {
        let out = Command::new("cp").arg("-a").arg(from).arg(to).output()?;
        ensure!(
            out.status.success(),
            "cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            dir: to.to_path_buf(),
        })
    }

    /// The file of the blob `digest` (`sha256:…`).
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = coffer_image::Digest::of(bytes).to_string();
        std::fs::write(self.blob(&digest), bytes)?;
        Ok(digest)
    }

    /// The JSON blob `digest`.
    pub fn json(&self, digest: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.blob(digest))?)?)
    }

    fn index(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            self.dir.join("index.json"),
        )?)?)
    }

    /// The index's first manifest.
    pub fn manifest(&self) -> anyhow::Result<serde_json::Value> {
        let index = self.index()?;
        self.json(
            index["manifests"][0]["digest"]
                .as_str()
                .context("the index names no manifest")?,
        )
    }

    /// Stores `manifest` and makes it the index's first manifest.
    pub fn set_manifest(&self, manifest: &serde_json::Value) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(manifest)?;
        let mut index = self.index()?;
        index["manifests"][0]["digest"] = self.put(&bytes)?.into();
        index["manifests"][0]["size"] = bytes.len().into();
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}
