//! The builder's error type.

use std::io;
use std::path::PathBuf;

/// Errors of the guest image builder.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host file or directory could not be read.
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An output file or directory could not be written.
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// [`super::GuestImageSpec::detect`] found no kernel with matching modules.
    #[error(
        "no {boot_dir}/vmlinuz-<release> with a matching {modules_root}/<release>/modules.dep \
         (install Debian's linux-image-amd64)"
    )]
    NoKernel {
        boot_dir: PathBuf,
        modules_root: PathBuf,
    },
    /// The kernel image has no xz stream (it is not an xz-compressed bzImage).
    #[error(
        "no xz-compressed payload in kernel image {path} (only xz-compressed bzImages are supported)"
    )]
    NoXzPayload { path: PathBuf },
    /// The kernel image's xz payload is corrupt or truncated.
    #[error("failed to decompress the xz payload at offset {offset} of kernel image {path}")]
    KernelDecompress {
        path: PathBuf,
        offset: usize,
        #[source]
        source: io::Error,
    },
    /// The kernel image's payload decompressed to something other than an ELF file.
    #[error("the payload at offset {offset} of kernel image {path} is not an ELF file")]
    NotElf { path: PathBuf, offset: usize },
    /// The bzImage's setup header names a different release than the modules directory.
    #[error(
        "kernel image {kernel} is release {kernel_release} but {modules_dir} holds modules for {modules_release}"
    )]
    ReleaseMismatch {
        kernel: PathBuf,
        kernel_release: String,
        modules_dir: PathBuf,
        modules_release: String,
    },
    /// The modules directory's name is not a UTF-8 kernel release.
    #[error("modules directory {path} is not named after a kernel release")]
    InvalidModulesDir { path: PathBuf },
    /// A line of `modules.dep` is malformed.
    #[error("{path}:{line}: {reason}")]
    InvalidModulesDep {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    /// A requested module is neither in `modules.dep` nor in `modules.builtin`.
    #[error("module {name} is neither listed in {modules_dep} nor built into the kernel")]
    UnknownModule { name: String, modules_dep: PathBuf },
    /// `modules.dep` lists a dependency that has no line of its own.
    #[error("module {module} depends on {dependency}, which {modules_dep} does not list")]
    MissingDependency {
        module: String,
        dependency: String,
        modules_dep: PathBuf,
    },
    /// `modules.dep` contains a dependency cycle.
    #[error("module {module} is part of a dependency cycle in {modules_dep}")]
    DependencyCycle {
        module: String,
        modules_dep: PathBuf,
    },
    /// A module is compressed with something other than xz.
    #[error("module {path} uses an unsupported compression (only .ko and .ko.xz are supported)")]
    UnsupportedModuleCompression { path: PathBuf },
    /// An `.ko.xz` module could not be decompressed.
    #[error("failed to decompress module {path}")]
    ModuleDecompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file does not fit the 32-bit size field of a newc header.
    #[error("initramfs entry {name} is larger than the 4 GiB newc limit")]
    EntryTooLarge { name: String },
    /// An initramfs path is empty or contains `.`/`..`, empty components or NUL.
    #[error("invalid initramfs entry name {name:?}")]
    InvalidEntryName { name: String },
    /// An initramfs path was added twice, or as both a file and a directory.
    #[error("initramfs entry {name} is added twice or is both a directory and a file")]
    DuplicateEntry { name: String },
    /// `guest-image.json` of an existing image could not be parsed.
    #[error("{path} is not a guest image manifest")]
    InvalidManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `guest-image.json` could not be serialised.
    #[error("failed to serialise {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
