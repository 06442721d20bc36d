//! AMD SEV-SNP launch configuration: the typed settings of the runtime TOML's `[snp]` table and the
//! QEMU arguments they become.
//!
//! Everything here that changes the launch measurement (firmware, CPU model, vCPU count, kernel,
//! initrd, command line, guest features) is pinned by configuration rather than left to QEMU's
//! defaults, so `coffer measure snp` computes the same digest from the same inputs.

use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::TeeError;

/// QEMU's CPU models for EPYC generations. The model decides the vCPU signature in the VMSA and
/// so the launch digest.
pub const CPU_MODELS: &[&str] = &[
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Rome-v4",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
];

/// Length of an SNP ID block (SNP ABI, `ID_BLOCK`).
pub const ID_BLOCK_LEN: usize = 96;
/// Length of an SNP ID authentication structure (SNP ABI, `ID_AUTH_INFO`).
pub const ID_AUTH_LEN: usize = 4096;

/// The SNP guest policy (SNP ABI `GUEST_POLICY`), as typed settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpGuestPolicy {
    /// Minimum firmware ABI major version (bits 15:8).
    pub abi_major: u8,
    /// Minimum firmware ABI minor version (bits 7:0).
    pub abi_minor: u8,
    /// Allow simultaneous multithreading on the host (bit 16). Hosts with SMT on refuse a guest
    /// that forbids it.
    pub smt: bool,
    /// Allow a migration agent (bit 18). Default off: nothing may move the guest's state.
    pub migration_agent: bool,
    /// Allow debugging (bit 19): the host could read guest memory. Default off; the broker's
    /// verifier refuses debug guests too.
    pub debug: bool,
    /// Require a single socket (bit 20).
    pub single_socket: bool,
}

impl Default for SnpGuestPolicy {
    fn default() -> Self {
        Self {
            abi_major: 0,
            abi_minor: 0,
            smt: true,
            migration_agent: false,
            debug: false,
            single_socket: false,
        }
    }
}

impl SnpGuestPolicy {
    /// The 64-bit policy value. Bit 17 is reserved and must be one.
    pub fn bits(&self) -> u64 {
        let mut bits = u64::from(self.abi_minor) | u64::from(self.abi_major) << 8 | 1 << 17;
        for (set, bit) in [
            (self.smt, 16),
            (self.migration_agent, 18),
            (self.debug, 19),
            (self.single_socket, 20),
        ] {
            if set {
                bits |= 1 << bit;
            }
        }
        bits
    }
}

/// `[snp]`: how SEV-SNP guests are launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpConfig {
    /// OVMF built for SEV (the `AmdSev` platform: SEV metadata and a kernel-hashes page).
    /// Default `/usr/share/ovmf/OVMF.amdsev.fd`.
    pub firmware: PathBuf,
    /// The guest kernel as a bzImage (OVMF boots it through the EFI stub; the PVH `vmlinux` of
    /// sandbox mode cannot be used). Default: `vmlinuz` next to the guest image.
    pub kernel: Option<PathBuf>,
    /// QEMU CPU model; pinned because the launch digest depends on it. Default `EPYC-v4`.
    pub cpu_model: String,
    /// Position of the C-bit in a page-table entry; default: read from CPUID 0x8000001F.
    pub cbitpos: Option<u32>,
    /// Physical address bits lost to memory encryption. Default 1.
    pub reduced_phys_bits: u32,
    /// Guest policy.
    pub policy: SnpGuestPolicy,
    /// Have QEMU put the kernel/initrd/command-line hashes in the measured firmware page so OVMF
    /// verifies them. Default on; without it the launch digest does not cover the kernel.
    pub kernel_hashes: bool,
    /// Base64 ID block (96 bytes) to launch with, if any.
    pub id_block: Option<String>,
    /// Base64 ID authentication info (4096 bytes); required with `id_block`.
    pub id_auth: Option<String>,
}

impl Default for SnpConfig {
    fn default() -> Self {
        Self {
            firmware: "/usr/share/ovmf/OVMF.amdsev.fd".into(),
            kernel: None,
            cpu_model: "EPYC-v4".into(),
            cbitpos: None,
            reduced_phys_bits: 1,
            policy: SnpGuestPolicy::default(),
            kernel_hashes: true,
            id_block: None,
            id_auth: None,
        }
    }
}

impl SnpConfig {
    /// Checks what can be checked without the host.
    pub fn validate(&self) -> Result<(), TeeError> {
        let bad = |reason: String| TeeError::Config { tee: "snp", reason };
        if !CPU_MODELS.contains(&self.cpu_model.as_str()) {
            return Err(bad(format!(
                "cpu_model {:?} is not an EPYC model QEMU and the measurement both know ({})",
                self.cpu_model,
                CPU_MODELS.join(", ")
            )));
        }
        if let Some(c) = self.cbitpos
            && !(32..=63).contains(&c)
        {
            return Err(bad(format!("cbitpos {c} is outside 32..=63")));
        }
        if self.reduced_phys_bits == 0 || self.reduced_phys_bits > 63 {
            return Err(bad(format!(
                "reduced_phys_bits {} is outside 1..=63",
                self.reduced_phys_bits
            )));
        }
        match (&self.id_block, &self.id_auth) {
            (None, None) => {}
            (Some(block), Some(auth)) => {
                check_base64("id_block", block, ID_BLOCK_LEN).map_err(bad)?;
                check_base64("id_auth", auth, ID_AUTH_LEN).map_err(bad)?;
            }
            _ => return Err(bad("id_block and id_auth go together".into())),
        }
        Ok(())
    }

    /// The C-bit position: configured, else from this host's CPUID.
    pub fn resolve_cbitpos(&self) -> Result<u32, TeeError> {
        match self.cbitpos {
            Some(c) => Ok(c),
            None => host_cbitpos().ok_or_else(|| TeeError::Config {
                tee: "snp",
                reason: "this CPU reports no memory-encryption C-bit (CPUID 0x8000001F); set \
                         snp.cbitpos"
                    .into(),
            }),
        }
    }
}

fn check_base64(name: &str, value: &str, len: usize) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| format!("{name} is not base64: {e}"))?;
    if bytes.len() != len {
        return Err(format!(
            "{name} decodes to {} bytes, not {len}",
            bytes.len()
        ));
    }
    Ok(())
}

/// CPUID 0x8000001F EBX[5:0] on an AMD CPU with memory encryption; `None` elsewhere.
pub fn host_cbitpos() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_001f {
            return None;
        }
        let leaf = core::arch::x86_64::__cpuid(0x8000_001f);
        // EAX bit 1: SEV supported.
        if leaf.eax & 0b10 == 0 {
            return None;
        }
        Some(leaf.ebx & 0x3f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The `sev-snp-guest` object for a launch whose HOSTDATA is `host_data`.
pub fn object_arg(config: &SnpConfig, cbitpos: u32, host_data: &[u8; 32]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut arg = format!(
        "sev-snp-guest,id={id},cbitpos={cbitpos},reduced-phys-bits={rpb},policy={policy:#x},\
         kernel-hashes={hashes},host-data={host}",
        id = super::OBJECT_ID,
        rpb = config.reduced_phys_bits,
        policy = config.policy.bits(),
        hashes = if config.kernel_hashes { "on" } else { "off" },
        host = b64.encode(host_data),
    );
    if let (Some(block), Some(auth)) = (&config.id_block, &config.id_auth) {
        arg.push_str(&format!(",id-block={block},id-auth={auth}"));
    }
    arg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_bits_follow_the_abi() {
        assert_eq!(SnpGuestPolicy::default().bits(), 0x30000);
        let all = SnpGuestPolicy {
            abi_major: 1,
            abi_minor: 55,
            smt: false,
            migration_agent: true,
            debug: true,
            single_socket: true,
        };
        assert_eq!(all.bits(), 0x1e0000 | 0x0137);
    }

    #[test]
    fn validation_names_the_bad_setting() {
        assert!(SnpConfig::default().validate().is_ok());
        type Mutation = fn(&mut SnpConfig);
        let cases: [(Mutation, &str); 5] = [
            (|c| c.cpu_model = "Skylake".into(), "cpu_model"),
            (|c| c.cbitpos = Some(7), "cbitpos"),
            (|c| c.reduced_phys_bits = 0, "reduced_phys_bits"),
            (|c| c.id_block = Some("AAAA".into()), "go together"),
            (
                |c| {
                    c.id_block = Some("AAAA".into());
                    c.id_auth = Some("AAAA".into());
                },
                "id_block decodes to 3 bytes",
            ),
        ];
        for (mutate, want) in cases {
            let mut config = SnpConfig::default();
            mutate(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
