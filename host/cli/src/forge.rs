//! Test evidence from the command line: `coffer attestation testing-ca` (a test chain standing in
//! for AMD's and Intel's), `coffer attestation forge` (a report or quote with chosen fields signed
//! by it), and [`FieldArgs`], the fields, shared with `coffer kbs get-resource --testing-ca`
//! (a handshake with such evidence). Development and CI only: `coffer_attestation::testing`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use coffer_attestation::tdx::TdAttributes;
use coffer_attestation::testing::snp::{
    POLICY_DEBUG, POLICY_MIGRATE_MA, SnpFields, SnpTestChain, Tcb,
};
use coffer_attestation::testing::tdx::{self, TdxFields, TdxTestChain};
use coffer_attestation::testing::{self, ForgingAttester};

use crate::attestation::Tee;

/// Arguments of `coffer attestation testing-ca`.
#[derive(Debug, Args)]
pub struct TestingCaArgs {
    /// Directory to write the test chain to (created; an existing one must be a test chain).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Validity of the certificates and collateral from now, days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// The fields of a forged report (SNP) or quote (TDX). Unset fields are those every strict
/// verifier accepts: zero measurement and host data, no debug, no migration, VMPL 0, a current
/// TCB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct FieldArgs {
    /// SNP MEASUREMENT / TDX MRTD (48 bytes hex).
    #[arg(long, value_name = "HEX")]
    pub measurement: Option<String>,
    /// SNP HOST_DATA (32 bytes hex) / TDX MRCONFIGID (48 bytes hex): the init-data digest.
    #[arg(long, value_name = "HEX")]
    pub host_data: Option<String>,
    /// REPORT_DATA (64 bytes hex). With `kbs get-resource`: sent instead of the handshake's
    /// binding (which a broker must refuse).
    #[arg(long, value_name = "HEX")]
    pub report_data: Option<String>,
    /// SNP guest policy DEBUG bit / TDX TD attribute DEBUG.
    #[arg(long)]
    pub debug: bool,
    /// SNP guest policy MIGRATE_MA / TDX TD attribute MIGRATABLE.
    #[arg(long)]
    pub migratable: bool,
    /// SNP: the reported TCB, `bootloader=N,tee=N,snp=N,microcode=N` (unnamed components keep
    /// the default 4, 0, 22, 213). TDX: TEE_TCB_SVN, 16 bytes hex (default 05000200…; the test
    /// collateral rates 03000200… OutOfDate, anything lower has no TCB level).
    #[arg(long, value_name = "SPEC")]
    pub tcb: Option<String>,
    /// SNP: the VMPL of the report.
    #[arg(long, value_name = "N")]
    pub vmpl: Option<u32>,
    /// TDX: RTMR<N> (0..=3) = 48 bytes hex; repeatable.
    #[arg(long, value_name = "N=HEX")]
    pub rtmr: Vec<String>,
}

fn hex_exact<const N: usize>(flag: &str, text: &str) -> anyhow::Result<[u8; N]> {
    let bytes = hex::decode(text.trim()).with_context(|| format!("{flag} is not hex"))?;
    let found = bytes.len();
    <[u8; N]>::try_from(bytes).map_err(|_| anyhow!("{flag} has {found} bytes, expected {N}"))
}

impl FieldArgs {
    /// The SNP report's fields.
    pub fn snp(&self) -> anyhow::Result<SnpFields> {
        if !self.rtmr.is_empty() {
            bail!("--rtmr is for --tee tdx");
        }
        let mut f = SnpFields::default();
        if let Some(m) = &self.measurement {
            f.measurement = hex_exact("--measurement", m)?;
        }
        if let Some(h) = &self.host_data {
            f.host_data = hex_exact("--host-data", h)?;
        }
        if let Some(r) = &self.report_data {
            f.report_data = hex_exact("--report-data", r)?;
        }
        if self.debug {
            f.policy |= POLICY_DEBUG;
        }
        if self.migratable {
            f.policy |= POLICY_MIGRATE_MA;
        }
        if let Some(spec) = &self.tcb {
            f.tcb = spec.parse::<Tcb>().map_err(|e| anyhow!("--tcb: {e}"))?;
        }
        if let Some(vmpl) = self.vmpl {
            f.vmpl = vmpl;
        }
        Ok(f)
    }

    /// The TDX quote's fields.
    pub fn tdx(&self) -> anyhow::Result<TdxFields> {
        if self.vmpl.is_some() {
            bail!("--vmpl is for --tee snp");
        }
        let mut f = TdxFields::default();
        if let Some(m) = &self.measurement {
            f.mr_td = hex_exact("--measurement", m)?;
        }
        if let Some(h) = &self.host_data {
            f.mr_config_id = hex_exact("--host-data", h)?;
        }
        if let Some(r) = &self.report_data {
            f.report_data = hex_exact("--report-data", r)?;
        }
        if self.debug {
            f.td_attributes |= TdAttributes::DEBUG;
        }
        if self.migratable {
            f.td_attributes |= TdAttributes::MIGRATABLE;
        }
        if let Some(svn) = &self.tcb {
            f.tee_tcb_svn = hex_exact("--tcb", svn)?;
        }
        for spec in &self.rtmr {
            let (index, value) = spec
                .split_once('=')
                .ok_or_else(|| anyhow!("--rtmr {spec:?} is not N=HEX"))?;
            let index: usize = index
                .trim()
                .parse()
                .ok()
                .filter(|i| *i < 4)
                .ok_or_else(|| anyhow!("--rtmr {spec:?}: N is 0..=3"))?;
            f.rtmr[index] = hex_exact("--rtmr", value)?;
        }
        Ok(f)
    }

    /// An attester forging `tee` evidence with these fields, signed by the test chain at `ca`.
    pub fn attester(&self, tee: Tee, ca: &Path) -> anyhow::Result<ForgingAttester> {
        let attester = match tee {
            Tee::Snp => ForgingAttester::snp(load_snp(ca)?, self.snp()?),
            Tee::Tdx => ForgingAttester::tdx(load_tdx(ca)?, self.tdx()?),
        };
        Ok(if self.report_data.is_some() {
            attester.keeping_report_data()
        } else {
            attester
        })
    }
}

fn load_snp(ca: &Path) -> anyhow::Result<SnpTestChain> {
    SnpTestChain::load(ca).with_context(|| format!("the SNP test chain in {}", ca.display()))
}

fn load_tdx(ca: &Path) -> anyhow::Result<TdxTestChain> {
    TdxTestChain::load(ca).with_context(|| format!("the TDX test chain in {}", ca.display()))
}

/// Arguments of `coffer attestation forge`.
#[derive(Debug, Args)]
pub struct ForgeArgs {
    /// The TEE whose evidence to forge.
    #[arg(long, value_enum)]
    pub tee: Tee,
    /// The test chain directory (`coffer attestation testing-ca`).
    #[arg(long, value_name = "DIR")]
    pub testing_ca: PathBuf,
    /// Directory to write to: SNP `report.bin` and `vcek.der`, TDX `quote.dat`; and
    /// `evidence.json`, the evidence as a guest sends it to a broker.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub fields: FieldArgs,
}

/// `coffer attestation testing-ca`.
pub fn testing_ca(args: &TestingCaArgs) -> anyhow::Result<u8> {
    let dir = &args.out;
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
        && !dir.join(testing::MARKER).exists()
    {
        bail!(
            "{} is not empty and not a test chain directory: refusing to write keys into it",
            dir.display()
        );
    }
    testing::create(dir, args.days)
        .with_context(|| format!("writing a test chain to {}", dir.display()))?;
    let collateral = dir.join(testing::TDX_COLLATERAL_DIR);
    println!(
        "wrote a TEST chain to {d} (development and CI only: whoever holds its keys can forge any measurement)\n\
         \x20 SNP: {ark}, {ask}; private: {ask_key}, {ark_key} (signs CRLs)\n\
         \x20 TDX: {root}, {pck}; private: {pck_key}; collateral: {coll}/{fmspc}.json\n\
         a coffer-kbs trusts it only when its configuration says:\n\
         \x20 [testing]\n\x20 ca_dir = {dq:?}\n\
         \x20 [attestation.tdx]\n\x20 collateral = {cq:?}",
        d = dir.display(),
        ark = dir.join(testing::SNP_ARK).display(),
        ask = dir.join(testing::SNP_ASK).display(),
        ask_key = dir.join(testing::SNP_ASK_KEY).display(),
        ark_key = dir.join(testing::SNP_ARK_KEY).display(),
        root = dir.join(testing::TDX_ROOT_DER).display(),
        pck = dir.join(testing::TDX_PCK_CHAIN).display(),
        pck_key = dir.join(testing::TDX_PCK_KEY).display(),
        coll = collateral.display(),
        fmspc = hex::encode_upper(tdx::FMSPC),
        dq = dir.display().to_string(),
        cq = collateral.display().to_string(),
    );
    Ok(0)
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `coffer attestation forge`.
pub fn forge(args: &ForgeArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let evidence = match args.tee {
        Tee::Snp => {
            let fields = args.fields.snp()?;
            let forged = load_snp(&args.testing_ca)?
                .forge(&fields)
                .context("forging the report")?;
            write(&args.out.join("report.bin"), &forged.report)?;
            write(&args.out.join("vcek.der"), &forged.vcek_der)?;
            println!(
                "forged an SNP report signed by the TEST chain: {}, {}",
                args.out.join("report.bin").display(),
                args.out.join("vcek.der").display()
            );
            forged.evidence()
        }
        Tee::Tdx => {
            let fields = args.fields.tdx()?;
            let quote = load_tdx(&args.testing_ca)?.forge(&fields);
            write(&args.out.join("quote.dat"), &quote)?;
            println!(
                "forged a TDX quote signed by the TEST chain: {}",
                args.out.join("quote.dat").display()
            );
            tdx::evidence(&quote)
        }
    };
    let json = serde_json::to_vec_pretty(&evidence)?;
    write(&args.out.join("evidence.json"), &json)?;
    println!(
        "evidence as a guest sends it: {}",
        args.out.join("evidence.json").display()
    );
    Ok(0)
}
