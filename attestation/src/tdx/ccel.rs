//! The CCEL (Confidential Computing Event Log, ACPI table `CCEL`) of a TD: a TCG crypto-agile
//! event log whose SHA-384 digests were extended into the TD's measurement registers. Index 0 is
//! MRTD; indices 1..=4 are RTMR0..RTMR3.
//!
//! [`EventLog::parse`] decodes the log (bounded: at most [`MAX_EVENTS`] events of at most
//! [`MAX_EVENT_DATA`] bytes each); [`EventLog::replay`] recomputes RTMR0..3 as
//! `RTMR = SHA-384(RTMR || digest)` from zero; [`EventLog::check_against`] compares the replay with
//! a quote's RTMRs. A log that replays to the quoted RTMRs proves that each logged event (e.g. the
//! kernel command line in RTMR2) is what was measured, so policy can be written over events
//! instead of opaque register values.

use sha2::{Digest, Sha384};

use super::error::{TdxError, to_hex};
use super::quote::TdReport;

/// Most events accepted.
pub const MAX_EVENTS: usize = 4096;
/// Largest event data accepted.
pub const MAX_EVENT_DATA: usize = 1024 * 1024;
/// TCG algorithm id of SHA-384.
pub const TPM_ALG_SHA384: u16 = 0x000c;
/// `EV_NO_ACTION`: informational, not extended.
pub const EV_NO_ACTION: u32 = 0x3;
const SHA384_LEN: usize = 48;

/// One extended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CC measurement register index (0 = MRTD, 1..=4 = RTMR0..3).
    pub mr_index: u32,
    /// TCG event type.
    pub event_type: u32,
    /// The SHA-384 digest that was extended.
    pub digest: [u8; SHA384_LEN],
    /// Event data.
    pub data: Vec<u8>,
}

/// A parsed CCEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// Events after the Spec ID header, in order.
    pub events: Vec<Event>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> TdxError {
        TdxError::EventLog {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TdxError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.err(format!("truncated: {n} more bytes needed")))?;
        let slice = self.bytes.get(self.offset..end).unwrap_or_default();
        self.offset = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, TdxError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, TdxError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest_is_padding(&self) -> bool {
        self.bytes
            .get(self.offset..)
            .is_none_or(|rest| rest.iter().all(|&b| b == 0) || rest.iter().all(|&b| b == 0xff))
    }
}

impl EventLog {
    /// Parses a CCEL: the `TCG_PCR_EVENT` Spec ID header (which must declare SHA-384), then
    /// `TCG_PCR_EVENT2` records until the end, a record starting with all-ones, or zero/0xff
    /// padding to the end of the area.
    pub fn parse(bytes: &[u8]) -> Result<Self, TdxError> {
        let mut r = Reader { bytes, offset: 0 };
        let _index = r.u32()?;
        let header_type = r.u32()?;
        let _sha1 = r.take(20)?;
        let header_len = r.u32()? as usize;
        if header_type != EV_NO_ACTION {
            return Err(r.err("first event is not the Spec ID event"));
        }
        let header = r.take(header_len)?;
        if !header.starts_with(b"Spec ID Event03\0") {
            return Err(r.err("no \"Spec ID Event03\" signature"));
        }
        if !spec_id_declares_sha384(header) {
            return Err(r.err("Spec ID event does not declare SHA-384 with 48-byte digests"));
        }
        let mut events = Vec::new();
        while r.offset + 8 <= bytes.len() && !r.rest_is_padding() {
            let mr_index = r.u32()?;
            let event_type = r.u32()?;
            if mr_index == u32::MAX || event_type == u32::MAX {
                break;
            }
            if events.len() == MAX_EVENTS {
                return Err(r.err(format!("more than {MAX_EVENTS} events")));
            }
            let count = r.u32()?;
            let mut digest = None;
            for _ in 0..count {
                let alg = r.u16()?;
                if alg != TPM_ALG_SHA384 {
                    return Err(r.err(format!("digest algorithm {alg:#06x} is not SHA-384")));
                }
                let mut d = [0u8; SHA384_LEN];
                d.copy_from_slice(r.take(SHA384_LEN)?);
                digest = Some(d);
            }
            let digest = digest.ok_or_else(|| r.err("event without a digest"))?;
            let len = r.u32()? as usize;
            if len > MAX_EVENT_DATA {
                return Err(r.err(format!("event data of {len} bytes")));
            }
            let data = r.take(len)?.to_vec();
            if mr_index > 4 {
                return Err(r.err(format!("measurement register index {mr_index}")));
            }
            events.push(Event {
                mr_index,
                event_type,
                digest,
                data,
            });
        }
        Ok(Self { events })
    }

    /// RTMR0..RTMR3 recomputed from zero by extending every event logged for index 1..=4
    /// (`EV_NO_ACTION` events are not extended).
    pub fn replay(&self) -> [[u8; SHA384_LEN]; 4] {
        let mut rtmr = [[0u8; SHA384_LEN]; 4];
        for event in &self.events {
            if event.event_type == EV_NO_ACTION {
                continue;
            }
            let Some(slot) = (event.mr_index as usize)
                .checked_sub(1)
                .and_then(|i| rtmr.get_mut(i))
            else {
                continue;
            };
            let mut h = Sha384::new();
            h.update(*slot);
            h.update(event.digest);
            slot.copy_from_slice(&h.finalize());
        }
        rtmr
    }

    /// The replayed RTMRs equal the quote's; the first differing register is reported.
    pub fn check_against(&self, report: &TdReport) -> Result<(), TdxError> {
        for (index, (replayed, quoted)) in self.replay().iter().zip(&report.rtmr).enumerate() {
            if replayed != quoted {
                return Err(TdxError::EventLogReplay {
                    index,
                    replayed: to_hex(replayed),
                    quoted: to_hex(quoted),
                });
            }
        }
        Ok(())
    }
}

/// `TCG_EfiSpecIDEvent`: signature(16) platformClass(4) minor major errata uintnSize (1 each)
/// numberOfAlgorithms(4) then {algId u16, digestSize u16}*.
fn spec_id_declares_sha384(header: &[u8]) -> bool {
    let Some(count) = header
        .get(24..28)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    (0..count.min(16)).any(|i| {
        header.get(28 + 4 * i..32 + 4 * i).is_some_and(|e| {
            u16::from_le_bytes([e[0], e[1]]) == TPM_ALG_SHA384
                && u16::from_le_bytes([e[2], e[3]]) as usize == SHA384_LEN
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_header() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        v.extend_from_slice(&[0u8; 20]);
        let mut body = b"Spec ID Event03\0".to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
        body.extend_from_slice(&48u16.to_le_bytes());
        body.push(0);
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn event(index: u32, kind: u32, digest: [u8; 48], data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&index.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
        v.extend_from_slice(&digest);
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn replay_extends_in_order_and_skips_no_action() {
        let mut log = spec_header();
        log.extend(event(2, 0xd, [1; 48], b"kernel"));
        log.extend(event(2, EV_NO_ACTION, [9; 48], b"info"));
        log.extend(event(3, 0xd, [2; 48], b"cmdline"));
        log.extend([0u8; 64]);
        let parsed = EventLog::parse(&log).expect("parses");
        assert_eq!(parsed.events.len(), 3);
        let rtmr = parsed.replay();
        let expected1: [u8; 48] = Sha384::new()
            .chain_update([0u8; 48])
            .chain_update([1u8; 48])
            .finalize()
            .into();
        let expected2: [u8; 48] = Sha384::new()
            .chain_update([0u8; 48])
            .chain_update([2u8; 48])
            .finalize()
            .into();
        assert_eq!(rtmr, [[0; 48], expected1, expected2, [0; 48]]);
    }

    #[test]
    fn kbs06_malformed_logs_are_typed_errors() {
        let mut truncated = spec_header();
        truncated.extend(&event(2, 0xd, [1; 48], b"kernel")[..40]);
        assert!(matches!(
            EventLog::parse(&truncated),
            Err(TdxError::EventLog { .. })
        ));
        let mut sha256 = spec_header();
        let mut e = event(2, 0xd, [1; 48], b"");
        e[12] = 0x0b; // TPM_ALG_SHA256
        sha256.extend(e);
        assert!(matches!(
            EventLog::parse(&sha256),
            Err(TdxError::EventLog { .. })
        ));
        let mut bad_index = spec_header();
        bad_index.extend(event(7, 0xd, [1; 48], b""));
        assert!(matches!(
            EventLog::parse(&bad_index),
            Err(TdxError::EventLog { .. })
        ));
        assert!(EventLog::parse(b"short").is_err());
    }
}
