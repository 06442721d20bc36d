//! A cpio newc reader for tests: parses an archive back and checks its framing on the way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::cpio::{HEADER_LEN, MAGIC, TRAILER};

/// One parsed member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

fn hex(field: &[u8]) -> u32 {
    let text = std::str::from_utf8(field).expect("ascii header");
    u32::from_str_radix(text, 16).expect("hex field")
}

/// Parses every entry up to and including the trailer; asserts 4-byte alignment, the magic,
/// zero padding and that only zero bytes follow the trailer up to a 512-byte boundary.
pub(crate) fn parse(archive: &[u8]) -> Vec<Entry> {
    assert_eq!(archive.len() % 512, 0, "archive not padded to 512 bytes");
    let mut pos = 0usize;
    let mut entries = Vec::new();
    loop {
        assert_eq!(pos % 4, 0, "header not 4-byte aligned");
        let head = &archive[pos..pos + HEADER_LEN];
        assert_eq!(&head[..6], MAGIC, "bad magic at {pos}");
        let f = |i: usize| hex(&head[6 + 8 * i..14 + 8 * i]);
        let (size, name_size) = (f(6) as usize, f(11) as usize);
        let name_start = pos + HEADER_LEN;
        let name_bytes = &archive[name_start..name_start + name_size];
        assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
        let name = String::from_utf8(name_bytes[..name_size - 1].to_vec()).expect("utf-8 name");
        let data_start = (name_start + name_size).next_multiple_of(4);
        assert!(
            archive[name_start + name_size..data_start]
                .iter()
                .all(|b| *b == 0)
        );
        let data_end = data_start + size;
        let next = data_end.next_multiple_of(4);
        assert!(archive[data_end..next].iter().all(|b| *b == 0));
        assert_eq!(
            (f(7), f(8), f(12)),
            (0, 0, 0),
            "devmajor/devminor/check not 0"
        );
        entries.push(Entry {
            name,
            ino: f(0),
            mode: f(1),
            uid: f(2),
            gid: f(3),
            nlink: f(4),
            mtime: f(5),
            rdev: (f(9), f(10)),
            data: archive[data_start..data_end].to_vec(),
        });
        pos = next;
        if entries.last().is_some_and(|e| e.name == TRAILER) {
            break;
        }
    }
    assert!(
        archive[pos..].iter().all(|b| *b == 0),
        "garbage after trailer"
    );
    entries
}
