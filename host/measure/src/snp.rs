//! The SEV-SNP launch digest: what the AMD secure processor reports as `MEASUREMENT` for a guest
//! launched from an OVMF image.
//!
//! Model (SEV-SNP Firmware ABI Specification, AMD pub. 56860: `SNP_LAUNCH_UPDATE` and the
//! `PAGE_INFO` structure). The guest context's launch digest `LD` starts as 48 zero bytes; every
//! page the VMM adds before `SNP_LAUNCH_FINISH` replaces it with
//! `SHA-384(PAGE_INFO)`, where `PAGE_INFO` (0x70 bytes) is
//!
//! | offset | field |
//! |---|---|
//! | 0x00 | `DIGEST_CUR`: the current `LD` |
//! | 0x30 | `CONTENTS`: SHA-384 of the page for NORMAL and VMSA pages, zero otherwise |
//! | 0x60 | `LENGTH` (u16) = 0x70 |
//! | 0x62 | `PAGE_TYPE` (u8): 1 NORMAL, 2 VMSA, 3 ZERO, 4 UNMEASURED, 5 SECRETS, 6 CPUID |
//! | 0x63 | `IMI_PAGE` (u8) = 0 |
//! | 0x64 | VMPL3/2/1 permissions (u8 each) = 0, reserved (u8) |
//! | 0x68 | `GPA` (u64); VMSA pages use `0xFFFFFFFFF000` (KVM's placeholder, bits above 51 clear) |
//!
//! The sequence a VMM issues (QEMU/KVM; EC2 and GCE differ where noted, as observed from their
//! launches and mirrored by the reference tool `sev-snp-measure`):
//! 1. every 4 KiB page of the OVMF image, NORMAL, at `4 GiB - len + offset`;
//! 2. each OVMF SEV metadata section in image order: `SNP_SEC_MEM` → ZERO pages (GCE:
//!    UNMEASURED); `SNP_SECRETS` → SECRETS; `CPUID` → CPUID (EC2: after all other sections);
//!    `SNP_KERNEL_HASHES` → the hashes page as NORMAL when a kernel is given, ZERO pages otherwise;
//!    `SVSM_CAA` → ZERO pages;
//! 3. one VMSA page per vCPU: the boot processor starts at the reset vector `0xFFFFFFF0`, the
//!    others at the SEV-ES AP reset block address. The VMSA (AMD64 APM vol. 2, table B-4, "VMSA
//!    layout, state save area for SEV-ES") holds the architectural reset state KVM programs, with
//!    `RDX` = the vCPU's CPUID signature (QEMU) and `SEV_FEATURES` = the guest features.

use sha2::{Digest, Sha256, Sha384};

use crate::ovmf::{Ovmf, OvmfError, PAGE_SIZE, SectionKind};

/// Length of a launch digest.
pub const DIGEST_LEN: usize = 48;
/// Guest-physical address recorded for VMSA pages.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// Reset address of the boot processor.
pub const BSP_EIP: u32 = 0xFFFF_FFF0;
/// `SEV_FEATURES.SNPActive`: required in every SNP VMSA.
pub const SEV_FEATURES_SNP_ACTIVE: u64 = 1;
/// Largest vCPU count accepted (KVM's x86 `KVM_MAX_VCPUS`).
pub const MAX_VCPUS: u32 = 4096;

/// Failures computing a launch digest.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The firmware is malformed or lacks what SNP needs.
    #[error("firmware")]
    Firmware(#[from] OvmfError),
    /// The firmware has no SEV metadata, so it cannot launch an SNP guest.
    #[error("firmware has no sev metadata: it cannot boot an SEV-SNP guest")]
    NoSevMetadata,
    /// Kernel hashes were given but the firmware has nowhere to put them.
    #[error(
        "firmware has no SNP_KERNEL_HASHES section: it cannot verify --kernel/--initrd/--append"
    )]
    NoKernelHashesSection,
    /// The kernel-hashes section and the hash table address disagree.
    #[error(
        "kernel hashes table at {table_gpa:#x} does not fit the SNP_KERNEL_HASHES page at {section_gpa:#x} ({section_size:#x} bytes)"
    )]
    KernelHashesLayout {
        /// GPA of the table (footer entry).
        table_gpa: u64,
        /// GPA of the section.
        section_gpa: u64,
        /// Size of the section.
        section_size: u64,
    },
    /// The vCPU count is out of range.
    #[error("vcpu count {vcpus} is outside 1..={MAX_VCPUS}")]
    Vcpus {
        /// Requested count.
        vcpus: u32,
    },
    /// Application processors need a reset address and the firmware gives zero.
    #[error("firmware's sev-es ap reset address is zero: cannot start {vcpus} vcpus")]
    NoApResetAddress {
        /// Requested count.
        vcpus: u32,
    },
    /// The guest features lack SNPActive.
    #[error("guest features {features:#x} lack SNPActive (bit 0)")]
    GuestFeatures {
        /// The value given.
        features: u64,
    },
}

/// Page types of `PAGE_INFO.PAGE_TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Measured contents.
    Normal = 1,
    /// A vCPU save area.
    Vmsa = 2,
    /// A page the firmware zeroes.
    Zero = 3,
    /// Contents not measured.
    Unmeasured = 4,
    /// The secrets page.
    Secrets = 5,
    /// The CPUID page.
    Cpuid = 6,
}

/// The running launch digest of a guest context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// A fresh guest context (all-zero digest).
    pub fn new() -> Self {
        Self {
            ld: [0; DIGEST_LEN],
        }
    }

    /// The current digest.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        self.ld
    }

    /// One `SNP_LAUNCH_UPDATE` of a page.
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; DIGEST_LEN]) {
        let mut page_info = [0u8; 0x70];
        page_info[..0x30].copy_from_slice(&self.ld);
        page_info[0x30..0x60].copy_from_slice(contents);
        page_info[0x60..0x62].copy_from_slice(&0x70u16.to_le_bytes());
        page_info[0x62] = page_type as u8;
        // 0x63 IMI_PAGE, 0x64..0x68 VMPL permissions and reserved: zero.
        page_info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(page_info).into();
    }

    /// NORMAL pages holding `data` (whole pages) from `gpa` on.
    pub fn normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks(PAGE_SIZE as usize).enumerate() {
            let contents: [u8; DIGEST_LEN] = Sha384::digest(page).into();
            self.update(PageType::Normal, gpa + i as u64 * PAGE_SIZE, &contents);
        }
    }

    /// Pages of a type without contents (ZERO, UNMEASURED, SECRETS, CPUID) over `len` bytes.
    pub fn empty_pages(&mut self, page_type: PageType, gpa: u64, len: u64) {
        let zero = [0u8; DIGEST_LEN];
        for i in 0..len.div_ceil(PAGE_SIZE) {
            self.update(page_type, gpa + i * PAGE_SIZE, &zero);
        }
    }

    /// A VMSA page.
    pub fn vmsa_page(&mut self, vmsa: &[u8; PAGE_SIZE as usize]) {
        let contents: [u8; DIGEST_LEN] = Sha384::digest(vmsa).into();
        self.update(PageType::Vmsa, VMSA_GPA, &contents);
    }
}

/// The hypervisor stack launching the guest: they program slightly different initial state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmmType {
    /// QEMU/KVM.
    #[default]
    Qemu,
    /// AWS EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

impl std::str::FromStr for VmmType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(Self::Qemu),
            "ec2" => Ok(Self::Ec2),
            "gce" => Ok(Self::Gce),
            _ => Err(format!("unknown vmm type {s:?} (qemu, ec2, gce)")),
        }
    }
}

/// A QEMU vCPU model: its CPUID family, model and stepping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuType {
    /// CPU family (e.g. 25 for Zen 3/4).
    pub family: u32,
    /// Model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

/// QEMU's AMD EPYC models (`target/i386/cpu.c`); versioned aliases (`-v1`, `-v2`, …) keep the
/// base model's family/model/stepping.
const VCPU_TYPES: [(&str, VcpuType); 5] = [
    (
        "EPYC",
        VcpuType {
            family: 23,
            model: 1,
            stepping: 2,
        },
    ),
    (
        "EPYC-Rome",
        VcpuType {
            family: 23,
            model: 49,
            stepping: 0,
        },
    ),
    (
        "EPYC-Milan",
        VcpuType {
            family: 25,
            model: 1,
            stepping: 1,
        },
    ),
    (
        "EPYC-Genoa",
        VcpuType {
            family: 25,
            model: 17,
            stepping: 0,
        },
    ),
    (
        "EPYC-Turin",
        VcpuType {
            family: 26,
            model: 0,
            stepping: 0,
        },
    ),
];

impl VcpuType {
    /// The names accepted by [`str::parse`] (each also with a `-vN` suffix; `EPYC-IBPB` too).
    pub fn names() -> impl Iterator<Item = &'static str> {
        VCPU_TYPES.iter().map(|(name, _)| *name)
    }

    /// The CPUID `Fn0000_0001_EAX` signature (AMD CPUID specification, pub. 25481): stepping in
    /// bits 3:0, model in 7:4 with its high nibble in 19:16, family in 11:8 capped at 0xF with
    /// the excess in 27:20.
    pub fn signature(&self) -> u32 {
        let (base_family, ext_family) = if self.family > 0xf {
            (0xf, (self.family - 0xf) & 0xff)
        } else {
            (self.family, 0)
        };
        (ext_family << 20)
            | (((self.model >> 4) & 0xf) << 16)
            | (base_family << 8)
            | ((self.model & 0xf) << 4)
            | (self.stepping & 0xf)
    }
}

impl std::str::FromStr for VcpuType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let base = match s.rsplit_once("-v") {
            Some((base, version))
                if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
            {
                base
            }
            _ => s,
        };
        let base = if base.eq_ignore_ascii_case("EPYC-IBPB") {
            "EPYC"
        } else {
            base
        };
        VCPU_TYPES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(base))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                format!(
                    "unknown vcpu type {s:?} (known: {})",
                    Self::names().collect::<Vec<_>>().join(", ")
                )
            })
    }
}

/// SHA-256 of the kernel, the initrd and the command line, as the VMM writes them into the
/// firmware's hashes table (QEMU `target/i386/sev.c`); OVMF's AMD SEV build checks the blobs it
/// loads against them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel file.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd file (of nothing when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line with its terminating NUL (`"\0"` when there is none).
    pub cmdline: [u8; 32],
}

/// GUIDs of the hashes table and its entries (as QEMU writes and OVMF reads them).
mod hash_guids {
    use crate::ovmf::Guid;
    pub const TABLE: Guid = Guid::parse("9438d606-4f22-4cc9-b479-a793d411fd21");
    pub const KERNEL: Guid = Guid::parse("4de79437-abd2-427f-b835-d5b172d2045b");
    pub const INITRD: Guid = Guid::parse("44baf731-3a2f-4bd7-9af1-41e29169781d");
    pub const CMDLINE: Guid = Guid::parse("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");
}

/// `{GUID, u16 length, SHA-256}`.
const HASH_ENTRY_LEN: usize = 16 + 2 + 32;
/// Header `{GUID, u16 length}` and the three entries.
const HASH_TABLE_LEN: usize = 16 + 2 + 3 * HASH_ENTRY_LEN;
/// QEMU pads the table to a multiple of 16 bytes.
pub const PADDED_HASH_TABLE_LEN: usize = HASH_TABLE_LEN.div_ceil(16) * 16;

impl KernelHashes {
    /// From the already computed SHA-256 of the kernel and initrd, and the command line.
    pub fn new(kernel: [u8; 32], initrd: Option<[u8; 32]>, cmdline: Option<&str>) -> Self {
        let mut line = cmdline.unwrap_or_default().as_bytes().to_vec();
        line.push(0);
        Self {
            kernel,
            initrd: initrd.unwrap_or_else(|| Sha256::digest([]).into()),
            cmdline: Sha256::digest(&line).into(),
        }
    }

    /// The padded table the VMM writes.
    pub fn table(&self) -> [u8; PADDED_HASH_TABLE_LEN] {
        let mut t = [0u8; PADDED_HASH_TABLE_LEN];
        t[..16].copy_from_slice(hash_guids::TABLE.bytes());
        t[16..18].copy_from_slice(&(HASH_TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (hash_guids::CMDLINE, &self.cmdline),
            (hash_guids::INITRD, &self.initrd),
            (hash_guids::KERNEL, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.into_iter().enumerate() {
            let at = 18 + i * HASH_ENTRY_LEN;
            t[at..at + 16].copy_from_slice(guid.bytes());
            t[at + 16..at + 18].copy_from_slice(&(HASH_ENTRY_LEN as u16).to_le_bytes());
            t[at + 18..at + HASH_ENTRY_LEN].copy_from_slice(hash);
        }
        t
    }
}

/// Everything the launch digest depends on besides the firmware.
#[derive(Debug, Clone)]
pub struct SnpLaunch {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// CPUID signature of the vCPU model (QEMU puts it in `RDX`; EC2 and GCE do not).
    pub vcpu_signature: u32,
    /// The VMM.
    pub vmm: VmmType,
    /// `SEV_FEATURES` of every VMSA (default [`SEV_FEATURES_SNP_ACTIVE`]).
    pub guest_features: u64,
    /// Kernel, initrd and command line for direct boot with measured hashes.
    pub kernel_hashes: Option<KernelHashes>,
}

/// Computes the launch digest of `launch` with `firmware`.
pub fn launch_digest(firmware: &Ovmf, launch: &SnpLaunch) -> Result<[u8; DIGEST_LEN], SnpError> {
    if launch.vcpus == 0 || launch.vcpus > MAX_VCPUS {
        return Err(SnpError::Vcpus {
            vcpus: launch.vcpus,
        });
    }
    if launch.guest_features & SEV_FEATURES_SNP_ACTIVE == 0 {
        return Err(SnpError::GuestFeatures {
            features: launch.guest_features,
        });
    }
    if firmware.sev_sections().is_empty() {
        return Err(SnpError::NoSevMetadata);
    }
    let ap_eip = firmware.sev_es_reset_eip()?;
    if ap_eip == 0 && launch.vcpus > 1 {
        return Err(SnpError::NoApResetAddress {
            vcpus: launch.vcpus,
        });
    }
    let hashes_page = match &launch.kernel_hashes {
        Some(hashes) => Some(kernel_hashes_page(firmware, hashes)?),
        None => None,
    };

    let mut ld = LaunchDigest::new();
    ld.normal_pages(firmware.gpa(), firmware.image());
    for section in firmware.sev_sections() {
        let (gpa, size) = (section.gpa, section.size);
        match section.kind {
            SectionKind::SnpSecMem if launch.vmm == VmmType::Gce => {
                ld.empty_pages(PageType::Unmeasured, gpa, size)
            }
            SectionKind::SnpSecMem | SectionKind::SvsmCaa => {
                ld.empty_pages(PageType::Zero, gpa, size)
            }
            SectionKind::SnpSecrets => ld.empty_pages(PageType::Secrets, gpa, PAGE_SIZE),
            SectionKind::Cpuid if launch.vmm == VmmType::Ec2 => {}
            SectionKind::Cpuid => ld.empty_pages(PageType::Cpuid, gpa, PAGE_SIZE),
            SectionKind::SnpKernelHashes => match &hashes_page {
                Some(page) => ld.normal_pages(gpa, page.as_slice()),
                None => ld.empty_pages(PageType::Zero, gpa, size),
            },
        }
    }
    if launch.vmm == VmmType::Ec2 {
        for section in firmware.sev_sections() {
            if section.kind == SectionKind::Cpuid {
                ld.empty_pages(PageType::Cpuid, section.gpa, PAGE_SIZE);
            }
        }
    }
    let bsp = vmsa(BSP_EIP, launch);
    let ap = vmsa(ap_eip, launch);
    for i in 0..launch.vcpus {
        ld.vmsa_page(if i == 0 { &bsp } else { &ap });
    }
    Ok(ld.digest())
}

/// The page of the `SNP_KERNEL_HASHES` section with the table at the firmware's table address.
fn kernel_hashes_page(
    firmware: &Ovmf,
    hashes: &KernelHashes,
) -> Result<Box<[u8; PAGE_SIZE as usize]>, SnpError> {
    let section = firmware
        .sev_sections()
        .iter()
        .find(|s| s.kind == SectionKind::SnpKernelHashes)
        .ok_or(SnpError::NoKernelHashesSection)?;
    let table_gpa = u64::from(firmware.sev_hash_table_gpa()?);
    // The table must lie inside the section's single page, where the VMM writes it.
    let offset = table_gpa
        .checked_sub(section.gpa)
        .filter(|o| section.size == PAGE_SIZE && o + PADDED_HASH_TABLE_LEN as u64 <= PAGE_SIZE)
        .ok_or(SnpError::KernelHashesLayout {
            table_gpa,
            section_gpa: section.gpa,
            section_size: section.size,
        })?;
    let mut page = Box::new([0u8; PAGE_SIZE as usize]);
    let at = offset as usize;
    page[at..at + PADDED_HASH_TABLE_LEN].copy_from_slice(&hashes.table());
    Ok(page)
}

/// Offsets in the VMSA (AMD64 APM vol. 2, table B-4).
mod vmsa_offset {
    pub const ES: usize = 0x00;
    pub const CS: usize = 0x10;
    pub const SS: usize = 0x20;
    pub const DS: usize = 0x30;
    pub const FS: usize = 0x40;
    pub const GS: usize = 0x50;
    pub const GDTR: usize = 0x60;
    pub const LDTR: usize = 0x70;
    pub const IDTR: usize = 0x80;
    pub const TR: usize = 0x90;
    pub const EFER: usize = 0xD0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3B0;
    pub const XCR0: usize = 0x3E8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

/// The initial VMSA of a vCPU starting at `eip`.
pub fn vmsa(eip: u32, launch: &SnpLaunch) -> Box<[u8; PAGE_SIZE as usize]> {
    use vmsa_offset as o;

    /// Register state that differs between VMMs.
    struct Flavour {
        cs_attrib: u16,
        ss_attrib: u16,
        tr_attrib: u16,
        rdx: u64,
        mxcsr: u32,
        fcw: u16,
        g_pat: u64,
    }
    // PAT reset value (AMD64 APM vol. 2, "PAT register").
    const PAT_RESET: u64 = 0x0007_0406_0007_0406;
    let flavour = match launch.vmm {
        VmmType::Qemu => Flavour {
            cs_attrib: 0x9b,
            ss_attrib: 0x93,
            tr_attrib: 0x8b,
            rdx: u64::from(launch.vcpu_signature),
            mxcsr: 0x1f80,
            fcw: 0x37f,
            g_pat: PAT_RESET,
        },
        VmmType::Ec2 => Flavour {
            cs_attrib: if eip == BSP_EIP { 0x9a } else { 0x9b },
            ss_attrib: 0x92,
            tr_attrib: 0x83,
            rdx: 0x600,
            mxcsr: 0,
            fcw: 0,
            g_pat: PAT_RESET,
        },
        VmmType::Gce => Flavour {
            cs_attrib: 0x9b,
            ss_attrib: 0x93,
            tr_attrib: 0x8b,
            rdx: 0x600,
            mxcsr: 0,
            fcw: 0,
            g_pat: 0x0007_0106,
        },
    };

    let mut page = Box::new([0u8; PAGE_SIZE as usize]);
    let mut seg = |at: usize, selector: u16, attrib: u16, limit: u32, base: u64| {
        page[at..at + 2].copy_from_slice(&selector.to_le_bytes());
        page[at + 2..at + 4].copy_from_slice(&attrib.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&limit.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&base.to_le_bytes());
    };
    seg(o::ES, 0, 0x93, 0xffff, 0);
    seg(
        o::CS,
        0xf000,
        flavour.cs_attrib,
        0xffff,
        u64::from(eip & 0xffff_0000),
    );
    seg(o::SS, 0, flavour.ss_attrib, 0xffff, 0);
    seg(o::DS, 0, 0x93, 0xffff, 0);
    seg(o::FS, 0, 0x93, 0xffff, 0);
    seg(o::GS, 0, 0x93, 0xffff, 0);
    seg(o::GDTR, 0, 0, 0xffff, 0);
    seg(o::LDTR, 0, 0x82, 0xffff, 0);
    seg(o::IDTR, 0, 0, 0xffff, 0);
    seg(o::TR, 0, flavour.tr_attrib, 0xffff, 0);

    let mut put64 = |at: usize, v: u64| page[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put64(o::EFER, 0x1000); // EFER.SVME, set by KVM
    put64(o::CR4, 0x40); // CR4.MCE, set by KVM
    put64(o::CR0, 0x10); // CR0.ET
    put64(o::DR7, 0x400);
    put64(o::DR6, 0xffff_0ff0);
    put64(o::RFLAGS, 0x2);
    put64(o::RIP, u64::from(eip & 0xffff));
    put64(o::G_PAT, flavour.g_pat);
    put64(o::RDX, flavour.rdx);
    put64(o::SEV_FEATURES, launch.guest_features);
    put64(o::XCR0, 0x1);
    page[o::MXCSR..o::MXCSR + 4].copy_from_slice(&flavour.mxcsr.to_le_bytes());
    page[o::X87_FCW..o::X87_FCW + 2].copy_from_slice(&flavour.fcw.to_le_bytes());
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovmf::{build_image, encode_sev_metadata, guids};

    #[test]
    fn vcpu_signatures_follow_the_cpuid_encoding() {
        let sig = |s: &str| s.parse::<VcpuType>().unwrap().signature();
        assert_eq!(sig("EPYC"), 0x0080_0f12);
        assert_eq!(sig("EPYC-v4"), 0x0080_0f12);
        assert_eq!(sig("EPYC-IBPB"), 0x0080_0f12);
        assert_eq!(sig("EPYC-Rome"), 0x0083_0f10);
        assert_eq!(sig("EPYC-Milan"), 0x00a0_0f11);
        assert_eq!(sig("epyc-milan-v2"), 0x00a0_0f11);
        assert_eq!(sig("EPYC-Genoa"), 0x00a1_0f10);
        assert!("EPYC-Foo".parse::<VcpuType>().is_err());
        assert!("EPYC-v".parse::<VcpuType>().is_err());
        assert!("Skylake".parse::<VcpuType>().is_err());
    }

    #[test]
    fn page_info_chain_of_one_zero_page() {
        // SHA-384 over PAGE_INFO with a zero digest, zero contents, type ZERO at GPA 0x1000.
        let mut ld = LaunchDigest::new();
        ld.empty_pages(PageType::Zero, 0x1000, PAGE_SIZE);
        let mut info = [0u8; 0x70];
        info[0x60] = 0x70;
        info[0x62] = 3;
        info[0x69] = 0x10;
        let expected: [u8; 48] = Sha384::digest(info).into();
        assert_eq!(ld.digest(), expected);
    }

    #[test]
    fn hashes_table_layout() {
        let h = KernelHashes::new([0xaa; 32], None, None);
        let t = h.table();
        assert_eq!(PADDED_HASH_TABLE_LEN, 176);
        assert_eq!(&t[..16], hash_guids::TABLE.bytes());
        assert_eq!(u16::from_le_bytes([t[16], t[17]]), 168);
        assert_eq!(&t[18..34], hash_guids::CMDLINE.bytes());
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 50);
        let nul: [u8; 32] = Sha256::digest([0u8]).into();
        assert_eq!(t[36..68], nul);
        let empty: [u8; 32] = Sha256::digest([]).into();
        assert_eq!(t[68 + 18..68 + 50], empty);
        assert_eq!(t[118 + 18..118 + 50], [0xaa; 32]);
        assert_eq!(t[168..], [0u8; 8]);
        assert_eq!(
            KernelHashes::new([0; 32], None, Some("")),
            KernelHashes::new([0; 32], None, None)
        );
    }

    #[test]
    fn vmsa_fields_land_at_their_offsets() {
        let launch = SnpLaunch {
            vcpus: 1,
            vcpu_signature: 0x00a0_0f11,
            vmm: VmmType::Qemu,
            guest_features: 0x21,
            kernel_hashes: None,
        };
        let v = vmsa(0xffff_b000 + 0x123, &launch);
        assert_eq!(
            &v[0x10..0x20],
            &[
                0x00, 0xf0, 0x9b, 0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0
            ]
        );
        assert_eq!(v[0x178..0x180], 0xb123u64.to_le_bytes());
        assert_eq!(v[0x310..0x318], 0x00a0_0f11u64.to_le_bytes());
        assert_eq!(v[0x3b0..0x3b8], 0x21u64.to_le_bytes());
        assert_eq!(v[0x408..0x40c], 0x1f80u32.to_le_bytes());
    }

    fn firmware(with_hashes: bool) -> Ovmf {
        let len = 0x20000usize;
        let mut sections = vec![
            (0x80_0000, 0x9000, 1),
            (0x80_9000, 0x1000, 2),
            (0x80_a000, 0x1000, 3),
        ];
        let mut entries = vec![
            (
                guids::SEV_ES_RESET_BLOCK,
                0xffff_b000u32.to_le_bytes().to_vec(),
            ),
            (
                guids::SEV_METADATA,
                ((len - 0x1000) as u32).to_le_bytes().to_vec(),
            ),
        ];
        if with_hashes {
            sections.push((0x80_b000, 0x1000, 0x10));
            let mut rv = 0x80_bc00u32.to_le_bytes().to_vec();
            rv.extend_from_slice(&0x400u32.to_le_bytes());
            entries.push((guids::SEV_HASH_TABLE, rv));
        }
        let mut image = build_image(len, &entries);
        let meta = encode_sev_metadata(&sections);
        image[0x1000..0x1000 + meta.len()].copy_from_slice(&meta);
        Ovmf::parse(image).unwrap()
    }

    fn launch(vmm: VmmType) -> SnpLaunch {
        SnpLaunch {
            vcpus: 2,
            vcpu_signature: 0x0080_0f12,
            vmm,
            guest_features: 1,
            kernel_hashes: None,
        }
    }

    #[test]
    fn inputs_change_the_digest() {
        let fw = firmware(true);
        let base = launch_digest(&fw, &launch(VmmType::Qemu)).unwrap();
        let mut seen = vec![base];
        for vmm in [VmmType::Ec2, VmmType::Gce] {
            seen.push(launch_digest(&fw, &launch(vmm)).unwrap());
        }
        let mut l = launch(VmmType::Qemu);
        l.vcpus = 3;
        seen.push(launch_digest(&fw, &l).unwrap());
        let mut l = launch(VmmType::Qemu);
        l.guest_features = 0x21;
        seen.push(launch_digest(&fw, &l).unwrap());
        let mut l = launch(VmmType::Qemu);
        l.kernel_hashes = Some(KernelHashes::new([1; 32], None, Some("console=ttyS0")));
        seen.push(launch_digest(&fw, &l).unwrap());
        for (i, a) in seen.iter().enumerate() {
            for b in &seen[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Deterministic.
        assert_eq!(launch_digest(&fw, &launch(VmmType::Qemu)).unwrap(), base);
    }

    #[test]
    fn refusals() {
        let fw = firmware(false);
        let mut l = launch(VmmType::Qemu);
        l.kernel_hashes = Some(KernelHashes::new([1; 32], None, None));
        assert!(matches!(
            launch_digest(&fw, &l),
            Err(SnpError::NoKernelHashesSection)
        ));
        let mut l = launch(VmmType::Qemu);
        l.vcpus = 0;
        assert!(matches!(
            launch_digest(&fw, &l),
            Err(SnpError::Vcpus { .. })
        ));
        let mut l = launch(VmmType::Qemu);
        l.guest_features = 0x20;
        assert!(matches!(
            launch_digest(&fw, &l),
            Err(SnpError::GuestFeatures { .. })
        ));
        let plain = Ovmf::parse(vec![0u8; 0x10000]).unwrap();
        assert!(matches!(
            launch_digest(&plain, &launch(VmmType::Qemu)),
            Err(SnpError::NoSevMetadata)
        ));
    }
}
