//! Hostile layers for the pull memory bound (#21): OCI layouts whose layer, gzip'd, is a few
//! hundred KiB and inflates to a tar whose first header declares hundreds of MiB of PAX records
//! or GNU long name (bytes the `tar` crate would read whole into memory), or a regular file of
//! hundreds of MiB of zeros (a decompression bomb). The layers are generated while they are
//! compressed, so they never sit in this process's memory either.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use coffer_image::Digest;

/// What the inflated layer holds.
#[derive(Debug, Clone, Copy)]
pub enum Bomb {
    /// A PAX `x` header declaring `size` bytes of records.
    Pax,
    /// A GNU long-name `L` header declaring `size` bytes of name.
    LongName,
    /// A regular file of `size` zero bytes.
    File,
}

/// Inflated size of every bomb: far beyond any memory bound, within the disk the file bomb may
/// reach before the ratio limit stops it.
pub const BOMB_BYTES: u64 = 512 << 20;

/// The gzip'd layer: one header of `bomb`'s kind declaring [`BOMB_BYTES`], then that many zero
/// bytes, then a small file and the end-of-archive marker.
pub fn gzip_layer(bomb: Bomb) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let (kind, name) = match bomb {
        Bomb::Pax => (tar::EntryType::XHeader, "PaxHeader"),
        Bomb::LongName => (tar::EntryType::GNULongName, "././@LongLink"),
        Bomb::File => (tar::EntryType::Regular, "zeros"),
    };
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(BOMB_BYTES);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_path(name)?;
    header.set_cksum();
    gz.write_all(header.as_bytes())?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..BOMB_BYTES >> 20 {
        gz.write_all(&zeros)?;
    }
    let mut tail = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tail.append_data(&mut h, "after", &b"ok"[..])?;
    gz.write_all(&tail.into_inner()?)?;
    Ok(gz.finish()?)
}

/// Random bytes (xorshift), incompressible, for an honest layer of a known size.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar of one file `noise` holding `data`.
fn one_file_tar(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tar.append_data(&mut h, "noise", data)?;
    Ok(tar.into_inner()?)
}

/// An honest gzip'd layer: one file of `data`; returns the blob and its diff_id.
pub fn honest_layer(data: &[u8]) -> anyhow::Result<(Vec<u8>, Digest)> {
    let tar = one_file_tar(data)?;
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    Ok((gz.finish()?, diff_id))
}

fn put_blob(layout: &Path, bytes: &[u8]) -> anyhow::Result<Digest> {
    let digest = Digest::of(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(digest.hex()), bytes)?;
    Ok(digest)
}

/// An OCI layout at `layout` with one gzip'd layer `blob` (`diff_id` as the config states it).
pub fn layout(layout: &Path, blob: &[u8], diff_id: &Digest) -> anyhow::Result<PathBuf> {
    layout_with(
        layout,
        blob,
        diff_id,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )
}

fn layout_with(
    layout: &Path,
    blob: &[u8],
    diff_id: &Digest,
    media_type: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(layout)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let layer = put_blob(layout, blob)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    })
    .to_string();
    let config_digest = put_blob(layout, config.as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": media_type,
            "digest": layer.to_string(),
            "size": blob.len(),
        }],
    })
    .to_string();
    let manifest_digest = put_blob(layout, manifest.as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string())?;
    Ok(layout.to_owned())
}

/// What a `coffer image pull` under GNU time did: its exit status, stderr and peak RSS.
pub struct Measured {
    pub success: bool,
    pub stderr: String,
    pub max_rss_bytes: u64,
}

/// Runs `coffer image pull REFERENCE --dest DEST --store STORE --insecure-registry HOST` under
/// `/usr/bin/time`, whose `%M` is the child's peak resident set (`wait4`'s `ru_maxrss`).
pub fn pull_measured(
    reference: &str,
    dest: &Path,
    store: &Path,
    host: &str,
) -> anyhow::Result<Measured> {
    coffer_tests::require_tool("time");
    let rss_file = dest.with_extension("rss");
    let out = Command::new("time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(coffer_tests::coffer())
        .args(["image", "pull", reference, "--dest"])
        .arg(dest)
        .arg("--store")
        .arg(store)
        .args(["--insecure-registry", host])
        .output()
        .context("running coffer under time")?;
    let rss = std::fs::read_to_string(&rss_file).context("reading time's output")?;
    // On failure GNU time writes "Command exited with non-zero status N" first.
    let kib: u64 = rss
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("time's output {rss:?}"))?;
    ensure!(kib > 0, "no peak RSS measured");
    Ok(Measured {
        success: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        max_rss_bytes: kib * 1024,
    })
}

/// An OCI layout at `layout` with one uncompressed layer: one file of `len` noise bytes (big
/// enough that a pull takes a while, to be interrupted).
pub fn big_layout(layout: &Path, len: usize) -> anyhow::Result<PathBuf> {
    let tar = one_file_tar(&noise(len, 7))?;
    let diff_id = Digest::of(&tar);
    self::layout_with(
        layout,
        &tar,
        &diff_id,
        "application/vnd.oci.image.layer.v1.tar",
    )
}

/// What an interrupted pull left: staging directories beside `dest`, temporary blobs in `store`.
pub fn debris(dest: &Path, store: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let name = dest
        .file_name()
        .context("destination without a name")?
        .to_string_lossy()
        .into_owned();
    let parent = dest.parent().context("destination without a parent")?;
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{name}.partial-"))
        {
            out.push(entry.path());
        }
    }
    let tmp = store.join("tmp");
    if tmp.exists() {
        for entry in std::fs::read_dir(tmp)? {
            out.push(entry?.path());
        }
    }
    Ok(out)
}
