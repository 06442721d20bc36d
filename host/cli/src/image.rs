//! `coffer image build`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use coffer_runtime::image::{self, GuestImageSpec};

/// Default location of the guest image.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/coffer/guest";

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The static coffer-agent binary (default: `coffer-agent` next to this `coffer`).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Output directory.
    #[arg(long, env = "COFFER_IMAGE_DIR", default_value = DEFAULT_IMAGE_DIR)]
    out: PathBuf,
    /// Kernel bzImage (default: the newest /boot/vmlinuz-* with modules).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `coffer-agent` beside the running `coffer` binary.
pub fn sibling_agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the coffer binary")?;
    Ok(exe.with_file_name("coffer-agent"))
}

pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let agent = match args.agent {
        Some(a) => a,
        None => sibling_agent()?,
    };
    let mut spec = GuestImageSpec::detect(agent).context("finding the guest kernel")?;
    if let Some(kernel) = args.kernel {
        spec.kernel = kernel;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let built = image::build(&spec, &args.out).context("building the guest image")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        println!("kernel release  {}", built.kernel_release);
        println!("{}  {}", built.vmlinux_sha256, built.vmlinux.display());
        println!("{}  {}", built.initramfs_sha256, built.initramfs.display());
    }
    Ok(())
}
