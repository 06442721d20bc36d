//! The accelerator probe's verdicts, cached per host. Whether KVM can boot the guest depends on
//! the host kernel (and the KVM modules it runs, e.g. PVM), on `/dev/kvm`, on the QEMU binary and
//! on the guest kernel; nothing else. A verdict is stored under a key naming exactly those, so a
//! probe is paid once per host and again only when one of them changes (a kernel or QEMU upgrade,
//! another guest kernel), never once per run or per state directory.
//!
//! The file holds one line per key, `<kvm|tcg>\t<key>`, at most [`MAX_ENTRIES`], newest last; it
//! is rewritten whole through a temporary file and a rename, so a reader never sees half a line.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::qemu::Accel;

/// Where verdicts are kept unless the configuration names another file.
pub const DEFAULT_PATH: &str = "/var/cache/coffer/accel-probe";

/// Most verdicts kept (one per guest kernel and QEMU a host has used, recent first).
pub const MAX_ENTRIES: usize = 16;

/// What decides the probe's answer, as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeKey(String);

impl ProbeKey {
    /// The key for booting `guest_kernel` with `qemu` (a path or a name looked up in `PATH`) on
    /// this host now.
    pub fn current(qemu: &Path, guest_kernel: &Path) -> Self {
        let host = format!(
            "{} {}",
            read_trimmed("/proc/sys/kernel/osrelease"),
            read_trimmed("/proc/sys/kernel/version")
        );
        let kvm = match std::fs::metadata("/dev/kvm") {
            Ok(meta) => format!(
                "{}:{} {}",
                nix::sys::stat::major(meta.rdev()),
                nix::sys::stat::minor(meta.rdev()),
                kvm_modules().join(",")
            ),
            Err(_) => "absent".to_owned(),
        };
        let qemu = resolve(qemu);
        Self::from_parts(
            &host,
            &kvm,
            &file_identity(&qemu),
            &file_identity(guest_kernel),
        )
    }

    fn from_parts(host: &str, kvm: &str, qemu: &str, guest_kernel: &str) -> Self {
        let line = format!("host {host}; kvm {kvm}; qemu {qemu}; guest kernel {guest_kernel}");
        // One line, whatever a path or a kernel version string holds.
        Self(line.replace(['\n', '\r', '\t'], " "))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The verdict stored for `key` in `cache`, if any.
pub fn lookup(cache: &Path, key: &ProbeKey) -> Option<Accel> {
    let text = std::fs::read_to_string(cache).ok()?;
    entries(&text)
        .into_iter()
        .rev()
        .find(|(_, k)| *k == key.as_str())
        .map(|(accel, _)| accel)
}

/// Stores `accel` for `key` in `cache` (creating its directory), keeping the other keys' verdicts
/// up to [`MAX_ENTRIES`] in all.
pub fn store(cache: &Path, key: &ProbeKey, accel: Accel) -> std::io::Result<()> {
    let old = std::fs::read_to_string(cache).unwrap_or_default();
    let mut kept: Vec<(Accel, &str)> = entries(&old)
        .into_iter()
        .filter(|(_, k)| *k != key.as_str())
        .collect();
    kept.push((accel, key.as_str()));
    let skip = kept.len().saturating_sub(MAX_ENTRIES);
    let mut text = String::new();
    for (accel, key) in kept.into_iter().skip(skip) {
        text.push_str(accel.name());
        text.push('\t');
        text.push_str(key);
        text.push('\n');
    }
    if let Some(dir) = cache.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = cache.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(name);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, cache)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// The well-formed lines of a cache file; anything else (an older format, damage) is ignored
/// and probed again.
fn entries(text: &str) -> Vec<(Accel, &str)> {
    text.lines()
        .filter_map(|line| {
            let (accel, key) = line.split_once('\t')?;
            let accel = match accel {
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                _ => return None,
            };
            Some((accel, key))
        })
        .collect()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Loaded modules whose name starts with `kvm` (`kvm`, `kvm_intel`, `kvm_amd`, `kvm_pvm`, …),
/// sorted: which of them run decides what `/dev/kvm` can boot.
fn kvm_modules() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("kvm"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `binary` as found in `PATH` when it has no directory part.
fn resolve(binary: &Path) -> PathBuf {
    if binary.components().count() > 1 {
        return binary.to_path_buf();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| binary.to_path_buf())
}

/// A file named by its canonical path, size and modification time: an upgrade or a rebuild in
/// place changes it.
fn file_identity(path: &Path) -> String {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match std::fs::metadata(&canonical) {
        Ok(meta) => format!(
            "{} {} bytes mtime {}.{:09}",
            canonical.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
        Err(_) => format!("{} (missing)", canonical.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_kept_per_key_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("sub/accel-probe");
        let a = ProbeKey::from_parts("6.1 #1", "10:232 kvm", "/usr/bin/qemu 1 bytes", "/k1");
        let b = ProbeKey::from_parts("6.1 #1", "10:232 kvm", "/usr/bin/qemu 1 bytes", "/k2");
        assert_eq!(lookup(&cache, &a), None);
        store(&cache, &a, Accel::Tcg).unwrap();
        store(&cache, &b, Accel::Kvm).unwrap();
        assert_eq!(lookup(&cache, &a), Some(Accel::Tcg));
        assert_eq!(lookup(&cache, &b), Some(Accel::Kvm));
        // A new verdict for a key replaces its old one.
        store(&cache, &a, Accel::Kvm).unwrap();
        assert_eq!(lookup(&cache, &a), Some(Accel::Kvm));
        let text = std::fs::read_to_string(&cache).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        for i in 0..(MAX_ENTRIES + 5) {
            let k = ProbeKey::from_parts("6.1", "kvm", "q", &format!("/k{i}x"));
            store(&cache, &k, Accel::Tcg).unwrap();
        }
        let text = std::fs::read_to_string(&cache).unwrap();
        assert_eq!(text.lines().count(), MAX_ENTRIES);
        assert_eq!(lookup(&cache, &a), None, "the oldest verdicts go first");
    }

    #[test]
    fn another_kernel_or_qemu_is_another_key() {
        let base = ProbeKey::from_parts("6.1 #1", "10:232 kvm,kvm_intel", "/q 5 bytes", "/k 7");
        for other in [
            ProbeKey::from_parts("6.2 #1", "10:232 kvm,kvm_intel", "/q 5 bytes", "/k 7"),
            ProbeKey::from_parts("6.1 #1", "10:232 kvm,kvm_pvm", "/q 5 bytes", "/k 7"),
            ProbeKey::from_parts("6.1 #1", "absent", "/q 5 bytes", "/k 7"),
            ProbeKey::from_parts("6.1 #1", "10:232 kvm,kvm_intel", "/q 6 bytes", "/k 7"),
            ProbeKey::from_parts("6.1 #1", "10:232 kvm,kvm_intel", "/q 5 bytes", "/k 8"),
        ] {
            assert_ne!(base, other);
        }
        let weird = ProbeKey::from_parts("6.1\n#1", "kvm", "/q\t1", "/k\r");
        assert!(!weird.as_str().contains(['\n', '\t', '\r']));
    }

    #[test]
    fn damaged_or_old_format_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe");
        let key = ProbeKey::from_parts("h", "k", "q", "g");
        // The format before this module: the key, a newline, the verdict.
        std::fs::write(
            &cache,
            format!("{}\nkvm\nmaybe\t{}\n", key.as_str(), key.as_str()),
        )
        .unwrap();
        assert_eq!(lookup(&cache, &key), None);
        store(&cache, &key, Accel::Tcg).unwrap();
        assert_eq!(lookup(&cache, &key), Some(Accel::Tcg));
    }

    #[test]
    fn the_current_key_names_this_host() {
        let key = ProbeKey::current(Path::new("sh"), Path::new("/nonexistent/vmlinuz"));
        let text = key.as_str();
        assert!(
            text.contains(&read_trimmed("/proc/sys/kernel/osrelease")),
            "{text}"
        );
        assert!(text.contains("/nonexistent/vmlinuz (missing)"), "{text}");
        assert!(text.contains("qemu /"), "sh resolved through PATH: {text}");
    }
}
