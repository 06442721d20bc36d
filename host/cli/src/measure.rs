//! `coffer measure snp|tdx`: the launch measurement a guest booted from these images will report,
//! computed with `coffer-measure`. Prints the digest as one line of lowercase hex; with
//! `--emit-reference-values FILE` also writes the JSON document `coffer-kbs` takes at
//! `POST /kbs/v0/reference-values` (see `coffer_measure::reference`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use coffer_measure::ovmf::Ovmf;
use coffer_measure::reference::ReferenceValues;
use coffer_measure::snp::{self, KernelHashes, SnpLaunch, VcpuType, VmmType};
use coffer_measure::tdx::{PageAddOrder, Tdvf};
use coffer_runtime::config::RuntimeConfig;
use coffer_runtime::hypervisor::qemu::{Machine, kernel_cmdline};
use coffer_runtime::tee::{TeeKind, TeeLaunch};

/// Largest firmware image read (OVMF images are 2–8 MiB; the architectural limit is 4 GiB).
const MAX_FIRMWARE_LEN: u64 = 128 * 1024 * 1024;
/// Largest existing reference-values file read with `--append-reference-values`.
const MAX_REFERENCE_LEN: u64 = 4 * 1024 * 1024;

/// `coffer measure …`
#[derive(Debug, Subcommand)]
pub enum MeasureCommand {
    /// SEV-SNP launch digest (the report's MEASUREMENT) of a guest booted from OVMF.
    #[command(after_help = crate::examples::MEASURE_SNP)]
    Snp(SnpArgs),
    /// TDX MRTD of a TD booted from a TDVF image (RTMRs are not computed).
    #[command(after_help = crate::examples::MEASURE_TDX)]
    Tdx(TdxArgs),
    /// The SEV-SNP launch digest of the guest this runtime launches: the runtime configuration's
    /// `[snp]` firmware and CPU model, `guest.vcpus`, the guest image's bzImage and initramfs, and
    /// the exact kernel command line `coffer sandbox run --tee snp` uses.
    #[command(after_help = crate::examples::MEASURE_GUEST)]
    Guest(GuestArgs),
}

/// Arguments of `coffer measure guest`.
#[derive(Debug, Args)]
pub struct GuestArgs {
    /// Runtime configuration (default /etc/coffer/runtime.toml when it exists, else the
    /// built-in defaults).
    #[arg(long, env = "COFFER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Guest image directory [config: guest.image_dir].
    #[arg(long, env = "COFFER_IMAGE_DIR")]
    pub image_dir: Option<PathBuf>,
    #[command(flatten)]
    pub emit: EmitArgs,
}

/// The hypervisor launching the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmArg {
    /// QEMU/KVM.
    Qemu,
    /// AWS EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

/// Where the reference values go.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Also write the digest as coffer-kbs reference values (JSON body of
    /// `POST /kbs/v0/reference-values`) to FILE.
    #[arg(long, value_name = "FILE")]
    pub emit_reference_values: Option<PathBuf>,
    /// Add to the values already in FILE instead of replacing them.
    #[arg(long, requires = "emit_reference_values")]
    pub append_reference_values: bool,
}

/// Arguments of `coffer measure snp`.
#[derive(Debug, Args)]
pub struct SnpArgs {
    /// The OVMF image (built with SEV support, e.g. Debian's /usr/share/ovmf/OVMF.fd).
    #[arg(long, value_name = "FILE")]
    pub ovmf: PathBuf,
    /// Kernel for direct boot; its hash, the initrd's and the command line's go into the
    /// firmware's SNP_KERNEL_HASHES page (QEMU `kernel-hashes=on`).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(
        long,
        value_name = "STR",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub append: Option<String>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: u32,
    /// QEMU vCPU model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin, with -vN
    /// versions); required for --vmm-type qemu, unused by ec2 and gce.
    #[arg(long, value_name = "MODEL", conflicts_with = "vcpu_sig")]
    pub vcpu_type: Option<VcpuType>,
    /// CPUID signature (hex) instead of a model name.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u32)]
    pub vcpu_sig: Option<u32>,
    /// The hypervisor.
    #[arg(long, value_enum, default_value = "qemu")]
    pub vmm_type: VmmArg,
    /// SEV_FEATURES of the vCPUs (hex); bit 0 (SNPActive) must be set.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u64, default_value = "0x1")]
    pub guest_features: u64,
    #[command(flatten)]
    pub emit: EmitArgs,
}

/// Order of page adds and extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    /// Add then extend each page (Linux KVM).
    SinglePass,
    /// Add every page of a section, then extend them.
    TwoPass,
}

/// Arguments of `coffer measure tdx`.
#[derive(Debug, Args)]
pub struct TdxArgs {
    /// The TDVF image (OVMF built with TDX support).
    #[arg(long, value_name = "FILE")]
    pub tdvf: PathBuf,
    /// Order in which the VMM adds and measures pages.
    #[arg(long, value_enum, default_value = "single-pass")]
    pub page_add_order: OrderArg,
    #[command(flatten)]
    pub emit: EmitArgs,
}

/// Runs the command; `Ok(exit code)`.
pub fn run(command: MeasureCommand) -> anyhow::Result<u8> {
    match command {
        MeasureCommand::Snp(args) => measure_snp(&args),
        MeasureCommand::Tdx(args) => measure_tdx(&args),
        MeasureCommand::Guest(args) => measure_guest(args),
    }
}

/// Guest features QEMU (≥ 9.1, `KVM_SEV_INIT2` with no extra VMSA features) launches with:
/// SNPActive only.
const QEMU_GUEST_FEATURES: u64 = 0x1;

fn measure_guest(args: GuestArgs) -> anyhow::Result<u8> {
    let mut runtime = RuntimeConfig::load_or_default(args.config.as_deref())?;
    if let Some(dir) = args.image_dir {
        runtime.guest.image_dir = dir;
    }
    let TeeLaunch::Snp(snp) = runtime.tee_launch(TeeKind::Snp) else {
        bail!("the runtime configuration gave no SEV-SNP launch");
    };
    let vcpu_type: VcpuType = snp
        .cpu_model
        .parse()
        .map_err(|e| anyhow::anyhow!("snp.cpu_model {}: {e}", snp.cpu_model))?;
    // Without kernel hashes QEMU measures the firmware alone; with them, what it loads.
    let (kernel, initrd, append) = if snp.kernel_hashes {
        (
            Some(snp.kernel.unwrap_or_else(|| runtime.tee_kernel())),
            Some(runtime.initrd()),
            Some(kernel_cmdline(
                Machine::Q35,
                None,
                &runtime.guest.kernel_params,
            )),
        )
    } else {
        (None, None, None)
    };
    measure_snp(&SnpArgs {
        ovmf: snp.firmware,
        kernel,
        initrd,
        append,
        vcpus: runtime.guest.vcpus,
        vcpu_type: Some(vcpu_type),
        vcpu_sig: None,
        vmm_type: VmmArg::Qemu,
        guest_features: QEMU_GUEST_FEATURES,
        emit: args.emit,
    })
}

fn measure_snp(args: &SnpArgs) -> anyhow::Result<u8> {
    let vmm = match args.vmm_type {
        VmmArg::Qemu => VmmType::Qemu,
        VmmArg::Ec2 => VmmType::Ec2,
        VmmArg::Gce => VmmType::Gce,
    };
    let vcpu_signature = match (args.vcpu_type, args.vcpu_sig) {
        (Some(t), _) => t.signature(),
        (None, Some(sig)) => sig,
        // EC2 and GCE start every vCPU with RDX = 0x600 whatever the model.
        (None, None) if vmm != VmmType::Qemu => 0,
        (None, None) => bail!("--vmm-type qemu needs --vcpu-type MODEL or --vcpu-sig HEX"),
    };
    let image = read_bounded(&args.ovmf, MAX_FIRMWARE_LEN)?;
    let firmware =
        Ovmf::parse(image).with_context(|| format!("parsing {}", args.ovmf.display()))?;
    let kernel_hashes = match &args.kernel {
        Some(kernel) => {
            let initrd = args.initrd.as_deref().map(sha256_file).transpose()?;
            Some(KernelHashes::new(
                sha256_file(kernel)?,
                initrd,
                args.append.as_deref(),
            ))
        }
        None => None,
    };
    let launch = SnpLaunch {
        vcpus: args.vcpus,
        vcpu_signature,
        vmm,
        guest_features: args.guest_features,
        kernel_hashes,
    };
    let digest = snp::launch_digest(&firmware, &launch)
        .with_context(|| format!("measuring {}", args.ovmf.display()))?;
    if let Some(file) = &args.emit.emit_reference_values {
        emit(file, args.emit.append_reference_values, |v| {
            v.add_snp(&digest)
        })?;
    }
    println!("{}", hex::encode(digest));
    Ok(0)
}

fn measure_tdx(args: &TdxArgs) -> anyhow::Result<u8> {
    let image = read_bounded(&args.tdvf, MAX_FIRMWARE_LEN)?;
    let tdvf = Tdvf::parse(&image).with_context(|| format!("parsing {}", args.tdvf.display()))?;
    let order = match args.page_add_order {
        OrderArg::SinglePass => PageAddOrder::SinglePass,
        OrderArg::TwoPass => PageAddOrder::TwoPass,
    };
    let mrtd = tdvf.mrtd(order);
    if let Some(file) = &args.emit.emit_reference_values {
        emit(file, args.emit.append_reference_values, |v| {
            v.add_tdx_mr_td(&mrtd)
        })?;
    }
    println!("{}", hex::encode(mrtd));
    Ok(0)
}

/// Writes the reference values (replacing FILE, or adding to it), atomically.
fn emit(file: &Path, append: bool, add: impl FnOnce(&mut ReferenceValues)) -> anyhow::Result<()> {
    let mut values = if append && file.exists() {
        let text = read_bounded(file, MAX_REFERENCE_LEN)?;
        ReferenceValues::from_json(&text).with_context(|| format!("reading {}", file.display()))?
    } else {
        ReferenceValues::default()
    };
    add(&mut values);
    let name = file
        .file_name()
        .with_context(|| format!("{} is not a file name", file.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = file.with_file_name(tmp_name);
    std::fs::write(&tmp, values.to_json()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    coffer_measure::sha256_reader(file).with_context(|| format!("reading {}", path.display()))
}

fn read_bounded(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(bytes)
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not hex: {e}"))
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let value = parse_hex_u64(s)?;
    u32::try_from(value).map_err(|_| format!("{s:?} does not fit 32 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_values() {
        assert_eq!(parse_hex_u64("0x21"), Ok(0x21));
        assert_eq!(parse_hex_u64("21"), Ok(0x21));
        assert!(parse_hex_u64("0xzz").is_err());
        assert!(parse_hex_u32("0x1_0000_0000").is_err());
        assert!(parse_hex_u32("100000000").is_err());
    }
}
