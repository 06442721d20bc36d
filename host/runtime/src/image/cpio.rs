//! A minimal, deterministic writer for the cpio "newc" format (magic `070701`) that the Linux kernel
//! unpacks as an initramfs.
//!
//! Entries live in a [`BTreeMap`] keyed by their path (without the leading `/`), so the archive is
//! always emitted in byte-wise path order, which also places every directory before its contents.
//! Inode numbers are assigned sequentially in that order, every mtime/uid/gid is 0 and regular files
//! have `nlink` 1 (so the kernel never tries to hard-link them). Each header+name and each file body
//! is padded to 4 bytes, the archive ends with the `TRAILER!!!` entry and is padded to 512 bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::ImageError;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
/// Permission (and sticky/setuid) bits accepted from callers.
const PERM_MASK: u32 = 0o7777;
/// Mode of directories created implicitly as parents of other entries.
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// The newc magic.
pub(crate) const MAGIC: &[u8] = b"070701";
/// Size of a newc header: the magic plus 13 eight-digit hex fields.
pub(crate) const HEADER_LEN: usize = 110;
/// Name of the end-of-archive marker.
pub(crate) const TRAILER: &str = "TRAILER!!!";
/// The whole archive is padded to a multiple of this.
const BLOCK: u64 = 512;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { perm: u32 },
    File { perm: u32, data: Vec<u8> },
    CharDev { perm: u32, major: u32, minor: u32 },
}

/// An in-memory initramfs under construction.
#[derive(Debug, Default)]
pub(crate) struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    /// Creates an empty archive.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (or sets the mode of an existing one), creating missing parents with mode 0755.
    pub(crate) fn dir(&mut self, path: &str, perm: u32) -> Result<(), ImageError> {
        let key = normalize(path)?;
        self.add_parents(&key)?;
        match self.entries.get_mut(&key) {
            Some(Node::Dir { perm: existing }) => *existing = perm & PERM_MASK,
            Some(_) => return Err(duplicate(&key)),
            None => {
                self.entries.insert(
                    key,
                    Node::Dir {
                        perm: perm & PERM_MASK,
                    },
                );
            }
        }
        Ok(())
    }

    /// Adds a regular file, creating missing parents with mode 0755.
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), ImageError> {
        let key = normalize(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(ImageError::EntryTooLarge { name: key });
        }
        self.insert_leaf(
            key,
            Node::File {
                perm: perm & PERM_MASK,
                data,
            },
        )
    }

    /// Adds a character device node, creating missing parents with mode 0755.
    pub(crate) fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), ImageError> {
        let key = normalize(path)?;
        self.insert_leaf(
            key,
            Node::CharDev {
                perm: perm & PERM_MASK,
                major,
                minor,
            },
        )
    }

    /// Serialises the archive; returns the number of bytes written (a multiple of 512).
    pub(crate) fn write_to<W: Write>(&self, mut out: W) -> io::Result<u64> {
        let mut written = 0u64;
        for (index, (name, node)) in self.entries.iter().enumerate() {
            // Inode numbers start at 1 and follow path order; 0 is left to the trailer.
            let ino = u32::try_from(index + 1).map_err(|_| io::Error::other("too many entries"))?;
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir { perm } => (S_IFDIR | perm, 2, &[], (0, 0)),
                Node::File { perm, data } => (S_IFREG | perm, 1, data, (0, 0)),
                Node::CharDev { perm, major, minor } => (S_IFCHR | perm, 1, &[], (*major, *minor)),
            };
            let header = Header {
                ino,
                mode,
                nlink,
                size: data.len(),
                rdev,
            };
            written += write_entry(&mut out, &header, name, data)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        };
        written += write_entry(&mut out, &trailer, TRAILER, &[])?;
        let tail = written.next_multiple_of(BLOCK) - written;
        out.write_all(&vec![0u8; usize::try_from(tail).map_err(io::Error::other)?])?;
        Ok(written + tail)
    }

    fn insert_leaf(&mut self, key: String, node: Node) -> Result<(), ImageError> {
        self.add_parents(&key)?;
        if self.entries.contains_key(&key) {
            return Err(duplicate(&key));
        }
        self.entries.insert(key, node);
        Ok(())
    }

    fn add_parents(&mut self, key: &str) -> Result<(), ImageError> {
        for (pos, _) in key.match_indices('/') {
            let parent = &key[..pos];
            match self.entries.get(parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(duplicate(parent)),
                None => {
                    self.entries.insert(
                        parent.to_owned(),
                        Node::Dir {
                            perm: IMPLICIT_DIR_MODE,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

/// The variable fields of one newc header.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
}

/// Writes header, NUL-terminated name, padding, body and padding; returns the bytes written.
fn write_entry<W: Write>(out: &mut W, h: &Header, name: &str, data: &[u8]) -> io::Result<u64> {
    let name_size = name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        0, // mtime
        u32::try_from(h.size).map_err(io::Error::other)?,
        0, // devmajor
        0, // devminor
        h.rdev.0,
        h.rdev.1,
        u32::try_from(name_size).map_err(io::Error::other)?,
        0, // check (only used by the "crc" variant)
    ];
    let mut head = Vec::with_capacity(HEADER_LEN + name_size + 3);
    head.extend_from_slice(MAGIC);
    for field in fields {
        head.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    head.extend_from_slice(name.as_bytes());
    head.push(0);
    head.resize(head.len().next_multiple_of(4), 0);
    out.write_all(&head)?;
    out.write_all(data)?;
    let body_pad = data.len().next_multiple_of(4) - data.len();
    out.write_all(&[0u8; 3][..body_pad])?;
    Ok((head.len() + data.len() + body_pad) as u64)
}

/// Strips the leading `/` and rejects empty, `.`/`..` or NUL-containing paths.
fn normalize(path: &str) -> Result<String, ImageError> {
    let key = path.strip_prefix('/').unwrap_or(path);
    let valid = !key.is_empty()
        && !key.contains('\0')
        && key != TRAILER
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if valid {
        Ok(key.to_owned())
    } else {
        Err(ImageError::InvalidEntryName {
            name: path.to_owned(),
        })
    }
}

fn duplicate(key: &str) -> ImageError {
    ImageError::DuplicateEntry {
        name: format!("/{key}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::newc_reader::parse;
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("/init", 0o755, b"#!agent".to_vec()).unwrap();
        a.dir("/tmp", 0o1777).unwrap();
        a.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        a.file("/etc/hosts", 0o644, b"127.0.0.1 localhost\n".to_vec())
            .unwrap();
        a.file("/lib/modules/x/kernel/a.ko", 0o644, vec![7u8; 1001])
            .unwrap();
        a.file("/empty", 0o644, Vec::new()).unwrap();
        a
    }

    fn bytes(a: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        let n = a.write_to(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn writes_valid_sorted_newc() {
        let out = bytes(&sample());
        let entries = parse(&out);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "empty",
                "etc",
                "etc/hosts",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/kernel",
                "lib/modules/x/kernel/a.ko",
                "tmp",
                "TRAILER!!!",
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("dev").mode, 0o040_755);
        assert_eq!(get("dev").nlink, 2);
        assert_eq!(get("tmp").mode, 0o041_777);
        assert_eq!(get("dev/console").mode, 0o020_600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("init").mode, 0o100_755);
        assert_eq!(get("init").data, b"#!agent");
        assert_eq!(get("init").nlink, 1);
        assert_eq!(get("etc/hosts").mode, 0o100_644);
        assert_eq!(get("lib/modules/x/kernel/a.ko").data, vec![7u8; 1001]);
        assert!(get("empty").data.is_empty());
        for (i, e) in entries.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
            if e.name != TRAILER {
                assert_eq!(e.ino as usize, i + 1, "{}", e.name);
            }
        }
        let trailer = entries.last().unwrap();
        assert_eq!((trailer.ino, trailer.mode, trailer.nlink), (0, 0, 1));
    }

    #[test]
    fn output_is_independent_of_insertion_order() {
        let mut b = Archive::new();
        b.file("/empty", 0o644, Vec::new()).unwrap();
        b.file("/lib/modules/x/kernel/a.ko", 0o644, vec![7u8; 1001])
            .unwrap();
        b.file("/etc/hosts", 0o644, b"127.0.0.1 localhost\n".to_vec())
            .unwrap();
        b.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        b.dir("/tmp", 0o1777).unwrap();
        b.file("/init", 0o755, b"#!agent".to_vec()).unwrap();
        assert_eq!(bytes(&sample()), bytes(&b));
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        let mut a = Archive::new();
        for bad in ["", "/", "/a//b", "/a/../b", "./a", "a\0b", "/TRAILER!!!"] {
            assert!(
                matches!(
                    a.file(bad, 0o644, Vec::new()),
                    Err(ImageError::InvalidEntryName { .. })
                ),
                "{bad:?}"
            );
        }
        a.file("/a/b", 0o644, Vec::new()).unwrap();
        assert!(matches!(
            a.file("/a/b", 0o644, Vec::new()),
            Err(ImageError::DuplicateEntry { .. })
        ));
        assert!(matches!(
            a.dir("/a/b", 0o755),
            Err(ImageError::DuplicateEntry { .. })
        ));
        assert!(matches!(
            a.file("/a/b/c", 0o644, Vec::new()),
            Err(ImageError::DuplicateEntry { .. })
        ));
        // Re-declaring an implicit directory only changes its mode.
        a.dir("/a", 0o700).unwrap();
        let entries = parse(&bytes(&a));
        assert_eq!(entries[0].name, "a");
        assert_eq!(entries[0].mode, 0o040_700);
    }

    #[test]
    fn empty_archive_is_just_a_padded_trailer() {
        let out = bytes(&Archive::new());
        assert_eq!(out.len(), 512);
        let entries = parse(&out);
        assert_eq!(entries.len(), 1);
        assert_eq!(&out[..6], b"070701");
    }
}
