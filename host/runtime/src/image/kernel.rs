//! Extraction of the uncompressed `vmlinux` ELF from a compressed x86 `bzImage`.
//!
//! A bzImage is real-mode setup code, a small decompressor and the compressed kernel ELF. Debian
//! compresses the payload with xz, so the payload is found by scanning for the xz stream magic
//! (`FD 37 7A 58 5A 00`) and decoding exactly one xz stream from there; whatever follows the stream
//! (the decompressor's trailing data, the appended size word) is ignored. The result must start with
//! the ELF magic.

use std::io;
use std::path::Path;

use xz2::stream::{Action, Status, Stream};

use super::ImageError;

/// The magic bytes that start every xz stream.
pub(crate) const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
/// The magic bytes that start every ELF file.
pub(crate) const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Offset of the `HdrS` signature of the x86 boot protocol setup header.
const SETUP_HEADER_MAGIC_OFFSET: usize = 0x202;
/// Offset of the setup header's `kernel_version` pointer (relative to 0x200).
const KERNEL_VERSION_PTR_OFFSET: usize = 0x20E;
/// The version string is short; never scan further than this for its end.
const MAX_VERSION_LEN: usize = 256;

/// Decodes exactly one xz stream from the start of `input`, ignoring any bytes after its end.
///
/// `xz2::read::XzDecoder` reports trailing bytes after a single stream as a corrupt stream, so this
/// drives the same single-stream liblzma decoder (`lzma_stream_decoder` without
/// `LZMA_CONCATENATED`) directly and stops at `StreamEnd`.
pub(crate) fn decode_xz_stream(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0)?;
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).max(1 << 12));
    let mut rest = input;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let (in_before, out_before) = (stream.total_in(), out.len());
        let action = if rest.is_empty() {
            Action::Finish
        } else {
            Action::Run
        };
        let status = stream.process_vec(rest, &mut out, action)?;
        let consumed = usize::try_from(stream.total_in() - in_before).map_err(io::Error::other)?;
        rest = rest.get(consumed..).unwrap_or_default();
        if status == Status::StreamEnd {
            return Ok(out);
        }
        if consumed == 0 && out.len() == out_before {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated xz stream",
            ));
        }
    }
}

/// Finds the xz payload of `bzimage` (read from `path`) and returns the decompressed ELF kernel.
///
/// The first xz magic is normally the payload; should it fail to decode to an ELF image, later
/// occurrences are tried, and if none works the error for the first one is returned.
pub(crate) fn extract_vmlinux(bzimage: &[u8], path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut first_error = None;
    let offsets = bzimage
        .windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, window)| *window == XZ_MAGIC)
        .map(|(offset, _)| offset);
    for offset in offsets {
        let payload = bzimage.get(offset..).unwrap_or_default();
        let result = match decode_xz_stream(payload) {
            Ok(elf) if elf.starts_with(ELF_MAGIC) => return Ok(elf),
            Ok(_) => ImageError::NotElf {
                path: path.to_owned(),
                offset,
            },
            Err(source) => ImageError::KernelDecompress {
                path: path.to_owned(),
                offset,
                source,
            },
        };
        first_error.get_or_insert(result);
    }
    Err(first_error.unwrap_or_else(|| ImageError::NoXzPayload {
        path: path.to_owned(),
    }))
}

/// Returns the kernel release (`uname -r`) recorded in the bzImage's setup header, if the image has
/// one: the first word of the string that `kernel_version` points to.
pub(crate) fn header_release(bzimage: &[u8]) -> Option<&str> {
    let magic_end = SETUP_HEADER_MAGIC_OFFSET + 4;
    if bzimage.get(SETUP_HEADER_MAGIC_OFFSET..magic_end)? != b"HdrS" {
        return None;
    }
    let ptr = bzimage.get(KERNEL_VERSION_PTR_OFFSET..KERNEL_VERSION_PTR_OFFSET + 2)?;
    let ptr = u16::from_le_bytes([ptr[0], ptr[1]]);
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let text = bzimage.get(start..(start + MAX_VERSION_LEN).min(bzimage.len()))?;
    let end = text
        .iter()
        .position(|b| *b == 0 || b.is_ascii_whitespace())?;
    std::str::from_utf8(&text[..end])
        .ok()
        .filter(|release| !release.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// xz-compresses `data` as one stream.
    pub(crate) fn xz(data: &[u8]) -> Vec<u8> {
        let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 6);
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// A fake bzImage: setup-like bytes, an optional boot header with a version string, the xz
    /// payload of `payload` and trailing bytes (as the real decompressor layout has).
    pub(crate) fn fake_bzimage(payload: &[u8], release: Option<&str>) -> Vec<u8> {
        let mut image = vec![0x55u8; 0x400];
        if let Some(release) = release {
            image[0x202..0x206].copy_from_slice(b"HdrS");
            image[0x20E..0x210].copy_from_slice(&0x100u16.to_le_bytes());
            let text = format!("{release} (builder@example) #1 SMP\0");
            image[0x300..0x300 + text.len()].copy_from_slice(text.as_bytes());
        }
        image.extend_from_slice(&xz(payload));
        image.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(b"trailing decompressor bytes");
        image
    }

    /// A buffer that looks like an ELF file.
    pub(crate) fn fake_elf() -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.extend((0..50_000u32).map(|i| (i % 251) as u8));
        elf
    }

    #[test]
    fn extracts_elf_and_ignores_trailing_bytes() {
        let elf = fake_elf();
        let image = fake_bzimage(&elf, None);
        assert_eq!(extract_vmlinux(&image, Path::new("bz")).unwrap(), elf);
    }

    #[test]
    fn non_elf_payload_is_a_typed_error() {
        let image = fake_bzimage(b"MZ not an elf kernel", None);
        let err = extract_vmlinux(&image, Path::new("bz")).unwrap_err();
        assert!(
            matches!(err, ImageError::NotElf { offset: 0x400, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn missing_xz_payload_is_a_typed_error() {
        let err = extract_vmlinux(&[0x1F, 0x8B, 8, 0, 0, 0], Path::new("bz")).unwrap_err();
        assert!(matches!(err, ImageError::NoXzPayload { .. }), "{err:?}");
    }

    #[test]
    fn truncated_payload_is_a_typed_error() {
        let mut image = vec![0u8; 16];
        let payload = xz(&fake_elf());
        image.extend_from_slice(&payload[..payload.len() / 2]);
        let err = extract_vmlinux(&image, Path::new("bz")).unwrap_err();
        assert!(
            matches!(err, ImageError::KernelDecompress { offset: 16, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn later_magic_is_tried_when_the_first_is_not_a_stream() {
        let mut image = XZ_MAGIC.to_vec();
        image.extend_from_slice(b"garbage");
        image.extend_from_slice(&fake_bzimage(&fake_elf(), None));
        assert_eq!(
            extract_vmlinux(&image, Path::new("bz")).unwrap(),
            fake_elf()
        );
    }

    #[test]
    fn reads_release_from_setup_header() {
        let image = fake_bzimage(&fake_elf(), Some("6.1.0-99-amd64"));
        assert_eq!(header_release(&image), Some("6.1.0-99-amd64"));
        assert_eq!(header_release(&fake_bzimage(&fake_elf(), None)), None);
        assert_eq!(header_release(b"short"), None);
    }
}
