//! TDX `MRTD`: the build-time measurement of a trust domain launched from a TDVF (OVMF built with
//! TDX support).
//!
//! Model. The TDVF image carries metadata (Intel TDX Virtual Firmware Design Guide, "TDVF
//! metadata"; edk2 `OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm`), found through the footer-table
//! GUID `e47a6535-…`, whose `u32` is the offset from the end of the image of the descriptor
//! `{"TDVF", u32 length, u32 version = 1, u32 count}` followed by `count` sections of 32 bytes:
//! `{u32 DataOffset, u32 RawDataSize, u64 MemoryAddress, u64 MemoryDataSize, u32 Type,
//! u32 Attributes}`. The VMM adds every page of every section with `TDH.MEM.PAGE.ADD` (except
//! sections with the `PAGE.AUG` attribute, which the guest accepts later) and, for sections with
//! `MR.EXTEND`, measures their contents with `TDH.MR.EXTEND` in 256-byte chunks.
//!
//! `MRTD` is one SHA-384 over the sequence of 128-byte blocks the TDX module absorbs as the VMM
//! builds the TD (Intel TDX Module Base Architecture Specification: the build-time measurement
//! register MRTD and the interface functions that extend it):
//! - `TDH.MEM.PAGE.ADD`: `"MEM.PAGE.ADD"` (12 bytes), zero to byte 16, the page's GPA (u64 LE),
//!   zero to 128 bytes;
//! - `TDH.MR.EXTEND`: `"MR.EXTEND"` (9 bytes), zero to 16, the chunk's GPA (u64), zero to 128,
//!   then the chunk's 256 bytes (two more blocks).
//!
//! The order of these calls is up to the VMM: Linux KVM (`KVM_TDX_INIT_MEM_REGION`) adds and
//! extends page by page ([`PageAddOrder::SinglePass`]); some stacks add all pages of a section
//! before extending it ([`PageAddOrder::TwoPass`]).
//!
//! RTMR0..3 are not computed: they are extended by TDVF at boot from its event log (ACPI tables,
//! the TD HOB, the boot variables, the kernel's Authenticode hash), which needs far more of the
//! VMM's configuration than the image. Pin them from a known-good boot's event log instead.

use sha2::{Digest, Sha384};

use crate::ovmf::{FooterTable, OvmfError, PAGE_SIZE, entry_u32, guids, le_u32, le_u64};

/// Length of MRTD.
pub const DIGEST_LEN: usize = 48;
/// Most pages the metadata may ask to add (1 GiB; TDVF images add a few MiB): bounds the work
/// hostile metadata can cause.
pub const MAX_PAGES: u64 = 1 << 18;
/// Bytes per `TDH.MR.EXTEND`.
const EXTEND_CHUNK: usize = 256;
const DESCRIPTOR_HEADER_LEN: usize = 16;
const SECTION_LEN: usize = 32;
/// Section attribute: contents measured with `TDH.MR.EXTEND`.
pub const ATTR_MR_EXTEND: u32 = 1 << 0;
/// Section attribute: pages added later by `TDH.MEM.PAGE.AUG` (not part of MRTD).
pub const ATTR_PAGE_AUG: u32 = 1 << 1;

/// Failures parsing TDVF metadata or computing MRTD.
#[derive(Debug, thiserror::Error)]
pub enum TdxError {
    /// The footer table is malformed.
    #[error("firmware")]
    Firmware(#[from] OvmfError),
    /// The image has no TDX metadata entry.
    #[error("firmware has no tdx metadata: it is not a TDVF image")]
    NoMetadata,
    /// The descriptor is outside the image or inconsistent.
    #[error("tdvf descriptor: {reason}")]
    Descriptor {
        /// What is wrong.
        reason: String,
    },
    /// A section is malformed.
    #[error("tdvf section {index}: {reason}")]
    Section {
        /// Section index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The metadata asks for more pages than [`MAX_PAGES`].
    #[error("tdvf metadata adds {pages} pages, more than {MAX_PAGES}")]
    TooManyPages {
        /// Pages requested.
        pages: u64,
    },
}

/// A TDVF section type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionType {
    /// Boot firmware volume (code).
    Bfv,
    /// Configuration firmware volume (variables).
    Cfv,
    /// The TD HOB the VMM writes.
    TdHob,
    /// Temporary memory.
    TempMem,
    /// Permanent memory.
    PermMem,
    /// Payload (kernel) loaded by the VMM.
    Payload,
    /// Payload parameters.
    PayloadParam,
}

impl SectionType {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            4 => Self::PermMem,
            5 => Self::Payload,
            6 => Self::PayloadParam,
            _ => return None,
        })
    }
}

/// One validated TDVF section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the section's data in the image.
    pub data_offset: u32,
    /// Bytes of data in the image.
    pub raw_data_size: u32,
    /// Guest-physical base (page-aligned).
    pub memory_address: u64,
    /// Bytes of guest memory (whole pages).
    pub memory_data_size: u64,
    /// Type.
    pub kind: SectionType,
    /// Attribute bits ([`ATTR_MR_EXTEND`], [`ATTR_PAGE_AUG`]).
    pub attributes: u32,
}

/// Order of `TDH.MEM.PAGE.ADD` and `TDH.MR.EXTEND` within a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageAddOrder {
    /// Each page is added, then extended (Linux KVM).
    #[default]
    SinglePass,
    /// All pages of a section are added, then all are extended.
    TwoPass,
}

/// A TDVF image's metadata.
#[derive(Clone)]
pub struct Tdvf<'a> {
    image: &'a [u8],
    sections: Vec<TdvfSection>,
}

impl std::fmt::Debug for Tdvf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tdvf")
            .field("len", &self.image.len())
            .field("sections", &self.sections)
            .finish()
    }
}

impl<'a> Tdvf<'a> {
    /// Parses and validates the metadata of `image`.
    pub fn parse(image: &'a [u8]) -> Result<Self, TdxError> {
        let table = FooterTable::parse(image)?;
        let range = table
            .get(&guids::TDX_METADATA)
            .ok_or(TdxError::NoMetadata)?;
        let offset = entry_u32(image, &guids::TDX_METADATA, range)?;
        let bad = |reason: String| TdxError::Descriptor { reason };
        let start = image
            .len()
            .checked_sub(offset as usize)
            .ok_or_else(|| bad(format!("offset {offset:#x} is outside the image")))?;
        if image.get(start..start + 4) != Some(b"TDVF".as_slice()) {
            return Err(bad(format!("no TDVF signature at {start:#x}")));
        }
        let header = |at: usize| le_u32(image, start + at).ok_or_else(|| bad("truncated".into()));
        let (length, version, count) = (header(4)?, header(8)?, header(12)?);
        if version != 1 {
            return Err(bad(format!("unsupported version {version}")));
        }
        let needed = u64::from(count) * SECTION_LEN as u64 + DESCRIPTOR_HEADER_LEN as u64;
        if u64::from(length) < needed || start as u64 + u64::from(length) > image.len() as u64 {
            return Err(bad(format!(
                "length {length} does not hold {count} sections inside the image"
            )));
        }
        let mut sections = Vec::with_capacity(count as usize);
        let mut pages = 0u64;
        for index in 0..count as usize {
            let at = start + DESCRIPTOR_HEADER_LEN + index * SECTION_LEN;
            let section = parse_section(image, at, index)?;
            if section.attributes & ATTR_PAGE_AUG == 0 {
                pages = pages.saturating_add(section.memory_data_size / PAGE_SIZE);
                if pages > MAX_PAGES {
                    return Err(TdxError::TooManyPages { pages });
                }
            }
            sections.push(section);
        }
        Ok(Self { image, sections })
    }

    /// The sections, in image order.
    pub fn sections(&self) -> &[TdvfSection] {
        &self.sections
    }

    /// MRTD with the given page order.
    pub fn mrtd(&self, order: PageAddOrder) -> [u8; DIGEST_LEN] {
        let mut h = Sha384::new();
        for s in &self.sections {
            if s.attributes & ATTR_PAGE_AUG != 0 {
                continue;
            }
            let pages = s.memory_data_size / PAGE_SIZE;
            let extend = s.attributes & ATTR_MR_EXTEND != 0;
            match order {
                PageAddOrder::SinglePass => {
                    for p in 0..pages {
                        page_add(&mut h, s.memory_address + p * PAGE_SIZE);
                        if extend {
                            self.extend_page(&mut h, s, p);
                        }
                    }
                }
                PageAddOrder::TwoPass => {
                    for p in 0..pages {
                        page_add(&mut h, s.memory_address + p * PAGE_SIZE);
                    }
                    if extend {
                        for p in 0..pages {
                            self.extend_page(&mut h, s, p);
                        }
                    }
                }
            }
        }
        h.finalize().into()
    }

    /// `TDH.MR.EXTEND` of page `p` of `s`: its image bytes, zero past `RawDataSize`.
    fn extend_page(&self, h: &mut Sha384, s: &TdvfSection, p: u64) {
        let mut page = [0u8; PAGE_SIZE as usize];
        let data_start = s.data_offset as u64 + p * PAGE_SIZE;
        let data_end =
            (s.data_offset as u64 + u64::from(s.raw_data_size)).min(data_start + PAGE_SIZE);
        if data_end > data_start {
            // In bounds: parse_section checked DataOffset + RawDataSize <= image length.
            if let Some(src) = self.image.get(data_start as usize..data_end as usize) {
                page[..src.len()].copy_from_slice(src);
            }
        }
        for (i, chunk) in page.chunks(EXTEND_CHUNK).enumerate() {
            let mut block = [0u8; 128];
            block[..9].copy_from_slice(b"MR.EXTEND");
            let gpa = s.memory_address + p * PAGE_SIZE + (i * EXTEND_CHUNK) as u64;
            block[16..24].copy_from_slice(&gpa.to_le_bytes());
            h.update(block);
            h.update(chunk);
        }
    }
}

fn page_add(h: &mut Sha384, gpa: u64) {
    let mut block = [0u8; 128];
    block[..12].copy_from_slice(b"MEM.PAGE.ADD");
    block[16..24].copy_from_slice(&gpa.to_le_bytes());
    h.update(block);
}

fn parse_section(image: &[u8], at: usize, index: usize) -> Result<TdvfSection, TdxError> {
    let bad = |reason: String| TdxError::Section { index, reason };
    let truncated = || bad("truncated".into());
    let data_offset = le_u32(image, at).ok_or_else(truncated)?;
    let raw_data_size = le_u32(image, at + 4).ok_or_else(truncated)?;
    let memory_address = le_u64(image, at + 8).ok_or_else(truncated)?;
    let memory_data_size = le_u64(image, at + 16).ok_or_else(truncated)?;
    let raw_type = le_u32(image, at + 24).ok_or_else(truncated)?;
    let attributes = le_u32(image, at + 28).ok_or_else(truncated)?;
    let kind =
        SectionType::from_raw(raw_type).ok_or_else(|| bad(format!("unknown type {raw_type}")))?;
    if attributes & !(ATTR_MR_EXTEND | ATTR_PAGE_AUG) != 0 {
        return Err(bad(format!("unknown attributes {attributes:#x}")));
    }
    if !memory_address.is_multiple_of(PAGE_SIZE)
        || !memory_data_size.is_multiple_of(PAGE_SIZE)
        || memory_address.checked_add(memory_data_size).is_none()
    {
        return Err(bad(format!(
            "memory {memory_address:#x}+{memory_data_size:#x} is not whole pages"
        )));
    }
    if u64::from(raw_data_size) > memory_data_size
        || u64::from(data_offset) + u64::from(raw_data_size) > image.len() as u64
    {
        return Err(bad(format!(
            "data {data_offset:#x}+{raw_data_size:#x} is outside the image or larger than its memory"
        )));
    }
    if attributes & ATTR_MR_EXTEND != 0 && !matches!(kind, SectionType::Bfv | SectionType::Cfv) {
        // Only firmware volumes come from the image; other contents are the VMM's.
        return Err(bad(format!(
            "{kind:?} with MR.EXTEND: its contents are not in the image"
        )));
    }
    Ok(TdvfSection {
        data_offset,
        raw_data_size,
        memory_address,
        memory_data_size,
        kind,
        attributes,
    })
}

/// A raw section for [`encode_descriptor`]:
/// `(data_offset, raw_size, gpa, mem_size, type, attributes)`.
pub type RawSection = (u32, u32, u64, u64, u32, u32);

/// Encodes a TDVF descriptor (test and fixture support).
pub fn encode_descriptor(sections: &[RawSection]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"TDVF");
    let len = DESCRIPTOR_HEADER_LEN + sections.len() * SECTION_LEN;
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (data_offset, raw, gpa, size, kind, attributes) in sections {
        out.extend_from_slice(&data_offset.to_le_bytes());
        out.extend_from_slice(&raw.to_le_bytes());
        out.extend_from_slice(&gpa.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&attributes.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovmf::build_image;

    const LEN: usize = 0x4000;

    /// A 16 KiB image: BFV = the top two pages (extended), a TD HOB page and a PAGE.AUG section.
    fn image(sections: &[RawSection]) -> Vec<u8> {
        let descriptor_at = 0x100usize;
        let mut image = build_image(
            LEN,
            &[(
                guids::TDX_METADATA,
                ((LEN - descriptor_at) as u32).to_le_bytes().to_vec(),
            )],
        );
        for (i, b) in image[0x2000..0x3000].iter_mut().enumerate() {
            *b = i as u8;
        }
        let d = encode_descriptor(sections);
        image[descriptor_at..descriptor_at + d.len()].copy_from_slice(&d);
        image
    }

    fn standard() -> Vec<u8> {
        image(&[
            (0x2000, 0x2000, 0xffff_e000, 0x2000, 0, ATTR_MR_EXTEND),
            (0, 0, 0x80_9000, 0x1000, 2, 0),
            (0, 0, 0x100_0000, 0x1000, 3, ATTR_PAGE_AUG),
        ])
    }

    /// MRTD written out block by block, independently of the section walk.
    fn expected_single_pass(image: &[u8]) -> [u8; 48] {
        let mut h = Sha384::new();
        let add = |h: &mut Sha384, gpa: u64| {
            let mut b = [0u8; 128];
            b[..12].copy_from_slice(b"MEM.PAGE.ADD");
            b[16..24].copy_from_slice(&gpa.to_le_bytes());
            h.update(b);
        };
        for page in 0..2u64 {
            let gpa = 0xffff_e000 + page * 0x1000;
            add(&mut h, gpa);
            for chunk in 0..16u64 {
                let mut b = [0u8; 128];
                b[..9].copy_from_slice(b"MR.EXTEND");
                b[16..24].copy_from_slice(&(gpa + chunk * 256).to_le_bytes());
                h.update(b);
                let at = (0x2000 + page * 0x1000 + chunk * 256) as usize;
                h.update(&image[at..at + 256]);
            }
        }
        add(&mut h, 0x80_9000);
        h.finalize().into()
    }

    #[test]
    fn mrtd_follows_page_add_and_extend_blocks() {
        let image = standard();
        let tdvf = Tdvf::parse(&image).unwrap();
        assert_eq!(tdvf.sections().len(), 3);
        assert_eq!(
            tdvf.mrtd(PageAddOrder::SinglePass),
            expected_single_pass(&image)
        );
        assert_ne!(
            tdvf.mrtd(PageAddOrder::SinglePass),
            tdvf.mrtd(PageAddOrder::TwoPass)
        );
    }

    #[test]
    fn raw_data_shorter_than_memory_is_zero_padded() {
        let short = image(&[(0x2000, 0x800, 0xffff_e000, 0x1000, 0, ATTR_MR_EXTEND)]);
        let full = image(&[(0x2000, 0x1000, 0xffff_e000, 0x1000, 0, ATTR_MR_EXTEND)]);
        let mut zeroed_full = full.clone();
        zeroed_full[0x2800..0x3000].fill(0);
        let a = Tdvf::parse(&short).unwrap().mrtd(PageAddOrder::SinglePass);
        let b = Tdvf::parse(&zeroed_full)
            .unwrap()
            .mrtd(PageAddOrder::SinglePass);
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_metadata_is_refused() {
        let cases: &[&[RawSection]] = &[
            &[(0, 0, 0x1000, 0x1000, 9, 0)],              // unknown type
            &[(0, 0, 0x1000, 0x1000, 0, 0x4)],            // unknown attribute
            &[(0, 0, 0x1001, 0x1000, 0, 0)],              // unaligned
            &[(0, 0, u64::MAX - 0xfff, 0x2000, 0, 0)],    // wraps
            &[(0x3000, 0x2000, 0x1000, 0x2000, 0, 0)],    // data outside the image
            &[(0, 0x2000, 0x1000, 0x1000, 0, 0)],         // raw larger than memory
            &[(0, 0, 0x1000, 0x1000, 2, ATTR_MR_EXTEND)], // extend a HOB
            &[(0, 0, 0, 1 << 40, 3, 0)],                  // too many pages
        ];
        for sections in cases {
            assert!(Tdvf::parse(&image(sections)).is_err(), "{sections:?}");
        }
        assert!(matches!(
            Tdvf::parse(&vec![0u8; LEN]),
            Err(TdxError::NoMetadata)
        ));
        // Count beyond the declared length; wrong version; bad signature.
        let mut bad = standard();
        bad[0x100 + 12..0x100 + 16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Tdvf::parse(&bad),
            Err(TdxError::Descriptor { .. })
        ));
        let mut bad = standard();
        bad[0x100 + 8] = 2;
        assert!(matches!(
            Tdvf::parse(&bad),
            Err(TdxError::Descriptor { .. })
        ));
        let mut bad = standard();
        bad[0x100] = b'X';
        assert!(matches!(
            Tdvf::parse(&bad),
            Err(TdxError::Descriptor { .. })
        ));
    }

    #[test]
    fn byte_flips_never_panic() {
        let good = standard();
        for at in (0x100..0x100 + 16 + 3 * 32).chain(LEN - 80..LEN) {
            for v in [0u8, 0xff, 0x80] {
                let mut image = good.clone();
                image[at] = v;
                // Parse every variant; hash only the small ones (a flip may ask for 1 GiB).
                if let Ok(t) = Tdvf::parse(&image)
                    && t.sections()
                        .iter()
                        .fold(0u64, |n, s| n.saturating_add(s.memory_data_size))
                        <= 1 << 20
                {
                    let _ = t.mrtd(PageAddOrder::TwoPass);
                }
            }
        }
    }
}
