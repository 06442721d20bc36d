//! What this host can launch: SEV-SNP and TDX support in KVM, and a QEMU that knows the objects.
//! Every check takes a root directory so tests can run it against a fake `/sys` and `/dev`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{TeeError, TeeKind};

/// A QEMU binary's version and the `-object` types it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuInfo {
    /// `(major, minor, micro)`.
    pub version: (u32, u32, u32),
    /// Object type names from `-object help`.
    pub objects: BTreeSet<String>,
}

impl QemuInfo {
    /// Asks `binary` for its version and object types.
    pub fn probe(binary: &Path) -> Result<Self, String> {
        let run = |args: &[&str]| -> Result<String, String> {
            let out = Command::new(binary)
                .args(args)
                .output()
                .map_err(|e| format!("running {} {}: {e}", binary.display(), args.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "{} {} failed: {}",
                    binary.display(),
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let version = parse_version(&run(&["--version"])?)
            .ok_or_else(|| format!("{} printed no version", binary.display()))?;
        let objects = parse_objects(&run(&["-object", "help"])?);
        Ok(Self { version, objects })
    }
}

/// Parses `QEMU emulator version 10.0.2 (Debian …)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Parses `-object help`: a header line, then one indented type name per line.
pub fn parse_objects(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with(' '))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What a TEE needs from QEMU: the object type and the first version that launches it.
fn qemu_requirement(kind: TeeKind) -> (&'static str, (u32, u32)) {
    match kind {
        TeeKind::Snp => ("sev-snp-guest", (9, 1)),
        TeeKind::Tdx => ("tdx-guest", (10, 1)),
    }
}

fn kvm_parameter(root: &Path, module: &str, parameter: &str) -> Result<(), String> {
    let path: PathBuf = root
        .join("sys/module")
        .join(module)
        .join("parameters")
        .join(parameter);
    match std::fs::read_to_string(&path) {
        Ok(v) if matches!(v.trim(), "Y" | "y" | "1") => Ok(()),
        Ok(v) => Err(format!("{} is {:?}", path.display(), v.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist ({module} not loaded or too old)",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Checks that this host can launch `kind` guests: KVM support under `root` (normally `/`) and
/// what `qemu` reports. Every missing piece is named in the error.
pub fn check(kind: TeeKind, root: &Path, qemu: &Result<QemuInfo, String>) -> Result<(), TeeError> {
    let mut reasons = Vec::new();
    match kind {
        TeeKind::Snp => {
            if let Err(r) = kvm_parameter(root, "kvm_amd", "sev_snp") {
                reasons.push(r);
            }
            let sev = root.join("dev/sev");
            if !sev.exists() {
                reasons.push(format!(
                    "{} does not exist (no AMD secure processor)",
                    sev.display()
                ));
            }
        }
        TeeKind::Tdx => {
            if let Err(r) = kvm_parameter(root, "kvm_intel", "tdx") {
                reasons.push(r);
            }
        }
    }
    let kvm = root.join("dev/kvm");
    if !kvm.exists() {
        reasons.push(format!("{} does not exist", kvm.display()));
    }
    let (object, (major, minor)) = qemu_requirement(kind);
    match qemu {
        Ok(info) => {
            if !info.objects.contains(object) {
                reasons.push(format!(
                    "QEMU {}.{}.{} has no {object} object (needs QEMU ≥ {major}.{minor})",
                    info.version.0, info.version.1, info.version.2
                ));
            } else if (info.version.0, info.version.1) < (major, minor) {
                reasons.push(format!(
                    "QEMU {}.{}.{} is older than {major}.{minor}",
                    info.version.0, info.version.1, info.version.2
                ));
            }
        }
        Err(e) => reasons.push(e.clone()),
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(TeeError::Unavailable { tee: kind, reasons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str =
        "List of user creatable objects:\n  authz-list\n  sev-guest\n  sev-snp-guest\n";

    fn qemu(version: (u32, u32, u32), help: &str) -> Result<QemuInfo, String> {
        Ok(QemuInfo {
            version,
            objects: parse_objects(help),
        })
    }

    fn fake_root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        root
    }

    #[test]
    fn version_and_objects_parse() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some((10, 0, 2))
        );
        assert_eq!(parse_version("QEMU emulator version 7.2"), Some((7, 2, 0)));
        assert_eq!(parse_version("nonsense"), None);
        let objects = parse_objects(HELP);
        assert!(objects.contains("sev-snp-guest") && !objects.contains("List"));
    }

    #[test]
    fn snp_host_passes_only_with_everything() {
        let good = fake_root(&[
            ("sys/module/kvm_amd/parameters/sev_snp", "Y\n"),
            ("dev/sev", ""),
            ("dev/kvm", ""),
        ]);
        assert!(check(TeeKind::Snp, good.path(), &qemu((10, 0, 2), HELP)).is_ok());
        // Old QEMU without the object.
        let err = check(
            TeeKind::Snp,
            good.path(),
            &qemu((7, 2, 0), "x\n  sev-guest\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no sev-snp-guest object"), "{err}");

        let off = fake_root(&[("sys/module/kvm_amd/parameters/sev_snp", "N\n")]);
        let err = check(TeeKind::Snp, off.path(), &qemu((10, 0, 2), HELP))
            .unwrap_err()
            .to_string();
        for want in [
            "sev_snp is \"N\"",
            "dev/sev does not exist",
            "dev/kvm does not exist",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn tdx_needs_module_parameter_and_new_qemu() {
        let root = fake_root(&[
            ("sys/module/kvm_intel/parameters/tdx", "Y"),
            ("dev/kvm", ""),
        ]);
        let err = check(TeeKind::Tdx, root.path(), &qemu((10, 0, 2), HELP))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tdx-guest object"), "{err}");
        let help = format!("{HELP}  tdx-guest\n");
        assert!(check(TeeKind::Tdx, root.path(), &qemu((10, 1, 0), &help)).is_ok());
        let err = check(TeeKind::Tdx, root.path(), &Err("qemu missing".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("qemu missing"), "{err}");
    }
}
