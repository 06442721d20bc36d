//! Initdata in its three encodings: the TOML document, Kata's annotation (`base64(gzip(toml))` or
//! plain base64) and the virtio-blk device image. The first byte picks the encoding.
//!
//! Property: whatever parses survives its own annotation form unchanged.
#![no_main]

use coffer_initdata::{Initdata, device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let parsed = match form % 3 {
        0 => Initdata::parse(rest.to_vec()),
        1 => match std::str::from_utf8(rest) {
            Ok(text) => Initdata::from_annotation(text),
            Err(_) => return,
        },
        _ => device::decode(rest).and_then(Initdata::parse),
    };
    if let Ok(initdata) = parsed {
        let again = Initdata::from_annotation(&initdata.to_annotation())
            .expect("an accepted document round-trips through its annotation");
        assert_eq!(again.raw(), initdata.raw());
        assert_eq!(again.entries(), initdata.entries());
        assert_eq!(again.digest().value(), initdata.digest().value());
    }
});
