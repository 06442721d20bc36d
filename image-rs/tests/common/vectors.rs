//! Where the workspace's test vectors live: `tests/vectors/` of the repository (provenance and
//! expected results in its README). Shared by the integration tests (`common`) and the unit tests
//! (`src/lib.rs`, `#[cfg(test)]`); a macro so that the paths stay `&'static str` constants.

/// `vectors_dir!()`: the repository's `tests/vectors`; `vectors_dir!("ocicrypt/src")`: a path
/// below it.
macro_rules! vectors_dir {
    () => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors")
    };
    ($sub:literal) => {
        concat!(vectors_dir!(), "/", $sub)
    };
}
