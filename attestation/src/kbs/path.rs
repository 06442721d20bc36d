//! Resource paths `<repository>/<type>/<tag>`, validated once for client and broker (KBS-09).

use std::fmt;
use std::str::FromStr;

/// Longest accepted segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

/// A refused resource path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resource path: {reason}")]
pub struct PathError {
    /// Why it was refused.
    pub reason: &'static str,
}

/// A validated resource path: exactly three non-empty segments of `[A-Za-z0-9._-]`, none `.` or
/// `..` and none starting with a dot, each at most [`MAX_SEGMENT_LEN`] bytes. Safe to join under
/// a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourcePath {
    repository: String,
    kind: String,
    tag: String,
}

impl ResourcePath {
    /// Validates three segments.
    pub fn new(repository: &str, kind: &str, tag: &str) -> Result<Self, PathError> {
        for segment in [repository, kind, tag] {
            check_segment(segment)?;
        }
        Ok(Self {
            repository: repository.to_owned(),
            kind: kind.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The three segments.
    pub fn segments(&self) -> [&str; 3] {
        [&self.repository, &self.kind, &self.tag]
    }
}

fn check_segment(segment: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError {
            reason: "empty segment",
        });
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(PathError {
            reason: "segment too long",
        });
    }
    if segment.starts_with('.') {
        return Err(PathError {
            reason: "segment starts with a dot",
        });
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(PathError {
            reason: "segment has characters outside [A-Za-z0-9._-]",
        });
    }
    Ok(())
}

impl FromStr for ResourcePath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(r), Some(k), Some(t), None) => Self::new(r, k, t),
            _ => Err(PathError {
                reason: "not exactly three segments",
            }),
        }
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_shape_refused_kbs09() {
        for bad in [
            "../etc/passwd",
            "default/../secret",
            "default/test/..",
            "default//secret",
            "default/test/secret/extra",
            "default/test",
            "%2e%2e/test/secret",
            ".well-known/a/b",
            "default/test/sec ret",
            "default/test/a\\b",
        ] {
            assert!(bad.parse::<ResourcePath>().is_err(), "{bad} accepted");
        }
        let long = format!("default/test/{}", "a".repeat(10 * 1024));
        assert!(long.parse::<ResourcePath>().is_err());
        let ok: ResourcePath = "default/key/1".parse().unwrap();
        assert_eq!(ok.to_string(), "default/key/1");
    }
}
