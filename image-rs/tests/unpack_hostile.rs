//! Hostile archives IMG-01..IMG-15 (shared/SECURITY-CATALOGUE.md §4.1), generated here, fed to the
//! safe unpacker. Every refusal must be typed and leave nothing at or beside the destination, and
//! nothing outside the root may change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coffer_image::DevicePolicy;
use coffer_image::unpack::{LayerStats, UnpackError, UnpackPolicy, unpack_layers};

const QUOTA: u64 = 64 << 20;

/// A destination inside a scratch directory with a sentinel file and directory beside it.
struct Scene {
    outer: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("sentinel"), b"keep").unwrap();
        std::fs::create_dir(outer.path().join("outside")).unwrap();
        std::fs::set_permissions(
            outer.path().join("outside"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        Self { outer }
    }

    fn dest(&self) -> PathBuf {
        self.outer.path().join("root")
    }

    fn outside(&self) -> PathBuf {
        self.outer.path().join("outside")
    }

    fn unpack(&self, layers: &[Vec<u8>]) -> Result<Vec<LayerStats>, UnpackError> {
        self.unpack_with(layers, &UnpackPolicy::default(), QUOTA)
    }

    fn unpack_with(
        &self,
        layers: &[Vec<u8>],
        policy: &UnpackPolicy,
        quota: u64,
    ) -> Result<Vec<LayerStats>, UnpackError> {
        unpack_layers(layers.iter().map(|l| &l[..]), &self.dest(), policy, quota)
    }

    /// Asserts the refusal left nothing: no destination, no staging directory, outside intact.
    fn assert_nothing_left(&self) {
        let mut names: Vec<_> = std::fs::read_dir(self.outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["outside", "sentinel"],
            "leftovers beside the destination"
        );
        assert_eq!(
            std::fs::read(self.outer.path().join("sentinel")).unwrap(),
            b"keep"
        );
        assert_eq!(std::fs::read_dir(self.outside()).unwrap().count(), 0);
        let mode = std::fs::metadata(self.outside())
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o700);
    }

    fn refuse(&self, layers: &[Vec<u8>]) -> UnpackError {
        let err = self.unpack(layers).expect_err("hostile archive accepted");
        self.assert_nothing_left();
        err
    }
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Sets the name bytes verbatim (bypassing the builder's own checks).
fn raw_name(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
    h.set_cksum();
}

fn raw_link(h: &mut tar::Header, target: &[u8]) {
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..target.len()].copy_from_slice(target);
    h.set_cksum();
}

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn entry(mut self, kind: tar::EntryType, name: &[u8], data: &[u8]) -> Self {
        let mut h = header(kind, data.len() as u64);
        raw_name(&mut h, name);
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(tar::EntryType::Regular, name.as_bytes(), data)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(tar::EntryType::Directory, name.as_bytes(), b"")
    }
    fn link(mut self, kind: tar::EntryType, name: &str, target: &[u8]) -> Self {
        let mut h = header(kind, 0);
        raw_name(&mut h, name.as_bytes());
        raw_link(&mut h, target);
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, name, target.as_bytes())
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.link(tar::EntryType::Link, name, target.as_bytes())
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body_len = key.len() + value.len() + 3;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut h = header(tar::EntryType::XHeader, data.len() as u64);
        raw_name(&mut h, b"PaxHeader");
        self.0.append(&h, &data[..]).unwrap();
        self
    }
    fn raw(mut self, h: &tar::Header, data: &[u8]) -> Self {
        self.0.append(h, data).unwrap();
        self
    }
    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn read(root: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(root.join(rel)).unwrap()
}

#[test]
fn plain_layers_unpack_with_metadata() {
    let s = Scene::new();
    let layer = Tar::new()
        .dir("etc")
        .file("etc/hostname", b"coffer\n")
        .symlink("bin", "usr/bin")
        .done();
    let stats = s.unpack(&[layer]).unwrap();
    assert_eq!(stats[0].entries, 3);
    let root = s.dest();
    assert_eq!(read(&root, "etc/hostname"), b"coffer\n");
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let meta = std::fs::metadata(root.join("etc/hostname")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o644);
    assert_eq!(meta.mtime(), 1_700_000_000);
}

#[test]
fn img01_parent_components_are_refused() {
    for name in [
        &b"../../etc/passwd"[..],
        b"a/../../x",
        b"./..",
        b"..",
        b"a/..",
    ] {
        let s = Scene::new();
        let err = s.refuse(&[Tar::new()
            .file("ok", b"1")
            .entry(tar::EntryType::Regular, name, b"x")
            .done()]);
        assert!(
            matches!(err, UnpackError::IllegalName { .. }),
            "{name:?}: {err:?}"
        );
    }
}

#[test]
fn img02_absolute_names_are_anchored_in_the_root() {
    let s = Scene::new();
    let target = format!("{}/planted", s.outside().display());
    s.unpack(&[Tar::new()
        .file("/etc/shadow", b"root:*:")
        .file(&target, b"x")
        .done()])
        .unwrap();
    assert_eq!(read(&s.dest(), "etc/shadow"), b"root:*:");
    assert!(!s.outside().join("planted").exists());
    assert!(s.dest().join(target.trim_start_matches('/')).exists());
}

#[test]
fn img03_symlink_escapes_stay_inside_the_root_in_same_and_later_layers() {
    let s = Scene::new();
    let abs_outside = s.outside().display().to_string();
    let layer1 = Tar::new()
        .symlink("x", "/")
        .symlink("y", "../../../../..")
        .dir(abs_outside.trim_start_matches('/'))
        .symlink("z", &abs_outside)
        .file("x/etc/cron.d/p", b"same layer")
        .done();
    let layer2 = Tar::new()
        .file("y/etc/cron.d/q", b"later layer")
        .file("z/planted", b"z")
        .done();
    s.unpack(&[layer1, layer2]).unwrap();
    let root = s.dest();
    assert_eq!(read(&root, "etc/cron.d/p"), b"same layer");
    assert_eq!(read(&root, "etc/cron.d/q"), b"later layer");
    assert_eq!(
        read(
            &root,
            &format!("{}/planted", abs_outside.trim_start_matches('/'))
        ),
        b"z"
    );
    assert_eq!(std::fs::read_dir(s.outside()).unwrap().count(), 0);
    assert!(!Path::new("/etc/cron.d/p").exists() && !Path::new("/etc/cron.d/q").exists());

    // A symlink whose target does not exist inside the root is never followed out of it: the
    // write is refused.
    let s = Scene::new();
    let err = s.refuse(&[
        Tar::new().symlink("z", &abs_outside).done(),
        Tar::new().file("z/planted", b"z").done(),
    ]);
    assert!(matches!(err, UnpackError::Resolve { .. }), "{err:?}");
}

#[test]
fn img04_directory_entries_through_symlinks_change_nothing_outside() {
    let s = Scene::new();
    let abs_outside = s.outside().display().to_string();
    let mut open = header(tar::EntryType::Directory, 0);
    open.set_mode(0o777);
    raw_name(&mut open, b"x");
    let mut sub = header(tar::EntryType::Directory, 0);
    sub.set_mode(0o777);
    raw_name(&mut sub, b"y/sub");
    let layer1 = Tar::new()
        .dir(abs_outside.trim_start_matches('/'))
        .symlink("x", &abs_outside)
        .symlink("y", &abs_outside)
        .done();
    let layer2 = Tar::new().raw(&sub, b"").raw(&open, b"").done();
    s.unpack(&[layer1, layer2]).unwrap();
    // `x` became a real directory in the root; `y/sub` was created under the root's copy of the path.
    let x = std::fs::symlink_metadata(s.dest().join("x")).unwrap();
    assert!(x.is_dir());
    assert_eq!(x.mode() & 0o7777, 0o777);
    assert!(
        s.dest()
            .join(abs_outside.trim_start_matches('/'))
            .join("sub")
            .is_dir()
    );
    assert_eq!(
        std::fs::metadata(s.outside()).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(std::fs::read_dir(s.outside()).unwrap().count(), 0);
}

#[test]
fn img05_hard_links_must_target_files_of_the_same_layer() {
    // Chains inside one layer work and share the inode.
    let s = Scene::new();
    s.unpack(&[Tar::new()
        .file("a", b"data")
        .hardlink("b", "a")
        .hardlink("c", "/b")
        .done()])
        .unwrap();
    let ino = |n| std::fs::metadata(s.dest().join(n)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
    assert_eq!(ino("a"), ino("c"));

    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "absolute host file",
            vec![Tar::new().hardlink("h", "/etc/shadow").done()],
        ),
        (
            "parent escape",
            vec![Tar::new().hardlink("h", "../outside").done()],
        ),
        (
            "lower layer",
            vec![
                Tar::new().file("a", b"1").done(),
                Tar::new().hardlink("h", "a").done(),
            ],
        ),
        (
            "not yet created",
            vec![Tar::new().hardlink("h", "later").file("later", b"1").done()],
        ),
        ("self loop", vec![Tar::new().hardlink("h", "h").done()]),
        (
            "directory",
            vec![Tar::new().dir("d").hardlink("h", "d").done()],
        ),
        (
            "through symlink",
            vec![
                Tar::new()
                    .symlink("s", "/")
                    .hardlink("h", "s/etc/shadow")
                    .done(),
            ],
        ),
    ];
    for (what, layers) in cases {
        let s = Scene::new();
        let err = s.refuse(&layers);
        assert!(
            matches!(
                err,
                UnpackError::HardLink { .. } | UnpackError::IllegalName { .. }
            ),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn img06_device_nodes_fifos_are_refused_or_skipped_by_policy() {
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        let mut h = header(kind, 0);
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        raw_name(&mut h, b"dev/sda");
        let layer = Tar::new().file("ok", b"1").raw(&h, b"").done();
        let s = Scene::new();
        let err = s.refuse(std::slice::from_ref(&layer));
        assert!(
            matches!(err, UnpackError::Device { .. }),
            "{kind:?}: {err:?}"
        );

        let s = Scene::new();
        let policy = UnpackPolicy {
            devices: DevicePolicy::Skip,
            ..UnpackPolicy::default()
        };
        let stats = s.unpack_with(&[layer], &policy, QUOTA).unwrap();
        assert_eq!(stats[0].skipped, 1);
        assert!(std::fs::symlink_metadata(s.dest().join("dev/sda")).is_err());
    }
}

#[test]
fn img07_setid_bits_and_xattrs_are_stripped() {
    let s = Scene::new();
    let mut suid = header(tar::EntryType::Regular, 1);
    suid.set_mode(0o6755);
    raw_name(&mut suid, b"bin/su");
    let mut sticky = header(tar::EntryType::Directory, 0);
    sticky.set_mode(0o1777);
    raw_name(&mut sticky, b"tmp");
    let layer = Tar::new()
        .pax(&[
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00",
            ),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:shadow_t:s0",
            ),
        ])
        .raw(&suid, b"x")
        .raw(&sticky, b"")
        .done();
    s.unpack(&[layer]).unwrap();
    let su = s.dest().join("bin/su");
    assert_eq!(std::fs::metadata(&su).unwrap().mode() & 0o7777, 0o755);
    for name in [
        "security.capability",
        "trusted.overlay.opaque",
        "security.selinux",
    ] {
        let mut buf = [0u8; 64];
        let got = rustix::fs::lgetxattr(&su, name, &mut buf);
        assert!(
            got.is_err() || name == "security.selinux",
            "{name} was applied"
        );
    }
    assert_eq!(
        std::fs::metadata(s.dest().join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
}

#[test]
fn img08_whiteouts_and_opaque_directories() {
    let s = Scene::new();
    let abs_outside = s.outside().display().to_string();
    let layer1 = Tar::new()
        .dir("d")
        .file("d/lower", b"1")
        .file("gone", b"1")
        .file("keep", b"1")
        .dir("o")
        .file("o/lower", b"1")
        .symlink("s", "/d")
        .dir(abs_outside.trim_start_matches('/'))
        .file(
            &format!("{}/sentinel", abs_outside.trim_start_matches('/')),
            b"in root",
        )
        .symlink("out", &abs_outside)
        .done();
    let layer2 = Tar::new()
        .file(".wh.gone", b"")
        .file("o/new", b"2")
        .file("o/.wh..wh..opq", b"")
        .file("s/.wh.lower", b"")
        .file("recreated", b"2")
        .file(".wh.recreated", b"")
        .file("out/.wh.sentinel", b"")
        .done();
    let stats = s.unpack(&[layer1, layer2]).unwrap();
    assert_eq!(stats[1].whiteouts, 5);
    let root = s.dest();
    assert!(!root.join("gone").exists());
    assert!(root.join("keep").exists());
    assert!(
        !root.join("o/lower").exists(),
        "opaque dir kept lower content"
    );
    assert_eq!(
        read(&root, "o/new"),
        b"2",
        "opaque dir removed same-layer content"
    );
    assert!(
        !root.join("d/lower").exists(),
        "whiteout through symlinked dir missed"
    );
    assert_eq!(read(&root, "recreated"), b"2");
    assert!(s.outer.path().join("sentinel").exists());
    assert!(
        !root
            .join(abs_outside.trim_start_matches('/'))
            .join("sentinel")
            .exists()
    );
    assert!(!root.join(".wh.gone").exists());

    // Opaque marker at the root clears every lower entry.
    let s = Scene::new();
    s.unpack(&[
        Tar::new().file("a", b"1").dir("b").done(),
        Tar::new().file(".wh..wh..opq", b"").file("c", b"").done(),
    ])
    .unwrap();
    let names: Vec<_> = std::fs::read_dir(s.dest())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("c")]);

    // A whiteout of something that does not exist changes nothing (and creates no directory).
    let s = Scene::new();
    s.unpack(&[
        Tar::new().file("a", b"1").done(),
        Tar::new().file("x/y/.wh.z", b"").done(),
    ])
    .unwrap();
    assert!(!s.dest().join("x").exists());

    // A whiteout naming `..` is refused.
    for name in [&b"a/.wh..."[..], b".wh."] {
        let s = Scene::new();
        let err = s.refuse(&[Tar::new().entry(tar::EntryType::Regular, name, b"").done()]);
        assert!(matches!(err, UnpackError::IllegalName { .. }), "{err:?}");
    }
}

#[test]
fn img09_duplicates_and_replacing_a_populated_directory() {
    let s = Scene::new();
    let layer1 = Tar::new()
        .file("a", b"file")
        .dir("a")
        .symlink("a", "target")
        .dir("d")
        .file("d/child", b"1")
        .done();
    let layer2 = Tar::new().file("d", b"now a file").done();
    s.unpack(&[layer1, layer2]).unwrap();
    assert_eq!(
        std::fs::read_link(s.dest().join("a")).unwrap(),
        Path::new("target")
    );
    assert_eq!(read(&s.dest(), "d"), b"now a file");
}

#[test]
fn img10_pax_desync_malformed_headers_trailing_garbage_truncation_checksum() {
    // ustar size 0 + PAX size N: the PAX size wins, so the nested tar stays file data.
    let nested = Tar::new().file("nested-escape", b"evil").done();
    let mut h = header(tar::EntryType::Regular, 0);
    raw_name(&mut h, b"carrier");
    let size = nested.len().to_string();
    let mut layer = Tar::new().pax(&[("size", size.as_bytes())]).done();
    layer.truncate(layer.len() - 1024);
    let mut tail = Tar::new().raw(&h, b"").done();
    tail.truncate(512);
    layer.extend_from_slice(&tail);
    layer.extend_from_slice(&nested);
    layer.extend_from_slice(&[0u8; 1024]);
    let s = Scene::new();
    s.unpack(&[layer]).unwrap();
    assert_eq!(read(&s.dest(), "carrier"), nested);
    assert!(!s.dest().join("nested-escape").exists());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "pax uid not a number",
            Tar::new().pax(&[("uid", b"abc")]).file("f", b"").done(),
        ),
        (
            "pax empty size",
            Tar::new().pax(&[("size", b"")]).file("f", b"").done(),
        ),
        ("gnu longname with NUL", {
            let mut b = Tar::new();
            let mut name = b"long/".repeat(30);
            name.extend_from_slice(b"x\0y");
            let mut lh = header(tar::EntryType::GNULongName, name.len() as u64);
            raw_name(&mut lh, b"././@LongLink");
            b = b.raw(&lh, &name);
            b.file("short", b"").done()
        }),
        ("trailing garbage", {
            let mut l = Tar::new().file("f", b"1").done();
            l.extend_from_slice(b"GARBAGE AFTER THE END MARKER");
            l
        }),
        ("truncated mid-data", {
            let mut l = Tar::new().file("f", &[7u8; 2000]).done();
            l.truncate(512 + 1000);
            l
        }),
        ("truncated at a header boundary", {
            let mut l = Tar::new().file("f", b"1").file("g", b"2").done();
            l.truncate(1024);
            l
        }),
        ("checksum mismatch", {
            let mut l = Tar::new().file("f", b"1").done();
            l[0] ^= 0x20;
            l
        }),
    ];
    for (what, layer) in cases {
        let s = Scene::new();
        let err = s.refuse(&[layer]);
        assert!(
            matches!(
                err,
                UnpackError::Pax { .. }
                    | UnpackError::IllegalName { .. }
                    | UnpackError::TrailingData
                    | UnpackError::Truncated
                    | UnpackError::Archive(_)
            ),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn img11_long_deep_many_and_odd_names() {
    let long = "a/".repeat(2100);
    let deep = "d/".repeat(300) + "f";
    for (what, layer) in [
        (
            "longer than PATH_MAX",
            Tar::new()
                .pax(&[("path", long.as_bytes())])
                .file("x", b"")
                .done(),
        ),
        (
            "too deep",
            Tar::new()
                .pax(&[("path", deep.as_bytes())])
                .file("x", b"")
                .done(),
        ),
        (
            "component over NAME_MAX",
            Tar::new()
                .pax(&[("path", "n".repeat(300).as_bytes())])
                .file("x", b"")
                .done(),
        ),
    ] {
        let s = Scene::new();
        let err = s.refuse(&[layer]);
        assert!(
            matches!(err, UnpackError::IllegalName { .. }),
            "{what}: {err:?}"
        );
    }
    let s = Scene::new();
    let mut many = Tar::new();
    for i in 0..101 {
        many = many.file(&format!("f{i}"), b"");
    }
    let policy = UnpackPolicy {
        max_entries: 100,
        ..UnpackPolicy::default()
    };
    let err = s.unpack_with(&[many.done()], &policy, QUOTA).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 100 }),
        "{err:?}"
    );
    s.assert_nothing_left();

    // Newlines and invalid UTF-8 are legal Linux names: kept byte for byte, inside the root.
    let s = Scene::new();
    let odd = Tar::new()
        .entry(tar::EntryType::Regular, b"new\nline", b"1")
        .entry(tar::EntryType::Regular, b"bad\xff\xfeutf8", b"2")
        .done();
    s.unpack(&[odd]).unwrap();
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(s.dest())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![b"bad\xff\xfeutf8".to_vec(), b"new\nline".to_vec()]
    );
}

#[test]
fn img12_huge_ids_sparse_files_and_negative_mtime() {
    let mut h = header(tar::EntryType::Regular, 0);
    h.set_uid(1 << 40);
    raw_name(&mut h, b"f");
    let s = Scene::new();
    let err = s.refuse(&[Tar::new().raw(&h, b"").done()]);
    assert!(
        matches!(err, UnpackError::IdOutOfRange { id, .. } if id == 1 << 40),
        "{err:?}"
    );

    let s = Scene::new();
    let err = s.refuse(&[Tar::new()
        .pax(&[("gid", b"4294967295")])
        .file("f", b"")
        .done()]);
    assert!(matches!(err, UnpackError::IdOutOfRange { .. }), "{err:?}");

    let mut sparse = header(tar::EntryType::GNUSparse, 0);
    sparse.as_gnu_mut().unwrap().set_real_size(1 << 40);
    raw_name(&mut sparse, b"sparse");
    let s = Scene::new();
    let err = s.refuse(&[Tar::new().raw(&sparse, b"").done()]);
    // The tar parser already refuses a sparse map that does not add up; a consistent one
    // reaches the unpacker, which refuses every sparse entry.
    assert!(
        matches!(err, UnpackError::Sparse { .. } | UnpackError::Archive(_)),
        "{err:?}"
    );

    // A negative PAX mtime is not applied; the header's time is.
    let s = Scene::new();
    s.unpack(&[Tar::new().pax(&[("mtime", b"-1")]).file("t", b"").done()])
        .unwrap();
    assert_eq!(
        std::fs::metadata(s.dest().join("t")).unwrap().mtime(),
        1_700_000_000
    );
}

#[test]
fn img13_img14_content_beyond_the_quota_is_refused() {
    // A 100 MB /etc/passwd (IMG-14) and any layer set past the image quota (IMG-13) abort.
    let s = Scene::new();
    let mut h = header(tar::EntryType::Regular, 100 << 20);
    raw_name(&mut h, b"etc/passwd");
    let mut layer = Tar::new().done();
    layer.truncate(0);
    layer.extend_from_slice(h.as_bytes());
    // The quota is checked from the header before any byte is written.
    let err = s
        .unpack_with(&[layer], &UnpackPolicy::default(), 1 << 20)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::Quota { limit } if limit == 1 << 20),
        "{err:?}"
    );
    s.assert_nothing_left();

    let s = Scene::new();
    let layers = vec![
        Tar::new().file("a", &[1u8; 3000]).done(),
        Tar::new().file("b", &[1u8; 3000]).done(),
    ];
    let err = s
        .unpack_with(&layers, &UnpackPolicy::default(), 5000)
        .unwrap_err();
    assert!(matches!(err, UnpackError::Quota { .. }), "{err:?}");
    s.assert_nothing_left();
}

#[test]
fn img15_a_failing_later_layer_leaves_no_half_root() {
    let s = Scene::new();
    let good = Tar::new().file("from-layer-1", b"1").done();
    let mut broken = Tar::new().file("from-layer-2", &[2u8; 4096]).done();
    broken.truncate(2048);
    let err = s.refuse(&[good, broken]);
    assert!(
        matches!(err, UnpackError::Archive(_) | UnpackError::Truncated),
        "{err:?}"
    );
}

#[test]
fn destination_must_be_absent_or_empty() {
    let s = Scene::new();
    std::fs::create_dir(s.dest()).unwrap();
    s.unpack(&[Tar::new().file("a", b"1").done()]).unwrap();
    assert!(s.dest().join("a").exists());
    let err = s.unpack(&[Tar::new().file("b", b"1").done()]).unwrap_err();
    assert!(matches!(err, UnpackError::DestinationExists(_)), "{err:?}");
    assert!(!s.dest().join("b").exists());
}

/// The error and its sources, as a CLI prints them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Counts the bytes the unpacker takes from a layer.
struct Counted<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn extension_headers_over_their_limits_are_refused_before_their_bodies_are_read() {
    use std::io::Read as _;
    const HUGE: u64 = 60 << 20;
    for (kind, name, what, limit) in [
        (
            tar::EntryType::GNULongName,
            &b"././@LongLink"[..],
            "GNU long name",
            coffer_image::MAX_LONG_NAME_BYTES,
        ),
        (
            tar::EntryType::GNULongLink,
            b"././@LongLink",
            "GNU long link",
            coffer_image::MAX_LONG_NAME_BYTES,
        ),
        (
            tar::EntryType::XHeader,
            b"PaxHeader",
            "PAX extension",
            coffer_image::MAX_PAX_BYTES,
        ),
        (
            tar::EntryType::XGlobalHeader,
            b"GlobalHead",
            "PAX global extension",
            coffer_image::MAX_PAX_BYTES,
        ),
    ] {
        // One header declaring 60 MiB, then 60 MiB of name bytes, streamed (never in memory here).
        let mut h = header(kind, HUGE);
        raw_name(&mut h, name);
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let layer = Counted {
            inner: std::io::Cursor::new(h.as_bytes().to_vec())
                .chain(std::io::repeat(b'a').take(HUGE))
                .chain(std::io::repeat(0).take(1024)),
            read: read.clone(),
        };
        let s = Scene::new();
        let err = unpack_layers([layer], &s.dest(), &UnpackPolicy::default(), QUOTA)
            .expect_err("oversized extension header accepted");
        s.assert_nothing_left();
        match &err {
            UnpackError::Header(coffer_image::HeaderRefusal::TooLarge {
                kind: k,
                size,
                limit: l,
            }) => assert_eq!((*k, *size, *l), (what, HUGE, limit)),
            other => panic!("{what}: {other:?}"),
        }
        // The refusal came at the header: (almost) none of the 60 MiB body was read.
        let text = chain(&err);
        assert!(text.len() < 1024, "{what}: {} bytes of error", text.len());
        assert!(read.get() < 1 << 20, "{what}: {} bytes read", read.get());
        println!("{what}: refused with {text:?} ({} bytes)", text.len());
    }
}

#[test]
fn long_names_and_pax_records_within_the_limits_unpack() {
    // A GNU long name just under PATH_MAX (19 components of 200 bytes).
    let long = format!("{}f", format!("{}/", "d".repeat(200)).repeat(19));
    assert!(long.len() > 3800 && long.len() < 4096);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 3);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    // A PAX header of ~60 KiB (an extended attribute, never applied) with a path and a size.
    let mut layer = b.into_inner().unwrap();
    layer.truncate(layer.len() - 1024);
    let xattr = vec![b'x'; 60 * 1024];
    let mut carrier = header(tar::EntryType::Regular, 0);
    raw_name(&mut carrier, b"ustar-name");
    let mut tail = Tar::new()
        .pax(&[
            ("SCHILY.xattr.user.big", &xattr[..]),
            ("path", b"from-pax"),
            ("size", b"4"),
        ])
        .raw(&carrier, b"")
        .done();
    // The ustar header says 0 bytes, the PAX size 4: four data bytes (one block) follow it.
    tail.truncate(tail.len() - 1024);
    let mut block = [0u8; 512];
    block[..4].copy_from_slice(b"wxyz");
    tail.extend_from_slice(&block);
    tail.extend_from_slice(&Tar::new().file("after", b"ok").done());
    layer.extend_from_slice(&tail);
    let s = Scene::new();
    s.unpack(&[layer]).unwrap();
    assert_eq!(read(&s.dest(), &long), b"abc");
    assert_eq!(read(&s.dest(), "from-pax"), b"wxyz");
    assert_eq!(read(&s.dest(), "after"), b"ok");
    assert!(!s.dest().join("ustar-name").exists());
}

#[test]
fn an_empty_pax_path_is_refused() {
    let s = Scene::new();
    let layer = Tar::new()
        .pax(&[("path", b"")])
        .file("carrier", b"data")
        .done();
    let err = s.refuse(&[layer]);
    assert!(
        matches!(
            err,
            UnpackError::IllegalName {
                reason: "empty name",
                ..
            }
        ),
        "{err:?}"
    );
    println!("empty PAX path: {}", chain(&err));
}

#[test]
fn errors_quote_a_short_escaped_prefix_of_names() {
    // A 60 KiB PAX path (within the PAX limit, beyond PATH_MAX) full of escape sequences.
    let name = b"\x1b[31m/".repeat(10 * 1024);
    let s = Scene::new();
    let layer = Tar::new()
        .pax(&[("path", &name[..])])
        .file("carrier", b"")
        .done();
    let err = s.refuse(&[layer]);
    assert!(matches!(err, UnpackError::IllegalName { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.len() < 1024, "{} bytes of error", text.len());
    assert!(
        !text.contains('\x1b'),
        "unescaped control character: {text:?}"
    );
    assert!(text.contains("\\x1b[31m"), "{text}");
    assert!(text.contains('…'), "{text}");
    println!("{} bytes: {text}", text.len());
}

#[test]
fn staging_directories_of_processes_that_are_gone_are_swept() {
    let s = Scene::new();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = s.outer.path().join(format!(".root.partial-{dead}-0"));
    let live = s
        .outer
        .path()
        .join(format!(".root.partial-{}-999", std::process::id()));
    for dir in [&stale, &live] {
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::fs::write(dir.join("usr/bin/half"), b"written").unwrap();
    }
    s.unpack(&[Tar::new().file("f", b"1").done()]).unwrap();
    assert!(
        !stale.exists(),
        "a dead process's staging directory was kept"
    );
    assert!(
        live.exists(),
        "a live process's staging directory was removed"
    );
    assert_eq!(read(&s.dest(), "f"), b"1");
}

#[test]
fn paths_and_parents_tracked_per_layer_are_bounded() {
    // Three files, each under its own chain of ten implicit directories: 33 tracked paths.
    let mut layer = Tar::new();
    for chain in ["a", "b", "c"] {
        let name = format!("{}f", format!("{chain}/").repeat(10));
        layer = layer.file(&name, b"");
    }
    let layer = layer.done();
    let policy = UnpackPolicy {
        max_entries: 16,
        ..UnpackPolicy::default()
    };
    let s = Scene::new();
    let err = s
        .unpack_with(std::slice::from_ref(&layer), &policy, QUOTA)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyPaths { limit: 32 }),
        "{err:?}"
    );
    s.assert_nothing_left();
    let policy = UnpackPolicy {
        max_entries: 17,
        ..UnpackPolicy::default()
    };
    let s = Scene::new();
    s.unpack_with(&[layer], &policy, QUOTA).unwrap();
}
