//! SEV-SNP reports through the `/dev/sev-guest` ioctl, for guest kernels without configfs-tsm
//! (Linux < 6.7, Debian 12's 6.1 among them).
//!
//! The ABI is Linux's `include/uapi/linux/sev-guest.h`: `SNP_GET_REPORT` =
//! `_IOWR('S', 0x0, struct snp_guest_request_ioctl)` with `msg_version = 1`, a request
//! `struct snp_report_req { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }` and a 4000-byte response
//! buffer holding the firmware's `MSG_REPORT_RSP` (SNP ABI spec, "MSG_REPORT_RSP"): `status` (u32),
//! `report_size` (u32), 24 reserved bytes, then the report.
//!
//! This is the only code in the crate that is `unsafe`: one ioctl over buffers this function owns,
//! whose sizes are the kernel's. It is not exercised on this project's CI hosts (no SEV-SNP
//! hardware); the response parsing is unit-tested on synthetic buffers.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::AttesterError;

/// `struct snp_report_req`.
#[repr(C)]
struct ReportRequest {
    user_data: [u8; 64],
    vmpl: u32,
    reserved: [u8; 28],
}

/// `struct snp_report_resp`.
#[repr(C)]
struct ReportResponse {
    data: [u8; RESPONSE_LEN],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
struct GuestRequest {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    /// Firmware error (low 32 bits) and VMM error (high 32 bits).
    exitinfo2: u64,
}

const RESPONSE_LEN: usize = 4000;
/// Offset of the report in `MSG_REPORT_RSP`.
const REPORT_OFFSET: usize = 0x20;
/// Size of an attestation report (SNP ABI, versions 2 to 5).
pub const REPORT_LEN: usize = 1184;

nix::ioctl_readwrite!(snp_get_report, b'S', 0x0, GuestRequest);

/// Failures of the ioctl path.
#[derive(Debug, thiserror::Error)]
pub enum SevGuestError {
    /// The device could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// Device path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ioctl failed.
    #[error("SNP_GET_REPORT on {path}: {errno} (firmware error {fw:#x}, VMM error {vmm:#x})")]
    Ioctl {
        /// Device path.
        path: PathBuf,
        /// errno.
        errno: nix::errno::Errno,
        /// Firmware error code.
        fw: u32,
        /// VMM error code.
        vmm: u32,
    },
    /// The firmware answered with an error status.
    #[error("the firmware refused the report request: status {0:#x}")]
    Status(u32),
    /// The response does not hold a whole report.
    #[error("the firmware's report response is malformed: {0}")]
    Malformed(String),
}

impl From<SevGuestError> for AttesterError {
    fn from(e: SevGuestError) -> Self {
        AttesterError::SevGuest(e)
    }
}

/// Requests a VMPL-0 attestation report carrying `user_data` (REPORT_DATA) from `device`.
pub fn get_report(device: &Path, user_data: &[u8; 64]) -> Result<Vec<u8>, SevGuestError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|source| SevGuestError::Open {
            path: device.to_path_buf(),
            source,
        })?;
    let request = ReportRequest {
        user_data: *user_data,
        vmpl: 0,
        reserved: [0; 28],
    };
    let mut response = Box::new(ReportResponse {
        data: [0; RESPONSE_LEN],
    });
    let mut guest_request = GuestRequest {
        msg_version: 1,
        req_data: &request as *const ReportRequest as u64,
        resp_data: response.as_mut() as *mut ReportResponse as u64,
        exitinfo2: 0,
    };
    // SAFETY: `file` is an open sev-guest device; `guest_request` points at a request and a
    // response buffer of exactly the sizes the kernel's structures have, both live until the call
    // returns, and the kernel writes only into `response` and `guest_request`.
    let result = unsafe { snp_get_report(file.as_raw_fd(), &mut guest_request) };
    if let Err(errno) = result {
        return Err(SevGuestError::Ioctl {
            path: device.to_path_buf(),
            errno,
            fw: guest_request.exitinfo2 as u32,
            vmm: (guest_request.exitinfo2 >> 32) as u32,
        });
    }
    parse_response(&response.data)
}

/// The report inside a `MSG_REPORT_RSP`.
pub fn parse_response(data: &[u8]) -> Result<Vec<u8>, SevGuestError> {
    let word = |at: usize| -> Result<u32, SevGuestError> {
        data.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| SevGuestError::Malformed(format!("{} bytes", data.len())))
    };
    let status = word(0)?;
    if status != 0 {
        return Err(SevGuestError::Status(status));
    }
    let size = word(4)? as usize;
    if size != REPORT_LEN {
        return Err(SevGuestError::Malformed(format!(
            "report_size {size}, expected {REPORT_LEN}"
        )));
    }
    data.get(REPORT_OFFSET..REPORT_OFFSET + size)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| SevGuestError::Malformed(format!("{} bytes", data.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u32, size: u32) -> Vec<u8> {
        let mut data = vec![0u8; RESPONSE_LEN];
        data[..4].copy_from_slice(&status.to_le_bytes());
        data[4..8].copy_from_slice(&size.to_le_bytes());
        for (i, b) in data[REPORT_OFFSET..REPORT_OFFSET + REPORT_LEN]
            .iter_mut()
            .enumerate()
        {
            *b = i as u8;
        }
        data
    }

    #[test]
    fn structures_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<ReportRequest>(), 96);
        assert_eq!(std::mem::size_of::<ReportResponse>(), 4000);
        assert_eq!(std::mem::size_of::<GuestRequest>(), 32);
    }

    #[test]
    fn report_is_cut_from_the_response() {
        let report = parse_response(&response(0, REPORT_LEN as u32)).unwrap();
        assert_eq!(report.len(), REPORT_LEN);
        assert_eq!(report[..3], [0, 1, 2]);
    }

    #[test]
    fn bad_responses_are_typed_errors() {
        assert!(matches!(
            parse_response(&response(0x16, REPORT_LEN as u32)),
            Err(SevGuestError::Status(0x16))
        ));
        assert!(matches!(
            parse_response(&response(0, 5000)),
            Err(SevGuestError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(&[0; 6]),
            Err(SevGuestError::Malformed(_))
        ));
    }

    #[test]
    fn missing_device_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            get_report(&dir.path().join("sev-guest"), &[0; 64]),
            Err(SevGuestError::Open { .. })
        ));
    }
}
