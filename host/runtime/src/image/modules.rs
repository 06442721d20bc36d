//! Kernel module selection: dependency resolution over `modules.dep` and reading module files.
//!
//! `modules.dep` (written by `depmod`) has one line per module, `kernel/a/b.ko: kernel/c.ko …`, with
//! paths relative to `/lib/modules/<release>`. A module's name is its file stem with `-` normalised
//! to `_`. The load order is a depth-first post-order over the dependency lists (dependencies before
//! dependents, each module once, the requested modules in the given order), so it depends only on
//! the requested names and the contents of `modules.dep`. Requested modules that are built into the
//! kernel (listed in `modules.builtin`) are skipped.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};

use super::ImageError;
use super::kernel::decode_xz_stream;

/// How a module file is stored on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Xz,
}

/// One line of `modules.dep`.
#[derive(Debug)]
struct DepEntry {
    path: String,
    deps: Vec<String>,
}

/// The parsed `modules.dep` and `modules.builtin` of one kernel release.
#[derive(Debug)]
pub(crate) struct ModuleIndex {
    dep_path: PathBuf,
    entries: Vec<DepEntry>,
    by_name: HashMap<String, usize>,
    by_path: HashMap<String, usize>,
    builtin: HashSet<String>,
}

/// DFS marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    Active,
    Done,
}

/// Returns the module name for a path such as `kernel/drivers/char/hw_random/virtio-rng.ko.xz`.
pub(crate) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split('.').next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `<modules_dir>/modules.dep` and (if present) `<modules_dir>/modules.builtin`.
    pub(crate) fn load(modules_dir: &Path) -> Result<Self, ImageError> {
        let dep_path = modules_dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|source| ImageError::Read {
            path: dep_path.clone(),
            source,
        })?;
        let builtin_path = modules_dir.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ImageError::Read {
                    path: builtin_path,
                    source,
                });
            }
        };
        Self::parse(&dep, &builtin, dep_path)
    }

    /// Parses the two files' contents; `dep_path` is only used in errors.
    pub(crate) fn parse(dep: &str, builtin: &str, dep_path: PathBuf) -> Result<Self, ImageError> {
        let mut index = Self {
            dep_path,
            entries: Vec::new(),
            by_name: HashMap::new(),
            by_path: HashMap::new(),
            builtin: builtin
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(module_name)
                .collect(),
        };
        for (number, line) in dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let invalid = |reason| ImageError::InvalidModulesDep {
                path: index.dep_path.clone(),
                line: number + 1,
                reason,
            };
            let (module, deps) = line.split_once(':').ok_or_else(|| invalid("missing ':'"))?;
            let module = module.trim();
            let deps: Vec<String> = deps.split_whitespace().map(str::to_owned).collect();
            if !std::iter::once(module)
                .chain(deps.iter().map(String::as_str))
                .all(is_relative_path)
            {
                return Err(invalid(
                    "module paths must be relative and must not contain '..'",
                ));
            }
            if index.by_path.contains_key(module) {
                return Err(invalid("duplicate module path"));
            }
            let position = index.entries.len();
            index.by_path.insert(module.to_owned(), position);
            // depmod lists a name once; should it not, the first entry wins, as for modprobe.
            index.by_name.entry(module_name(module)).or_insert(position);
            index.entries.push(DepEntry {
                path: module.to_owned(),
                deps,
            });
        }
        Ok(index)
    }

    /// Whether `name` is a loadable module of this kernel (not built in).
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.by_name.contains_key(&name.replace('-', "_"))
    }

    /// Returns the module paths (relative to the modules directory) to load, in load order.
    pub(crate) fn load_order(&self, names: &[String]) -> Result<Vec<String>, ImageError> {
        let mut marks = vec![Mark::New; self.entries.len()];
        let mut order = Vec::new();
        for requested in names {
            let name = requested.replace('-', "_");
            match self.by_name.get(&name) {
                Some(&index) => self.visit(index, &mut marks, &mut order)?,
                None if self.builtin.contains(&name) => {
                    tracing::debug!(module = %name, "module is built into the kernel; skipping");
                }
                None => {
                    return Err(ImageError::UnknownModule {
                        name: requested.clone(),
                        modules_dep: self.dep_path.clone(),
                    });
                }
            }
        }
        Ok(order
            .into_iter()
            .map(|index| self.entries[index].path.clone())
            .collect())
    }

    fn visit(
        &self,
        index: usize,
        marks: &mut [Mark],
        order: &mut Vec<usize>,
    ) -> Result<(), ImageError> {
        match marks[index] {
            Mark::Done => return Ok(()),
            Mark::Active => {
                return Err(ImageError::DependencyCycle {
                    module: self.entries[index].path.clone(),
                    modules_dep: self.dep_path.clone(),
                });
            }
            Mark::New => marks[index] = Mark::Active,
        }
        let entry = &self.entries[index];
        for dep in &entry.deps {
            let &dep_index =
                self.by_path
                    .get(dep)
                    .ok_or_else(|| ImageError::MissingDependency {
                        module: entry.path.clone(),
                        dependency: dep.clone(),
                        modules_dep: self.dep_path.clone(),
                    })?;
            self.visit(dep_index, marks, order)?;
        }
        marks[index] = Mark::Done;
        order.push(index);
        Ok(())
    }
}

/// Whether `path` is a plain relative path (only normal components).
fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// A module file as read from the host.
#[derive(Debug, Clone)]
pub(crate) struct ModuleFile {
    /// Host path, for errors.
    source: PathBuf,
    /// Path relative to the modules directory inside the guest (always ends in `.ko`).
    guest_relative: String,
    compression: Compression,
    /// The file's bytes as stored on the host.
    raw: Vec<u8>,
}

impl ModuleFile {
    /// Reads `<modules_dir>/<relative>`; `.ko` and `.ko.xz` are accepted.
    pub(crate) fn read(modules_dir: &Path, relative: &str) -> Result<Self, ImageError> {
        let source = modules_dir.join(relative);
        let (guest_relative, compression) = if relative.ends_with(".ko") {
            (relative.to_owned(), Compression::None)
        } else if let Some(stem) = relative.strip_suffix(".xz").filter(|s| s.ends_with(".ko")) {
            (stem.to_owned(), Compression::Xz)
        } else {
            return Err(ImageError::UnsupportedModuleCompression { path: source });
        };
        let raw = std::fs::read(&source).map_err(|error| ImageError::Read {
            path: source.clone(),
            source: error,
        })?;
        Ok(Self {
            source,
            guest_relative,
            compression,
            raw,
        })
    }

    /// The path under `/lib/modules/<release>/` the module is stored at in the guest.
    pub(crate) fn guest_relative(&self) -> &str {
        &self.guest_relative
    }

    /// The bytes as read from the host (what the inputs digest covers).
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The uncompressed module, as stored in the guest.
    pub(crate) fn contents(&self) -> Result<Vec<u8>, ImageError> {
        match self.compression {
            Compression::None => Ok(self.raw.clone()),
            Compression::Xz => {
                decode_xz_stream(&self.raw).map_err(|source| ImageError::ModuleDecompress {
                    path: self.source.clone(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::kernel::tests::xz;
    use super::*;

    const DEP: &str = "\
kernel/top.ko: kernel/left.ko kernel/right.ko kernel/base.ko
kernel/left.ko: kernel/base.ko
kernel/right.ko: kernel/base.ko

kernel/base.ko:
kernel/sub/other-mod.ko: kernel/right.ko kernel/base.ko
kernel/lonely.ko:
kernel/cyc_a.ko: kernel/cyc_b.ko
kernel/cyc_b.ko: kernel/cyc_a.ko
kernel/broken.ko: kernel/nowhere.ko
";
    const BUILTIN: &str = "kernel/fs/builtin_fs.ko\nkernel/drivers/virtio/virtio-builtin.ko\n";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn index_in_tempdir() -> (tempfile::TempDir, ModuleIndex) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        std::fs::write(dir.path().join("modules.builtin"), BUILTIN).unwrap();
        let index = ModuleIndex::load(dir.path()).unwrap();
        (dir, index)
    }

    #[test]
    fn names_are_normalised_file_stems() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.xz"), "overlay");
        assert_eq!(module_name("vsock.ko"), "vsock");
    }

    #[test]
    fn diamond_dependencies_load_once_in_post_order() {
        let (_dir, index) = index_in_tempdir();
        let order = index
            .load_order(&names(&[
                "top",
                "other-mod",
                "builtin_fs",
                "virtio_builtin",
                "lonely",
                "top",
            ]))
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/base.ko",
                "kernel/left.ko",
                "kernel/right.ko",
                "kernel/top.ko",
                "kernel/sub/other-mod.ko",
                "kernel/lonely.ko",
            ]
        );
        let position = |p: &str| order.iter().position(|o| o == p).unwrap();
        assert!(position("kernel/base.ko") < position("kernel/left.ko"));
        assert!(position("kernel/base.ko") < position("kernel/right.ko"));
        assert!(position("kernel/right.ko") < position("kernel/top.ko"));
        assert!(position("kernel/top.ko") < position("kernel/sub/other-mod.ko"));
    }

    #[test]
    fn unknown_missing_and_cyclic_modules_are_typed_errors() {
        let (_dir, index) = index_in_tempdir();
        let err = index
            .load_order(&names(&["lonely", "nonexistent"]))
            .unwrap_err();
        assert!(
            matches!(&err, ImageError::UnknownModule { name, .. } if name == "nonexistent"),
            "{err:?}"
        );
        let err = index.load_order(&names(&["broken"])).unwrap_err();
        assert!(
            matches!(&err, ImageError::MissingDependency { dependency, .. } if dependency == "kernel/nowhere.ko")
        );
        let err = index.load_order(&names(&["cyc_a"])).unwrap_err();
        assert!(matches!(err, ImageError::DependencyCycle { .. }), "{err:?}");
    }

    #[test]
    fn malformed_modules_dep_is_rejected() {
        for bad in [
            "kernel/a.ko kernel/b.ko\n",
            "kernel/a.ko: ../evil.ko\n",
            "/abs/a.ko:\n",
            "a.ko:\na.ko:\n",
        ] {
            let err = ModuleIndex::parse(bad, "", PathBuf::from("modules.dep")).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidModulesDep { line: 1 | 2, .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn missing_modules_builtin_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), "kernel/a.ko:\n").unwrap();
        let index = ModuleIndex::load(dir.path()).unwrap();
        assert_eq!(index.load_order(&names(&["a"])).unwrap(), ["kernel/a.ko"]);
        let err = ModuleIndex::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }), "{err:?}");
    }

    #[test]
    fn reads_plain_and_xz_modules_and_rejects_other_compressions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kernel")).unwrap();
        std::fs::write(dir.path().join("kernel/plain.ko"), b"plain module").unwrap();
        std::fs::write(dir.path().join("kernel/packed.ko.xz"), xz(b"packed module")).unwrap();
        std::fs::write(dir.path().join("kernel/zst.ko.zst"), b"zstd").unwrap();

        let plain = ModuleFile::read(dir.path(), "kernel/plain.ko").unwrap();
        assert_eq!(plain.guest_relative(), "kernel/plain.ko");
        assert_eq!(plain.contents().unwrap(), b"plain module");

        let packed = ModuleFile::read(dir.path(), "kernel/packed.ko.xz").unwrap();
        assert_eq!(packed.guest_relative(), "kernel/packed.ko");
        assert_eq!(packed.raw(), xz(b"packed module"));
        assert_eq!(packed.contents().unwrap(), b"packed module");

        let err = ModuleFile::read(dir.path(), "kernel/zst.ko.zst").unwrap_err();
        assert!(
            matches!(err, ImageError::UnsupportedModuleCompression { .. }),
            "{err:?}"
        );
        let err = ModuleFile::read(dir.path(), "kernel/absent.ko").unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }), "{err:?}");
    }
}
