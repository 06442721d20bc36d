//! Leak scans: does a secret (a key's bytes in any common encoding, a plaintext marker) appear in
//! any file the host side holds? Regular files are read whole (bounded); gzip members are also
//! read decompressed, so an unencrypted layer blob cannot hide its content behind compression.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// Files larger than this are read only up to it (logs and blobs here are far smaller).
const MAX_FILE: u64 = 256 << 20;

/// One thing that must not appear, in every form it would take on disk.
#[derive(Debug, Clone)]
pub struct Needle {
    /// What it is, for the report (never the secret itself).
    pub name: String,
    forms: Vec<Vec<u8>>,
}

impl Needle {
    /// A text that must not appear as such.
    pub fn text(name: &str, text: &str) -> Self {
        Self {
            name: name.to_owned(),
            forms: vec![text.as_bytes().to_vec()],
        }
    }

    /// Key bytes: raw, lowercase hex, standard and URL-safe base64 (without padding, which also
    /// finds them padded).
    pub fn key(name: &str, bytes: &[u8]) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            name: name.to_owned(),
            forms: vec![
                bytes.to_vec(),
                hex.into_bytes(),
                b64.into_bytes(),
                b64url.into_bytes(),
            ],
        }
    }

    fn found_in(&self, data: &[u8]) -> bool {
        self.forms
            .iter()
            .any(|form| !form.is_empty() && data.windows(form.len()).any(|w| w == form.as_slice()))
    }
}

/// Where a needle was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The needle's name.
    pub needle: String,
    /// The file.
    pub path: PathBuf,
    /// Found only after decompressing the file.
    pub decompressed: bool,
}

/// Every regular file under `roots` (recursively, not following links), in path order.
pub fn files(roots: &[&Path]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Scans every regular file under `roots` (and the extra in-memory `texts`, named by their
/// label) for each needle.
pub fn scan(roots: &[&Path], texts: &[(&str, &[u8])], needles: &[Needle]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut check = |path: PathBuf, data: &[u8]| {
        let inflated = gunzip(data);
        for needle in needles {
            if needle.found_in(data) {
                findings.push(Finding {
                    needle: needle.name.clone(),
                    path: path.clone(),
                    decompressed: false,
                });
            } else if inflated.as_deref().is_some_and(|d| needle.found_in(d)) {
                findings.push(Finding {
                    needle: needle.name.clone(),
                    path: path.clone(),
                    decompressed: true,
                });
            }
        }
    };
    for file in files(roots) {
        let mut data = Vec::new();
        // A file that vanished or cannot be read (a socket's twin, a removed log) holds nothing.
        if let Ok(f) = std::fs::File::open(&file) {
            let _ = f.take(MAX_FILE).read_to_end(&mut data);
        }
        check(file, &data);
    }
    for (label, data) in texts {
        check(PathBuf::from(format!("<{label}>")), data);
    }
    findings
}

/// The decompressed content of a gzip stream, when `data` is one.
fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_FILE)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn finds_every_form_and_inside_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let key = [0xabu8, 0x01, 0xfe, 0x10, 0x99, 0x42];
        std::fs::write(dir.path().join("hex.log"), "key=ab01fe109942\n").unwrap();
        std::fs::write(
            dir.path().join("b64.json"),
            format!(
                "{{\"k\":\"{}\"}}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"...the plaintext marker...").unwrap();
        std::fs::write(dir.path().join("layer"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("clean"), "nothing here").unwrap();
        let found = scan(
            &[dir.path()],
            &[("stderr", b"raw \xab\x01\xfe\x10\x99\x42")],
            &[
                Needle::key("key", &key),
                Needle::text("marker", "plaintext marker"),
            ],
        );
        let mut names: Vec<String> = found
            .iter()
            .map(|f| {
                format!(
                    "{}:{}:{}",
                    f.needle,
                    f.path.file_name().unwrap().to_string_lossy(),
                    f.decompressed
                )
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "key:<stderr>:false",
                "key:b64.json:false",
                "key:hex.log:false",
                "marker:layer:true"
            ]
        );
    }
}
