//! What the TDX verifier accepts: TCB status, TD attributes, reference values and the values the
//! relying party expects. Each `Default` is the strict choice.

use std::fmt;
use std::str::FromStr;

use super::error::{TdxError, to_hex};
use super::quote::TdReport;

/// Platform + QE TCB status from Intel's TCB info / QE identity (collateral).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcbStatus {
    /// Patched and configured as Intel recommends.
    UpToDate,
    /// Needs software hardening for an advisory.
    SwHardeningNeeded,
    /// Needs a configuration change.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSwHardeningNeeded,
    /// Not patched to the latest TCB.
    OutOfDate,
    /// Not patched, and needs a configuration change.
    OutOfDateConfigurationNeeded,
    /// The TCB level is revoked.
    Revoked,
}

impl TcbStatus {
    /// Intel's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "UpToDate",
            Self::SwHardeningNeeded => "SWHardeningNeeded",
            Self::ConfigurationNeeded => "ConfigurationNeeded",
            Self::ConfigurationAndSwHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            Self::OutOfDate => "OutOfDate",
            Self::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            Self::Revoked => "Revoked",
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TcbStatus {
    type Err = TdxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::UpToDate,
            Self::SwHardeningNeeded,
            Self::ConfigurationNeeded,
            Self::ConfigurationAndSwHardeningNeeded,
            Self::OutOfDate,
            Self::OutOfDateConfigurationNeeded,
            Self::Revoked,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| TdxError::UnknownTcbStatus {
            found: s.to_owned(),
        })
    }
}

/// Accepted values of one measurement register. `None` = not pinned (any value accepted);
/// `Some(list)` = pinned: the register must equal one entry, and an empty list refuses everything
/// ("a pinned register with no value is a refusal", catalogue §1.7.3).
pub type Pinned<const N: usize> = Option<Vec<[u8; N]>>;

/// Reference values for the TD's registers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceValues {
    /// MRTD (TDVF measurement).
    pub mr_td: Pinned<48>,
    /// RTMR0..RTMR3 (firmware config, kernel + initrd, cmdline, runtime). MRTD covers only TDVF:
    /// pin RTMR1/RTMR2 to pin the kernel and command line (catalogue §1.7.3).
    pub rtmr: [Pinned<48>; 4],
    /// MRSEAM (the TDX module).
    pub mr_seam: Pinned<48>,
    /// XFAM (extended features the TD may use).
    pub xfam: Pinned<8>,
}

/// What the verifier accepts. `Default` is the strict policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPolicy {
    /// Accepted TCB statuses (default: only `UpToDate`). `Revoked` is refused even if listed
    /// (dcap-qvl refuses it first).
    pub allowed_tcb_statuses: Vec<TcbStatus>,
    /// Advisory ids (e.g. `INTEL-SA-00837`) that refuse the platform when they apply.
    pub denied_advisories: Vec<String>,
    /// Accept a TD with the MIGRATABLE attribute (default false).
    pub allow_migratable: bool,
    /// Accept a TDX 1.5 quote that binds a service TD (non-zero MRSERVICETD; default false).
    pub allow_service_td: bool,
    /// Reference values (default: nothing pinned).
    pub reference: ReferenceValues,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self {
            allowed_tcb_statuses: vec![TcbStatus::UpToDate],
            denied_advisories: Vec::new(),
            allow_migratable: false,
            allow_service_td: false,
            reference: ReferenceValues::default(),
        }
    }
}

/// Values the relying party expects to find in the quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Exact REPORTDATA (e.g. hash of the KBS nonce and TEE public key).
    pub report_data: [u8; 64],
    /// Exact MRCONFIGID (the init-data digest, SHA-384), if one is required.
    pub mr_config_id: Option<[u8; 48]>,
}

impl TdxPolicy {
    /// TD attribute rules (catalogue §1.7.5): DEBUG and every other TUD bit (7:0) refused;
    /// SEPT_VE_DISABLE required; MIGRATABLE refused unless allowed; MRSERVICETD zero unless
    /// allowed. No option accepts a debug TD.
    pub fn check_attributes(&self, report: &TdReport) -> Result<(), TdxError> {
        let attrs = report.td_attributes;
        let violated = if attrs.debug() {
            Some("debug TD")
        } else if attrs.tud() != 0 {
            Some("TD-under-debug bit set")
        } else if !attrs.sept_ve_disable() {
            Some("SEPT_VE_DISABLE not set")
        } else if attrs.migratable() && !self.allow_migratable {
            Some("migratable TD")
        } else {
            None
        };
        if let Some(reason) = violated {
            return Err(TdxError::TdAttributes {
                reason,
                raw: attrs.raw,
            });
        }
        if let Some(service) = &report.mr_service_td
            && !self.allow_service_td
            && service.iter().any(|&b| b != 0)
        {
            return Err(TdxError::ServiceTd {
                found: to_hex(service),
            });
        }
        Ok(())
    }

    /// TCB status in the allow-list, no denied advisory.
    pub fn check_tcb(&self, status: TcbStatus, advisory_ids: &[String]) -> Result<(), TdxError> {
        if status == TcbStatus::Revoked || !self.allowed_tcb_statuses.contains(&status) {
            return Err(TdxError::TcbStatusNotAllowed {
                status,
                allowed: self.allowed_tcb_statuses.clone(),
            });
        }
        if let Some(id) = advisory_ids
            .iter()
            .find(|id| self.denied_advisories.contains(id))
        {
            return Err(TdxError::AdvisoryDenied { id: id.clone() });
        }
        Ok(())
    }

    /// Pinned registers against the reference values.
    pub fn check_reference_values(&self, report: &TdReport) -> Result<(), TdxError> {
        let r = &self.reference;
        check_pinned("mr_td", &r.mr_td, &report.mr_td)?;
        for (register, (pinned, value)) in ["rtmr0", "rtmr1", "rtmr2", "rtmr3"]
            .into_iter()
            .zip(r.rtmr.iter().zip(&report.rtmr))
        {
            check_pinned(register, pinned, value)?;
        }
        check_pinned("mr_seam", &r.mr_seam, &report.mr_seam)?;
        check_pinned("xfam", &r.xfam, &report.xfam)
    }
}

fn check_pinned<const N: usize>(
    register: &'static str,
    pinned: &Pinned<N>,
    value: &[u8; N],
) -> Result<(), TdxError> {
    match pinned {
        None => Ok(()),
        Some(accepted) if accepted.is_empty() => Err(TdxError::PinnedWithoutValue { register }),
        Some(accepted) if accepted.contains(value) => Ok(()),
        Some(_) => Err(TdxError::ReferenceMismatch {
            register,
            found: to_hex(value),
        }),
    }
}

/// REPORTDATA (64 B) and, if expected, MRCONFIGID (48 B) compared for exact equality.
pub fn check_expected(report: &TdReport, expected: &Expected) -> Result<(), TdxError> {
    if report.report_data != expected.report_data {
        return Err(TdxError::ReportDataMismatch {
            expected: to_hex(&expected.report_data),
            found: to_hex(&report.report_data),
        });
    }
    if let Some(config_id) = &expected.mr_config_id
        && report.mr_config_id != *config_id
    {
        return Err(TdxError::MrConfigIdMismatch {
            expected: to_hex(config_id),
            found: to_hex(&report.mr_config_id),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdx::quote::TdAttributes;

    /// A TDX 1.0 report with SEPT_VE_DISABLE set and nothing else.
    fn report() -> TdReport {
        TdReport {
            tee_tcb_svn: [0; 16],
            mr_seam: [1; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: TdAttributes {
                raw: TdAttributes::SEPT_VE_DISABLE,
            },
            xfam: [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0],
            mr_td: [2; 48],
            mr_config_id: [3; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmr: [[4; 48], [5; 48], [6; 48], [0; 48]],
            report_data: [7; 64],
            tee_tcb_svn2: None,
            mr_service_td: None,
        }
    }

    fn with_attrs(raw: u64) -> TdReport {
        TdReport {
            td_attributes: TdAttributes { raw },
            ..report()
        }
    }

    #[test]
    fn kbs06_debug_and_every_tud_bit_refused() {
        let policy = TdxPolicy {
            allow_migratable: true,
            allow_service_td: true,
            ..TdxPolicy::default()
        };
        assert!(policy.check_attributes(&report()).is_ok());
        for bit in 0..8 {
            let raw = TdAttributes::SEPT_VE_DISABLE | (1 << bit);
            let err = policy.check_attributes(&with_attrs(raw));
            assert!(
                matches!(err, Err(TdxError::TdAttributes { raw: r, .. }) if r == raw),
                "TUD bit {bit}: {err:?}"
            );
        }
        assert!(matches!(
            policy.check_attributes(&with_attrs(TdAttributes::SEPT_VE_DISABLE | 1)),
            Err(TdxError::TdAttributes {
                reason: "debug TD",
                ..
            })
        ));
    }

    #[test]
    fn kbs06_migratable_refused_unless_allowed() {
        let migratable = with_attrs(TdAttributes::SEPT_VE_DISABLE | TdAttributes::MIGRATABLE);
        assert!(matches!(
            TdxPolicy::default().check_attributes(&migratable),
            Err(TdxError::TdAttributes {
                reason: "migratable TD",
                ..
            })
        ));
        let allowing = TdxPolicy {
            allow_migratable: true,
            ..TdxPolicy::default()
        };
        assert!(allowing.check_attributes(&migratable).is_ok());
    }

    #[test]
    fn kbs06_sept_ve_disable_required() {
        assert!(matches!(
            TdxPolicy::default().check_attributes(&with_attrs(0)),
            Err(TdxError::TdAttributes {
                reason: "SEPT_VE_DISABLE not set",
                ..
            })
        ));
    }

    #[test]
    fn service_td_refused_unless_allowed() {
        let mut r = report();
        r.mr_service_td = Some([0; 48]);
        assert!(TdxPolicy::default().check_attributes(&r).is_ok());
        r.mr_service_td = Some([9; 48]);
        assert!(matches!(
            TdxPolicy::default().check_attributes(&r),
            Err(TdxError::ServiceTd { .. })
        ));
        let allowing = TdxPolicy {
            allow_service_td: true,
            ..TdxPolicy::default()
        };
        assert!(allowing.check_attributes(&r).is_ok());
    }

    #[test]
    fn kbs06_tcb_status_allow_list() {
        let strict = TdxPolicy::default();
        assert!(strict.check_tcb(TcbStatus::UpToDate, &[]).is_ok());
        for status in [
            TcbStatus::OutOfDate,
            TcbStatus::ConfigurationNeeded,
            TcbStatus::SwHardeningNeeded,
            TcbStatus::Revoked,
        ] {
            assert!(
                matches!(
                    strict.check_tcb(status, &[]),
                    Err(TdxError::TcbStatusNotAllowed { status: s, .. }) if s == status
                ),
                "{status}"
            );
        }
        let lenient = TdxPolicy {
            allowed_tcb_statuses: vec![
                TcbStatus::UpToDate,
                TcbStatus::SwHardeningNeeded,
                TcbStatus::Revoked,
            ],
            denied_advisories: vec!["INTEL-SA-00615".to_owned()],
            ..TdxPolicy::default()
        };
        assert!(
            lenient
                .check_tcb(TcbStatus::SwHardeningNeeded, &["INTEL-SA-00289".to_owned()])
                .is_ok()
        );
        assert!(matches!(
            lenient.check_tcb(TcbStatus::Revoked, &[]),
            Err(TdxError::TcbStatusNotAllowed { .. })
        ));
        assert!(matches!(
            lenient.check_tcb(TcbStatus::UpToDate, &["INTEL-SA-00615".to_owned()]),
            Err(TdxError::AdvisoryDenied { id }) if id == "INTEL-SA-00615"
        ));
    }

    #[test]
    fn tcb_status_names_round_trip() {
        for name in [
            "UpToDate",
            "SWHardeningNeeded",
            "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded",
            "OutOfDate",
            "OutOfDateConfigurationNeeded",
            "Revoked",
        ] {
            assert_eq!(
                name.parse::<TcbStatus>().map(|s| s.as_str()).ok(),
                Some(name)
            );
        }
        assert!(matches!(
            "Fine".parse::<TcbStatus>(),
            Err(TdxError::UnknownTcbStatus { .. })
        ));
    }

    #[test]
    fn kbs06_reference_values_pinned_registers() {
        let r = report();
        let mut policy = TdxPolicy::default();
        assert!(policy.check_reference_values(&r).is_ok());
        policy.reference.mr_td = Some(vec![[9; 48], r.mr_td]);
        policy.reference.rtmr[1] = Some(vec![r.rtmr[1]]);
        policy.reference.xfam = Some(vec![r.xfam]);
        assert!(policy.check_reference_values(&r).is_ok());
        // Same MRTD, another kernel in RTMR1.
        policy.reference.rtmr[1] = Some(vec![[0xaa; 48]]);
        assert!(matches!(
            policy.check_reference_values(&r),
            Err(TdxError::ReferenceMismatch {
                register: "rtmr1",
                ..
            })
        ));
        // Pinned with no accepted value.
        policy.reference.rtmr[1] = None;
        policy.reference.rtmr[2] = Some(Vec::new());
        assert!(matches!(
            policy.check_reference_values(&r),
            Err(TdxError::PinnedWithoutValue { register: "rtmr2" })
        ));
        policy.reference.rtmr[2] = None;
        policy.reference.mr_seam = Some(vec![[0xbb; 48]]);
        assert!(matches!(
            policy.check_reference_values(&r),
            Err(TdxError::ReferenceMismatch {
                register: "mr_seam",
                ..
            })
        ));
    }

    #[test]
    fn kbs03_expected_values_exact() {
        let r = report();
        let mut expected = Expected {
            report_data: r.report_data,
            mr_config_id: Some(r.mr_config_id),
        };
        assert!(check_expected(&r, &expected).is_ok());
        expected.report_data[63] ^= 1;
        assert!(matches!(
            check_expected(&r, &expected),
            Err(TdxError::ReportDataMismatch { .. })
        ));
        expected.report_data = r.report_data;
        expected.mr_config_id = Some([0; 48]);
        assert!(matches!(
            check_expected(&r, &expected),
            Err(TdxError::MrConfigIdMismatch { .. })
        ));
    }
}
