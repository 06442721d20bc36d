//! Unpacking an uploaded rootfs tar stream (sandbox mode). Entries are confined to the target
//! directory: absolute names are anchored inside it, `..` components and links escaping it are
//! refused, and device nodes, FIFOs and sockets are never created. Full image-layer safety
//! (whiteouts, openat2 resolution, quotas) belongs to image-rs; this path only serves rootfs
//! directories the host user hands to `coffer sandbox run`.

use std::io::Read;
use std::path::{Component, Path};

/// Most entries accepted in one rootfs.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Summary of an unpacked rootfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    /// Entries written.
    pub entries: u64,
}

/// Unpacks the tar stream `reader` into `dest` (which must exist and be empty).
pub fn unpack(reader: impl Read, dest: &Path) -> Result<Unpacked, String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    for entry in archive.entries().map_err(|e| format!("reading tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("reading tar entry: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("entry name: {e}"))?
            .into_owned();
        if name.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("entry {} has a '..' component", name.display()));
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special()
            || kind.is_block_special()
            || kind.is_fifo()
            || kind.is_gnu_sparse()
        {
            tracing::debug!(entry = %name.display(), "skipping special file");
            continue;
        }
        if let Some(target) = entry.link_name().map_err(|e| format!("link name: {e}"))?
            && kind.is_hard_link()
            && (target.is_absolute()
                || target
                    .components()
                    .any(|c| matches!(c, Component::ParentDir)))
        {
            return Err(format!(
                "hard link {} points outside the rootfs",
                name.display()
            ));
        }
        let inside = entry
            .unpack_in(dest)
            .map_err(|e| format!("unpacking {}: {}", name.display(), error_chain(&e)))?;
        if !inside {
            return Err(format!("entry {} escapes the rootfs", name.display()));
        }
        done.entries += 1;
        if done.entries > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
    }
    Ok(done)
}

pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn raw_name(h: &mut tar::Header, name: &str) {
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
    }

    #[test]
    fn plain_files_unpack() {
        let data = tar_with(|b| {
            let mut h = file_header(5);
            b.append_data(&mut h, "bin/hello", &b"hello"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let n = unpack(&data[..], dir.path()).unwrap();
        assert_eq!(n.entries, 1);
        assert_eq!(
            std::fs::read(dir.path().join("bin/hello")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn img01_parent_components_are_rejected() {
        let data = tar_with(|b| {
            let mut h = file_header(1);
            raw_name(&mut h, "a/../../x");
            b.append(&h, &b"x"[..]).unwrap();
        });
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("root");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(&data[..], &dest).unwrap_err();
        assert!(err.contains(".."), "{err}");
        assert!(!outer.path().join("x").exists());
    }

    #[test]
    fn img03_symlink_escape_is_rejected() {
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "x", "/").unwrap();
            let mut f = file_header(1);
            b.append_data(&mut f, "x/escaped", &b"x"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(&data[..], dir.path()).is_err());
        assert!(!Path::new("/escaped").exists());
    }

    #[test]
    fn img06_device_nodes_are_not_created() {
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&data[..], dir.path()).unwrap().entries, 0);
        assert!(!dir.path().join("dev/null").exists());
    }
}
