//! OVMF/TDVF firmware images: the GUIDed footer table at the top of the reset vector and the SEV
//! metadata it points to.
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`): the image is mapped so that it
//! ends at 4 GiB. The last 32 bytes hold the reset vector; just below them sits the footer entry
//! `{u16 size, GUID 96b582de-…}` whose `size` covers the whole table (footer included). Each entry
//! of the table is `{data, u16 size, GUID}` with the header *after* its data, so the table is
//! walked from the top down. The SEV metadata entry holds a `u32` offset, counted back from the
//! end of the image, of the `ASEV` header (`OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`):
//! `{"ASEV", u32 length, u32 version = 1, u32 count}` followed by `count` sections
//! `{u32 base, u32 size, u32 type}`.
//!
//! Every offset and length read from the image is bounds-checked: a malformed image is an
//! [`OvmfError`], never a panic.

use std::collections::BTreeMap;
use std::ops::Range;

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;

/// The image ends at this guest-physical address.
pub const FOUR_GIB: u64 = 1 << 32;

/// Bytes after the footer entry (the reset vector).
const RESET_VECTOR_LEN: usize = 32;
/// `u16 size` + GUID.
const ENTRY_HEADER_LEN: usize = 18;
/// `"ASEV"`, length, version, count.
const SEV_METADATA_HEADER_LEN: usize = 16;
/// base, size, type.
const SEV_METADATA_SECTION_LEN: usize = 12;

/// A GUID in its in-memory (mixed-endian, "bytes_le") form, as it appears in firmware.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the canonical text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` at compile time; the
    /// first three groups are stored little-endian, the last two as written.
    pub const fn parse(text: &str) -> Self {
        let s = text.as_bytes();
        assert!(s.len() == 36, "a GUID has 36 characters");
        // Text positions of the 16 bytes, in canonical (big-endian) order.
        const POS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut be = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            be[i] = (hex_nibble(s[POS[i]]) << 4) | hex_nibble(s[POS[i] + 1]);
            i += 1;
        }
        Self([
            be[3], be[2], be[1], be[0], be[5], be[4], be[7], be[6], be[8], be[9], be[10], be[11],
            be[12], be[13], be[14], be[15],
        ])
    }

    /// The in-memory bytes.
    pub const fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

const fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
            b[3],
            b[2],
            b[1],
            b[0],
            b[5],
            b[4],
            b[7],
            b[6],
            b[8],
            b[9],
            hex::encode(&b[10..])
        )
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Well-known footer-table GUIDs.
pub mod guids {
    use super::Guid;

    /// The footer entry closing the table.
    pub const TABLE_FOOTER: Guid = Guid::parse("96b582de-1fb2-45f7-baea-a366c55a082d");
    /// SEV-ES AP reset block: `u32` reset address of the application processors.
    pub const SEV_ES_RESET_BLOCK: Guid = Guid::parse("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
    /// SEV metadata: `u32` offset from the end of the image of the `ASEV` header.
    pub const SEV_METADATA: Guid = Guid::parse("dc886566-984a-4798-a75e-5585a7bf67cc");
    /// Where the VMM writes the kernel/initrd/cmdline hashes: `u32` base GPA, `u32` size.
    pub const SEV_HASH_TABLE: Guid = Guid::parse("7255371f-3a3b-4b04-927b-1da6efa8d454");
    /// TDX metadata: `u32` offset from the end of the image of the `TDVF` descriptor.
    pub const TDX_METADATA: Guid = Guid::parse("e47a6535-984a-4798-865e-4685a7bf8ec2");
}

/// Malformed or unsuitable firmware.
#[derive(Debug, thiserror::Error)]
pub enum OvmfError {
    /// The image cannot be mapped below 4 GiB in whole pages.
    #[error("firmware size {len} is not a non-zero multiple of 4096 up to 4 GiB")]
    ImageSize {
        /// Image length in bytes.
        len: usize,
    },
    /// A footer-table entry has an impossible size.
    #[error("footer table entry {guid} has size {size}, outside the table")]
    TableEntry {
        /// The entry's GUID.
        guid: Guid,
        /// Its declared size.
        size: u16,
    },
    /// Two footer-table entries have the same GUID (which one a VMM uses is not defined).
    #[error("footer table has two entries {guid}")]
    DuplicateEntry {
        /// The repeated GUID.
        guid: Guid,
    },
    /// A footer-table entry is shorter than the value it must hold.
    #[error("footer table entry {guid} holds {len} bytes, needs {needed}")]
    EntryTooShort {
        /// The entry's GUID.
        guid: Guid,
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A required footer-table entry is absent.
    #[error("firmware has no {what} (footer table entry {guid})")]
    MissingEntry {
        /// What the entry provides.
        what: &'static str,
        /// The entry's GUID.
        guid: Guid,
    },
    /// The SEV metadata is outside the image or inconsistent.
    #[error("sev metadata: {reason}")]
    SevMetadata {
        /// What is wrong.
        reason: String,
    },
    /// A SEV metadata section has an unknown type.
    #[error("sev metadata section {index} has unknown type {kind:#x}")]
    SectionType {
        /// Section index.
        index: usize,
        /// The type value.
        kind: u32,
    },
    /// A SEV metadata section is not page-aligned or wraps.
    #[error(
        "sev metadata section {index} ({kind:?} at {base:#x}, {size:#x} bytes) is not whole pages below 4 GiB"
    )]
    SectionRange {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionKind,
        /// Base GPA.
        base: u32,
        /// Size in bytes.
        size: u32,
    },
}

/// Reads a little-endian `u16` at `at`, if in bounds.
pub(crate) fn le_u16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// Reads a little-endian `u32` at `at`, if in bounds.
pub(crate) fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    Some(u32::from_le_bytes(b))
}

/// Reads a little-endian `u64` at `at`, if in bounds.
pub(crate) fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    Some(u64::from_le_bytes(b))
}

/// The GUIDed footer table: each GUID with the byte range of its data in the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FooterTable {
    entries: BTreeMap<Guid, Range<usize>>,
}

impl FooterTable {
    /// Parses the table at the top of `image`. An image without the footer GUID has an empty
    /// table (it is not an OVMF with a reset-vector table); a table that is present but
    /// malformed is an error.
    pub fn parse(image: &[u8]) -> Result<Self, OvmfError> {
        let mut table = Self::default();
        let Some(footer_at) = image.len().checked_sub(RESET_VECTOR_LEN + ENTRY_HEADER_LEN) else {
            return Ok(table);
        };
        let Some((size, guid)) = entry_header(image, footer_at) else {
            return Ok(table);
        };
        if guid != guids::TABLE_FOOTER {
            return Ok(table);
        }
        let table_len = usize::from(size)
            .checked_sub(ENTRY_HEADER_LEN)
            .ok_or(OvmfError::TableEntry { guid, size })?;
        let start = footer_at
            .checked_sub(table_len)
            .ok_or(OvmfError::TableEntry { guid, size })?;
        // Walk down from the footer: each entry's header is its last 18 bytes.
        let mut end = footer_at;
        while end - start >= ENTRY_HEADER_LEN {
            let header_at = end - ENTRY_HEADER_LEN;
            let (size, guid) = entry_header(image, header_at).ok_or(OvmfError::TableEntry {
                guid: guids::TABLE_FOOTER,
                size: 0,
            })?;
            let size_usize = usize::from(size);
            if size_usize < ENTRY_HEADER_LEN || size_usize > end - start {
                return Err(OvmfError::TableEntry { guid, size });
            }
            let entry_start = end - size_usize;
            if table.entries.insert(guid, entry_start..header_at).is_some() {
                return Err(OvmfError::DuplicateEntry { guid });
            }
            end = entry_start;
        }
        Ok(table)
    }

    /// The data of the entry `guid`, as a range of the image.
    pub fn get(&self, guid: &Guid) -> Option<Range<usize>> {
        self.entries.get(guid).cloned()
    }

    /// Whether the table has any entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The GUIDs present.
    pub fn guids(&self) -> impl Iterator<Item = &Guid> {
        self.entries.keys()
    }
}

fn entry_header(image: &[u8], at: usize) -> Option<(u16, Guid)> {
    let size = le_u16(image, at)?;
    let guid_bytes = image.get(at + 2..at + ENTRY_HEADER_LEN)?;
    let mut guid = [0u8; 16];
    guid.copy_from_slice(guid_bytes);
    Some((size, Guid(guid)))
}

/// The type of a SEV metadata section (`OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// Memory the firmware uses before it validates memory itself (measured as zero pages).
    SnpSecMem,
    /// The SNP secrets page.
    SnpSecrets,
    /// The SNP CPUID page.
    Cpuid,
    /// The SVSM calling-area page.
    SvsmCaa,
    /// The page the VMM fills with the kernel, initrd and command-line hashes.
    SnpKernelHashes,
}

impl SectionKind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::SnpSecMem,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::SnpKernelHashes,
            _ => return None,
        })
    }

    /// The raw type value.
    pub fn raw(self) -> u32 {
        match self {
            Self::SnpSecMem => 1,
            Self::SnpSecrets => 2,
            Self::Cpuid => 3,
            Self::SvsmCaa => 4,
            Self::SnpKernelHashes => 0x10,
        }
    }
}

/// One SEV metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    /// Guest-physical base (page-aligned).
    pub gpa: u64,
    /// Size in bytes (whole pages).
    pub size: u64,
    /// Section type.
    pub kind: SectionKind,
}

/// An OVMF image with its footer table and SEV metadata, parsed and validated.
#[derive(Clone)]
pub struct Ovmf {
    image: Vec<u8>,
    table: FooterTable,
    sections: Vec<SevSection>,
}

impl std::fmt::Debug for Ovmf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ovmf")
            .field("len", &self.image.len())
            .field("table", &self.table)
            .field("sections", &self.sections)
            .finish()
    }
}

impl Ovmf {
    /// Parses `image` (the whole `OVMF.fd`).
    pub fn parse(image: Vec<u8>) -> Result<Self, OvmfError> {
        let len = image.len();
        if len == 0 || !(len as u64).is_multiple_of(PAGE_SIZE) || len as u64 > FOUR_GIB {
            return Err(OvmfError::ImageSize { len });
        }
        let table = FooterTable::parse(&image)?;
        let sections = match table.get(&guids::SEV_METADATA) {
            Some(range) => {
                let offset = entry_u32(&image, &guids::SEV_METADATA, range)?;
                parse_sev_metadata(&image, offset)?
            }
            None => Vec::new(),
        };
        Ok(Self {
            image,
            table,
            sections,
        })
    }

    /// The image bytes.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Guest-physical address of the first byte (the image ends at 4 GiB).
    pub fn gpa(&self) -> u64 {
        FOUR_GIB - self.image.len() as u64
    }

    /// The footer table.
    pub fn table(&self) -> &FooterTable {
        &self.table
    }

    /// SEV metadata sections, in image order (empty without SEV metadata).
    pub fn sev_sections(&self) -> &[SevSection] {
        &self.sections
    }

    /// Whether the image declares a section of `kind`.
    pub fn has_section(&self, kind: SectionKind) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }

    /// Reset address of the application processors (SEV-ES reset block).
    pub fn sev_es_reset_eip(&self) -> Result<u32, OvmfError> {
        self.required_u32(guids::SEV_ES_RESET_BLOCK, "sev-es ap reset block")
    }

    /// Guest-physical address where the VMM places the kernel hashes table.
    pub fn sev_hash_table_gpa(&self) -> Result<u32, OvmfError> {
        self.required_u32(guids::SEV_HASH_TABLE, "sev kernel hashes table address")
    }

    fn required_u32(&self, guid: Guid, what: &'static str) -> Result<u32, OvmfError> {
        let range = self
            .table
            .get(&guid)
            .ok_or(OvmfError::MissingEntry { what, guid })?;
        entry_u32(&self.image, &guid, range)
    }
}

/// The leading `u32` of a footer-table entry.
pub(crate) fn entry_u32(image: &[u8], guid: &Guid, range: Range<usize>) -> Result<u32, OvmfError> {
    let len = range.len();
    image
        .get(range)
        .and_then(|data| le_u32(data, 0))
        .ok_or(OvmfError::EntryTooShort {
            guid: *guid,
            len,
            needed: 4,
        })
}

fn parse_sev_metadata(image: &[u8], offset_from_end: u32) -> Result<Vec<SevSection>, OvmfError> {
    let bad = |reason: String| OvmfError::SevMetadata { reason };
    let start = image
        .len()
        .checked_sub(offset_from_end as usize)
        .ok_or_else(|| {
            bad(format!(
                "offset {offset_from_end:#x} from the end is outside the {}-byte image",
                image.len()
            ))
        })?;
    if image.get(start..start + 4) != Some(b"ASEV".as_slice()) {
        return Err(bad(format!("no ASEV signature at {start:#x}")));
    }
    let length = le_u32(image, start + 4).ok_or_else(|| bad("truncated header".into()))?;
    let version = le_u32(image, start + 8).ok_or_else(|| bad("truncated header".into()))?;
    let count = le_u32(image, start + 12).ok_or_else(|| bad("truncated header".into()))?;
    if version != 1 {
        return Err(bad(format!("unsupported version {version}")));
    }
    let needed = (count as u64) * SEV_METADATA_SECTION_LEN as u64 + SEV_METADATA_HEADER_LEN as u64;
    if (length as u64) < needed || start as u64 + length as u64 > image.len() as u64 {
        return Err(bad(format!(
            "length {length} does not hold {count} sections inside the image"
        )));
    }
    let mut sections = Vec::with_capacity(count as usize);
    for index in 0..count as usize {
        let at = start + SEV_METADATA_HEADER_LEN + index * SEV_METADATA_SECTION_LEN;
        let (Some(base), Some(size), Some(raw)) = (
            le_u32(image, at),
            le_u32(image, at + 4),
            le_u32(image, at + 8),
        ) else {
            return Err(bad(format!("section {index} is truncated")));
        };
        let kind = SectionKind::from_raw(raw).ok_or(OvmfError::SectionType { index, kind: raw })?;
        let aligned =
            u64::from(base).is_multiple_of(PAGE_SIZE) && u64::from(size).is_multiple_of(PAGE_SIZE);
        let fits = u64::from(base) + u64::from(size) <= FOUR_GIB;
        if !aligned || !fits || size == 0 {
            return Err(OvmfError::SectionRange {
                index,
                kind,
                base,
                size,
            });
        }
        sections.push(SevSection {
            gpa: u64::from(base),
            size: u64::from(size),
            kind,
        });
    }
    Ok(sections)
}

/// Builds firmware images with a footer table (test and fixture support): `payload` is padded to
/// `len` bytes minus the table, then the table entries (`(guid, data)`, first = topmost), the
/// footer and a 32-byte reset vector.
pub fn build_image(len: usize, entries: &[(Guid, Vec<u8>)]) -> Vec<u8> {
    let mut table = Vec::new();
    // Entries are laid out bottom-up; the first given ends up right below the footer.
    for (guid, data) in entries.iter().rev() {
        table.extend_from_slice(data);
        let size = (data.len() + ENTRY_HEADER_LEN) as u16;
        table.extend_from_slice(&size.to_le_bytes());
        table.extend_from_slice(guid.bytes());
    }
    let footer_size = (table.len() + ENTRY_HEADER_LEN) as u16;
    table.extend_from_slice(&footer_size.to_le_bytes());
    table.extend_from_slice(guids::TABLE_FOOTER.bytes());
    table.extend_from_slice(&[0u8; RESET_VECTOR_LEN]);
    let mut image = vec![0u8; len.saturating_sub(table.len())];
    image.extend_from_slice(&table);
    image
}

/// Encodes a SEV metadata block (`ASEV` header and sections) for [`build_image`] users.
pub fn encode_sev_metadata(sections: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"ASEV");
    let len = SEV_METADATA_HEADER_LEN + sections.len() * SEV_METADATA_SECTION_LEN;
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (base, size, kind) in sections {
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_form_round_trips_in_mixed_endian() {
        let g = guids::TABLE_FOOTER;
        assert_eq!(g.0[..4], [0xde, 0x82, 0xb5, 0x96]);
        assert_eq!(g.0[4..8], [0xb2, 0x1f, 0xf7, 0x45]);
        assert_eq!(g.0[8..], [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d]);
        assert_eq!(g.to_string(), "96b582de-1fb2-45f7-baea-a366c55a082d");
    }

    fn image_with_metadata(sections: &[(u32, u32, u32)]) -> Vec<u8> {
        let len = 0x10000usize;
        let meta = encode_sev_metadata(sections);
        // Put the ASEV block at 0x1000 and point at it from the table.
        let offset_from_end = (len - 0x1000) as u32;
        let mut image = build_image(
            len,
            &[
                (
                    guids::SEV_ES_RESET_BLOCK,
                    0xffff_b000u32.to_le_bytes().to_vec(),
                ),
                (guids::SEV_METADATA, offset_from_end.to_le_bytes().to_vec()),
            ],
        );
        image[0x1000..0x1000 + meta.len()].copy_from_slice(&meta);
        image
    }

    #[test]
    fn parses_table_and_sections() {
        let image = image_with_metadata(&[(0x80_0000, 0x9000, 1), (0x80_9000, 0x1000, 2)]);
        let ovmf = Ovmf::parse(image).unwrap();
        assert_eq!(ovmf.gpa(), FOUR_GIB - 0x10000);
        assert_eq!(ovmf.sev_es_reset_eip().unwrap(), 0xffff_b000);
        assert_eq!(
            ovmf.sev_sections(),
            &[
                SevSection {
                    gpa: 0x80_0000,
                    size: 0x9000,
                    kind: SectionKind::SnpSecMem
                },
                SevSection {
                    gpa: 0x80_9000,
                    size: 0x1000,
                    kind: SectionKind::SnpSecrets
                },
            ]
        );
        assert!(matches!(
            ovmf.sev_hash_table_gpa(),
            Err(OvmfError::MissingEntry { .. })
        ));
    }

    #[test]
    fn image_without_table_has_no_sections() {
        let ovmf = Ovmf::parse(vec![0u8; 8192]).unwrap();
        assert!(ovmf.table().is_empty());
        assert!(ovmf.sev_sections().is_empty());
        assert!(matches!(
            ovmf.sev_es_reset_eip(),
            Err(OvmfError::MissingEntry { .. })
        ));
    }

    #[test]
    fn bad_sizes_are_errors() {
        for len in [0usize, 100, 4097] {
            assert!(matches!(
                Ovmf::parse(vec![0u8; len]),
                Err(OvmfError::ImageSize { .. })
            ));
        }
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        let good = image_with_metadata(&[(0x80_0000, 0x1000, 1)]);
        let footer_at = good.len() - 50;
        // Footer size too small, too large, and an inner entry of size 0 / larger than the table.
        for footer_size in [0u16, 17, u16::MAX] {
            let mut image = good.clone();
            image[footer_at..footer_at + 2].copy_from_slice(&footer_size.to_le_bytes());
            assert!(
                matches!(Ovmf::parse(image), Err(OvmfError::TableEntry { .. })),
                "footer size {footer_size}"
            );
        }
        let inner_at = footer_at - ENTRY_HEADER_LEN;
        for inner_size in [0u16, 5, 1000] {
            let mut image = good.clone();
            image[inner_at..inner_at + 2].copy_from_slice(&inner_size.to_le_bytes());
            assert!(
                matches!(Ovmf::parse(image), Err(OvmfError::TableEntry { .. })),
                "inner size {inner_size}"
            );
        }
    }

    #[test]
    fn malformed_metadata_is_an_error() {
        let len = 0x10000usize;
        let point =
            |offset: u32| build_image(len, &[(guids::SEV_METADATA, offset.to_le_bytes().to_vec())]);
        // Offset beyond the image, pointing at no ASEV, and an entry too short for its u32.
        assert!(matches!(
            Ovmf::parse(point(0x20000)),
            Err(OvmfError::SevMetadata { .. })
        ));
        assert!(matches!(
            Ovmf::parse(point(0x8000)),
            Err(OvmfError::SevMetadata { .. })
        ));
        assert!(matches!(
            Ovmf::parse(point(0)),
            Err(OvmfError::SevMetadata { .. })
        ));
        let short = build_image(len, &[(guids::SEV_METADATA, vec![1, 2])]);
        assert!(matches!(
            Ovmf::parse(short),
            Err(OvmfError::EntryTooShort { .. })
        ));

        // Count larger than the declared length; unknown type; unaligned section; wrong version.
        let mut image = image_with_metadata(&[(0x80_0000, 0x1000, 1)]);
        image[0x1000 + 12..0x1000 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Ovmf::parse(image),
            Err(OvmfError::SevMetadata { .. })
        ));
        let image = image_with_metadata(&[(0x80_0000, 0x1000, 9)]);
        assert!(matches!(
            Ovmf::parse(image),
            Err(OvmfError::SectionType { index: 0, kind: 9 })
        ));
        let image = image_with_metadata(&[(0x80_0010, 0x1000, 1)]);
        assert!(matches!(
            Ovmf::parse(image),
            Err(OvmfError::SectionRange { .. })
        ));
        let image = image_with_metadata(&[(0xffff_f000, 0x2000, 1)]);
        assert!(matches!(
            Ovmf::parse(image),
            Err(OvmfError::SectionRange { .. })
        ));
        let mut image = image_with_metadata(&[(0x80_0000, 0x1000, 1)]);
        image[0x1000 + 8] = 2;
        assert!(matches!(
            Ovmf::parse(image),
            Err(OvmfError::SevMetadata { .. })
        ));
    }

    #[test]
    fn every_truncation_and_byte_flip_of_the_top_is_handled() {
        // Hostile input must not panic: flip each byte of the table area and the metadata.
        let good = image_with_metadata(&[(0x80_0000, 0x9000, 1), (0x80_9000, 0x1000, 3)]);
        let n = good.len();
        for at in (n - 120..n).chain(0x1000..0x1000 + 40) {
            for value in [0u8, 0xff, 0x7f] {
                let mut image = good.clone();
                image[at] = value;
                let _ = Ovmf::parse(image);
            }
        }
        for cut in [1usize, 4096] {
            let _ = FooterTable::parse(&good[..n - cut]);
        }
    }
}
