//! End-to-end tests of [`super::build`] on synthetic inputs and on the host's Debian kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::kernel::tests::{fake_bzimage, fake_elf, xz};
use super::newc_reader::{Entry, parse};
use super::*;

const RELEASE: &str = "9.9.9-1-test";

/// A synthetic kernel, modules directory and agent in a tempdir.
struct Fixture {
    dir: tempfile::TempDir,
    spec: GuestImageSpec,
}

impl Fixture {
    fn new() -> Self {
        Self::with_payload(&fake_elf())
    }

    fn with_payload(payload: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let modules_dir = root.join("lib/modules").join(RELEASE);
        for sub in [
            "kernel/drivers/virtio",
            "kernel/drivers/net",
            "kernel/net/core",
            "kernel/net/vmw_vsock",
            "kernel/fs/overlayfs",
        ] {
            fs::create_dir_all(modules_dir.join(sub)).unwrap();
        }
        fs::write(
            modules_dir.join("modules.dep"),
            "kernel/fs/overlayfs/overlay.ko.xz:\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/net/vmw_vsock/vsock.ko:\n\
             kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n\
             kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n",
        )
        .unwrap();
        fs::write(
            modules_dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n",
        )
        .unwrap();
        for module in [
            "drivers/virtio/virtio",
            "drivers/virtio/virtio_ring",
            "drivers/virtio/virtio_mmio",
            "net/vmw_vsock/vsock",
            "net/vmw_vsock/vmw_vsock_virtio_transport_common",
            "net/vmw_vsock/vmw_vsock_virtio_transport",
            "drivers/net/virtio_net",
            "drivers/net/net_failover",
            "net/core/failover",
        ] {
            fs::write(
                modules_dir.join(format!("kernel/{module}.ko")),
                format!("module {module}"),
            )
            .unwrap();
        }
        fs::write(
            modules_dir.join("kernel/fs/overlayfs/overlay.ko.xz"),
            xz(b"module overlay"),
        )
        .unwrap();
        let kernel = root.join(format!("vmlinuz-{RELEASE}"));
        fs::write(&kernel, fake_bzimage(payload, Some(RELEASE))).unwrap();
        let agent = root.join("coffer-agent");
        fs::write(&agent, b"\x7fELF static agent").unwrap();
        // The default selection and one xz-compressed module, as Debian ships them.
        let modules = DEFAULT_MODULES
            .iter()
            .chain(&["overlay"])
            .map(|m| (*m).to_owned())
            .collect();
        Self {
            spec: GuestImageSpec {
                kernel,
                modules_dir,
                agent,
                modules,
            },
            dir,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn entry<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} missing from initramfs"))
}

fn dir_listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn builds_expected_layout() {
    let fixture = Fixture::new();
    let out = fixture.out("out");
    let image = build(&fixture.spec, &out).unwrap();
    assert_eq!(image.kernel_release, RELEASE);
    assert_eq!(image.vmlinux, out.join("vmlinux"));
    assert_eq!(fs::read(&image.vmlinux).unwrap(), fake_elf());
    assert_eq!(image.vmlinux_sha256, sha256_hex(&fake_elf()));
    // The bzImage ships unchanged for confidential launches.
    let bzimage = fs::read(&fixture.spec.kernel).unwrap();
    assert_eq!(fs::read(&image.vmlinuz).unwrap(), bzimage);
    assert_eq!(image.vmlinuz_sha256, sha256_hex(&bzimage));
    let initramfs = fs::read(&image.initramfs).unwrap();
    assert_eq!(image.initramfs_sha256, sha256_hex(&initramfs));
    assert_eq!(
        dir_listing(&out),
        ["guest-image.json", "initramfs", "vmlinux", "vmlinuz"]
            .map(String::from)
            .into()
    );

    let entries = parse(&initramfs);
    let root = format!("lib/modules/{RELEASE}");
    let expected_order = [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_mmio.ko",
        "kernel/net/vmw_vsock/vsock.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ];
    let list: String = expected_order
        .iter()
        .map(|m| format!("/{root}/{m}\n"))
        .collect();
    assert_eq!(
        String::from_utf8(entry(&entries, "etc/coffer/modules").data.clone()).unwrap(),
        list
    );
    assert_eq!(entry(&entries, "etc/coffer/modules").mode, 0o100_644);
    // The synthetic kernel has no netfilter modules: an empty on-demand list.
    assert!(
        entry(&entries, "etc/coffer/modules-netfilter")
            .data
            .is_empty()
    );
    assert_eq!(
        entry(&entries, "etc/coffer/modules-netfilter").mode,
        0o100_644
    );
    // The NIC driver, apart from the boot list, after its dependencies; the virtio core it needs
    // is already in the boot list and not repeated.
    let network_order = [
        "kernel/net/core/failover.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
    ];
    let network_list: String = network_order
        .iter()
        .map(|m| format!("/{root}/{m}\n"))
        .collect();
    assert_eq!(
        String::from_utf8(entry(&entries, "etc/coffer/modules-network").data.clone()).unwrap(),
        network_list
    );
    assert_eq!(
        entry(&entries, "etc/coffer/modules-network").mode,
        0o100_644
    );
    for module in network_order {
        assert_eq!(
            entry(&entries, &format!("{root}/{module}")).data,
            format!(
                "module {}",
                module.trim_start_matches("kernel/").trim_end_matches(".ko")
            )
            .into_bytes()
        );
    }
    for module in expected_order {
        let file = entry(&entries, &format!("{root}/{module}"));
        assert_eq!(file.mode, 0o100_644);
        assert!(file.data.starts_with(b"module "), "{module}");
    }
    assert_eq!(
        entry(&entries, &format!("{root}/kernel/fs/overlayfs/overlay.ko")).data,
        b"module overlay"
    );
    assert_eq!(entry(&entries, "init").data, b"\x7fELF static agent");
    assert_eq!(entry(&entries, "init").mode, 0o100_755);
    assert_eq!(
        entry(&entries, "etc/hosts").data,
        b"127.0.0.1 localhost\n::1 localhost\n"
    );
    assert_eq!(entry(&entries, "etc/hosts").mode, 0o100_644);
    assert_eq!(entry(&entries, "dev/console").mode, 0o020_600);
    assert_eq!(entry(&entries, "dev/console").rdev, (5, 1));
    assert_eq!(entry(&entries, "tmp").mode, 0o041_777);
    for dir in [
        "dev",
        "etc",
        "etc/coffer",
        "lib",
        "lib/modules",
        "newroot",
        "proc",
        "run",
        "sys",
        &root,
    ] {
        assert_eq!(entry(&entries, dir).mode, 0o040_755, "{dir}");
    }
    // Every parent directory is present, and precedes its children.
    for (position, e) in entries.iter().enumerate() {
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            assert!(
                entries[..position].iter().any(|p| p.name == parent),
                "{} lacks its parent",
                e.name
            );
        }
    }
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(out.join("guest-image.json")).unwrap()).unwrap();
    assert_eq!(manifest.image, image);
    assert_eq!(
        manifest.modules,
        list.lines().map(String::from).collect::<Vec<_>>()
    );
    assert_eq!(
        manifest.network_modules,
        network_list.lines().map(String::from).collect::<Vec<_>>()
    );
    assert!(manifest.netfilter_modules.is_empty());
}

#[test]
fn same_inputs_give_identical_bytes() {
    let fixture = Fixture::new();
    let first = build(&fixture.spec, &fixture.out("one")).unwrap();
    let second = build(&fixture.spec, &fixture.out("two")).unwrap();
    assert_eq!(
        fs::read(&first.vmlinux).unwrap(),
        fs::read(&second.vmlinux).unwrap()
    );
    assert_eq!(
        fs::read(&first.initramfs).unwrap(),
        fs::read(&second.initramfs).unwrap()
    );
    assert_eq!(
        (&first.vmlinux_sha256, &first.initramfs_sha256),
        (&second.vmlinux_sha256, &second.initramfs_sha256)
    );
    // A second, independently created fixture with the same contents also matches.
    let other = Fixture::new();
    let third = build(&other.spec, &other.out("three")).unwrap();
    assert_eq!(third.initramfs_sha256, first.initramfs_sha256);
}

#[test]
fn reuses_up_to_date_artifacts_and_rebuilds_otherwise() {
    let mut fixture = Fixture::new();
    let out = fixture.out("out");
    let first = build(&fixture.spec, &out).unwrap();
    let inode = |name: &str| fs::metadata(out.join(name)).unwrap().ino();
    let (vmlinux_ino, initramfs_ino) = (inode("vmlinux"), inode("initramfs"));

    assert_eq!(build(&fixture.spec, &out).unwrap(), first);
    assert_eq!(
        (inode("vmlinux"), inode("initramfs")),
        (vmlinux_ino, initramfs_ino),
        "rebuilt needlessly"
    );

    // A damaged artifact is rebuilt.
    fs::write(out.join("initramfs"), b"damaged").unwrap();
    assert_eq!(build(&fixture.spec, &out).unwrap(), first);
    assert_eq!(
        sha256_file(&out.join("initramfs")).unwrap(),
        first.initramfs_sha256
    );

    // Changed inputs change the initramfs but not the kernel.
    let kernel_written = fs::metadata(&first.vmlinux).unwrap().modified().unwrap();
    fs::write(&fixture.spec.agent, b"another agent").unwrap();
    let second = build(&fixture.spec, &out).unwrap();
    assert_ne!(second.initramfs_sha256, first.initramfs_sha256);
    assert_eq!(second.vmlinux_sha256, first.vmlinux_sha256);
    // The unchanged kernel is not rewritten (the accelerator probe's cache keys on its mtime).
    assert_eq!(
        fs::metadata(&second.vmlinux).unwrap().modified().unwrap(),
        kernel_written
    );

    // So does a different module selection.
    fixture.spec.modules = vec!["overlay".to_owned()];
    let third = build(&fixture.spec, &out).unwrap();
    assert_ne!(third.initramfs_sha256, second.initramfs_sha256);
    assert_eq!(
        dir_listing(&out),
        ["guest-image.json", "initramfs", "vmlinux", "vmlinuz"]
            .map(String::from)
            .into()
    );
}

#[test]
fn non_elf_kernel_payload_fails_without_writing_artifacts() {
    let fixture = Fixture::with_payload(b"this is not an ELF kernel");
    let out = fixture.out("out");
    let err = build(&fixture.spec, &out).unwrap_err();
    assert!(matches!(err, ImageError::NotElf { .. }), "{err:?}");
    assert!(!out.join("vmlinux").exists() && !out.join("initramfs").exists());
}

#[test]
fn input_errors_are_typed() {
    let mut fixture = Fixture::new();
    fixture.spec.modules.push("no_such_module".to_owned());
    let err = build(&fixture.spec, &fixture.out("out")).unwrap_err();
    assert!(
        matches!(&err, ImageError::UnknownModule { name, .. } if name == "no_such_module"),
        "{err:?}"
    );

    let fixture = Fixture::new();
    fs::write(
        &fixture.spec.kernel,
        fake_bzimage(&fake_elf(), Some("1.2.3-other")),
    )
    .unwrap();
    let err = build(&fixture.spec, &fixture.out("out")).unwrap_err();
    assert!(
        matches!(&err, ImageError::ReleaseMismatch { kernel_release, .. } if kernel_release == "1.2.3-other")
    );

    let mut fixture = Fixture::new();
    fixture.spec.agent = fixture.out("missing-agent");
    let err = build(&fixture.spec, &fixture.out("out")).unwrap_err();
    assert!(
        matches!(&err, ImageError::Read { path, .. } if path.ends_with("missing-agent")),
        "{err:?}"
    );
}

#[test]
fn detect_picks_newest_release_with_modules() {
    let dir = tempfile::tempdir().unwrap();
    let (boot, modules_root) = (dir.path().join("boot"), dir.path().join("modules"));
    fs::create_dir_all(&boot).unwrap();
    let err = GuestImageSpec::detect_in(&boot, &modules_root, PathBuf::from("agent")).unwrap_err();
    assert!(matches!(err, ImageError::NoKernel { .. }), "{err:?}");

    for release in ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.2.0-1-amd64"] {
        fs::write(boot.join(format!("vmlinuz-{release}")), b"bz").unwrap();
        fs::write(boot.join(format!("config-{release}")), b"").unwrap();
    }
    for release in ["6.1.0-9-amd64", "6.1.0-10-amd64", "7.0.0-1-amd64"] {
        fs::create_dir_all(modules_root.join(release)).unwrap();
        fs::write(modules_root.join(release).join("modules.dep"), b"").unwrap();
    }
    let spec = GuestImageSpec::detect_in(&boot, &modules_root, PathBuf::from("agent")).unwrap();
    assert_eq!(spec.kernel, boot.join("vmlinuz-6.1.0-10-amd64"));
    assert_eq!(spec.modules_dir, modules_root.join("6.1.0-10-amd64"));
    assert_eq!(spec.agent, PathBuf::from("agent"));
    assert_eq!(spec.modules, DEFAULT_MODULES);
}

#[test]
fn versions_compare_numerically() {
    use std::cmp::Ordering::{Greater, Less};
    assert_eq!(compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64"), Greater);
    assert_eq!(compare_versions("6.10.0-1-amd64", "6.9.0-1-amd64"), Greater);
    assert_eq!(
        compare_versions("6.1.0-56-amd64", "6.1.0-56-cloud-amd64"),
        Less
    );
    assert_eq!(compare_versions("6.1", "6.1.0"), Less);
}

/// Builds from the host's real Debian kernel. Fails (never skips) when the kernel is missing.
/// Where the module file `file` is in the load order `order`.
fn position_in(order: &[String], file: &str) -> usize {
    order
        .iter()
        .position(|path| path.ends_with(&format!("/{file}")))
        .unwrap_or_else(|| panic!("{file} not in load order {order:?}"))
}

#[test]
fn builds_real_debian_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("coffer-agent");
    fs::write(&agent, b"dummy agent").unwrap();
    let spec = GuestImageSpec::detect(agent).unwrap_or_else(|error| {
        panic!(
            "no host kernel to build a guest image from ({error}); run the test setup script, which \
             installs Debian's linux-image-amd64 (/boot/vmlinuz-* and /lib/modules/<release>)"
        )
    });
    let out = dir.path().join("out");
    let image = build(&spec, &out).unwrap();
    let mut magic = [0u8; 4];
    io::Read::read_exact(&mut File::open(&image.vmlinux).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"\x7fELF");
    assert_eq!(
        Some(image.kernel_release.as_str()),
        spec.modules_dir.file_name().and_then(|n| n.to_str())
    );

    let entries = parse(&fs::read(&image.initramfs).unwrap());
    let order: Vec<String> = String::from_utf8(entry(&entries, "etc/coffer/modules").data.clone())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let position = |file: &str| position_in(&order, file);
    assert!(
        position("virtio.ko") < position("virtio_mmio.ko"),
        "{order:?}"
    );
    assert!(
        position("vsock.ko") < position("vmw_vsock_virtio_transport.ko"),
        "{order:?}"
    );
    // The netfilter modules iptables-nft needs, in dependency order, apart from the boot list.
    let netfilter: Vec<String> =
        String::from_utf8(entry(&entries, "etc/coffer/modules-netfilter").data.clone())
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
    let nf_position = |file: &str| position_in(&netfilter, file);
    assert!(nf_position("crc32c_generic.ko") < nf_position("libcrc32c.ko"));
    assert!(nf_position("nfnetlink.ko") < nf_position("nf_tables.ko"));
    assert!(nf_position("x_tables.ko") < nf_position("nft_compat.ko"));
    assert!(nf_position("nf_conntrack.ko") < nf_position("nf_nat.ko"));
    assert!(nf_position("nf_nat.ko") < nf_position("nft_chain_nat.ko"));
    assert!(nf_position("nf_nat.ko") < nf_position("xt_REDIRECT.ko"));
    nf_position("xt_tcpudp.ko");
    assert!(
        netfilter.iter().all(|m| !order.contains(m)),
        "{netfilter:?}"
    );
    // The NIC driver after what modules.dep says it needs, apart from the boot list (which has
    // the virtio core it also needs).
    let network: Vec<String> =
        String::from_utf8(entry(&entries, "etc/coffer/modules-network").data.clone())
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
    let net_position = |file: &str| position_in(&network, file);
    assert!(net_position("failover.ko") < net_position("net_failover.ko"));
    assert!(net_position("net_failover.ko") < net_position("virtio_net.ko"));
    assert!(network.iter().all(|m| !order.contains(m)), "{network:?}");
    position("virtio.ko");
    for path in order.iter().chain(&netfilter).chain(&network) {
        assert!(
            entry(&entries, path.trim_start_matches('/'))
                .data
                .starts_with(b"\x7fELF"),
            "{path}"
        );
    }
    // The second build reuses the artifacts.
    assert_eq!(build(&spec, &out).unwrap(), image);
}
