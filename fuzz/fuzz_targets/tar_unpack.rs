//! Tar layers unpacked by image-rs's real path (`unpack_layers`: staging directory, `HeaderGuard`
//! limits on extension headers, `apply_layer` through a `pathrs` root, then the commit) into a
//! fresh temporary root per input, removed afterwards.
//!
//! Input: the first byte's low bit picks one layer or two (split at the 512-byte block the rest
//! of that byte names, so whiteouts and links can refer to the layer below); bits 1..2 pick the
//! device policy and setid handling. The rest is the uncompressed tar stream.
//!
//! Property: nothing is created, changed or removed outside the destination. Each root sits
//! three directories deep in its temporary directory, beside a canary directory and file at every
//! level, and the whole temporary directory is compared before and after.
#![no_main]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use coffer_image::unpack::{DevicePolicy, UnpackPolicy, unpack_layers};
use libfuzzer_sys::fuzz_target;

/// Room for every layer a fuzz input can describe; a larger claim must fail with the quota error.
const QUOTA: u64 = 64 * 1024 * 1024;

/// What one path outside the destination looks like: type, size, mode, mtime, inode.
type Snapshot = BTreeMap<PathBuf, (u32, u64, i64, u64)>;

fn snapshot(dir: &Path, dest: &Path, out: &mut Snapshot) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == dest {
            continue;
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            out.insert(
                path.clone(),
                (meta.mode(), meta.size(), meta.mtime(), meta.ino()),
            );
            if meta.is_dir() {
                snapshot(&path, dest, out);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, tar)) = data.split_first() else {
        return;
    };
    let layers: Vec<&[u8]> = if control & 1 == 0 {
        vec![tar]
    } else {
        let split = (usize::from(control >> 3) * 512).min(tar.len());
        vec![&tar[..split], &tar[split..]]
    };
    let policy = UnpackPolicy {
        devices: if control & 2 == 0 {
            DevicePolicy::Reject
        } else {
            DevicePolicy::Skip
        },
        keep_setid_bits: control & 4 != 0,
        ..UnpackPolicy::default()
    };

    let base = tempfile::tempdir().expect("temporary directory");
    let mut parent = base.path().to_owned();
    for level in ["a", "b", "c"] {
        std::fs::create_dir(parent.join("canary")).expect("canary directory");
        std::fs::write(parent.join("canary.txt"), level).expect("canary file");
        parent.push(level);
        std::fs::create_dir(&parent).expect("level directory");
    }
    let dest = parent.join("rootfs");
    let mut before = Snapshot::new();
    snapshot(base.path(), &dest, &mut before);

    let result = unpack_layers(layers, &dest, &policy, QUOTA);

    let mut after = Snapshot::new();
    snapshot(base.path(), &dest, &mut after);
    // A directory's size and times change with its entries (the staging directory came and
    // went beside the destination); its entries are compared themselves.
    let is_dir = |mode: u32| mode & 0o170000 == 0o040000;
    let strip = |s: &Snapshot| -> Vec<(PathBuf, u32, u64, Option<(u64, i64)>)> {
        s.iter()
            .map(|(p, &(mode, size, mtime, ino))| {
                (
                    p.clone(),
                    mode,
                    ino,
                    (!is_dir(mode)).then_some((size, mtime)),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "unpack ({}) changed something outside its destination",
        if result.is_ok() { "ok" } else { "refused" }
    );
    if result.is_err() {
        assert!(!dest.exists(), "a refused unpack left its destination");
    }
});
