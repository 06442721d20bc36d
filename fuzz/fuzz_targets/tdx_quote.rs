//! Intel TDX quotes (v4 and v5) and the CCEL event log, as the TDX verifier reads them.
//!
//! The first byte picks the parser:
//! - even: `tdx::TdQuote::parse` of the rest; a parsed quote's signatures are then checked
//!   (`verify_signatures`: the PEM PCK chain in its certification data, the QE report, the
//!   attestation key) at a fixed time inside the vectors' validity;
//! - odd: `tdx::ccel::EventLog::parse` of the rest, its RTMR replay, and the check against the
//!   report of `tests/vectors/tdx/trustee-tdx_quote_4.dat`.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_attestation::tdx::ccel::EventLog;
use coffer_attestation::tdx::{TdQuote, verify_signatures};
use libfuzzer_sys::fuzz_target;

/// Inside the validity of every PCK certificate in `tests/vectors/tdx`.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_866_000)
}

static QUOTE: LazyLock<TdQuote> = LazyLock::new(|| {
    TdQuote::parse(include_bytes!(
        "../../tests/vectors/tdx/trustee-tdx_quote_4.dat"
    ))
    .expect("vector quote parses")
});

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    if form & 1 == 0 {
        if let Ok(quote) = TdQuote::parse(rest) {
            let _ = verify_signatures(rest, &quote, now());
        }
    } else if let Ok(log) = EventLog::parse(rest) {
        let _ = log.replay();
        let _ = log.check_against(&QUOTE.report);
    }
});
