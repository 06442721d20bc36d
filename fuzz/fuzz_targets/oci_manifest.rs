//! OCI/Docker manifest, index and image config parsing as a pull does it: the document kind by
//! its media type (or shape), an index's `linux/amd64` pick, each layer's media type, and the
//! image config checked against the manifest's layer count.
//!
//! One input is tried as a manifest and as a config, so seeds of either kind reach both parsers.
#![no_main]

use coffer_image::manifest::{ImageConfig, LayerKind, ManifestDoc, select_linux_amd64};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ManifestDoc::parse(data) {
        Ok(ManifestDoc::Index(entries)) => {
            let _ = select_linux_amd64(&entries);
        }
        Ok(ManifestDoc::Image(manifest)) => {
            for layer in &manifest.layers {
                let _ = LayerKind::of(&layer.media_type);
            }
            let _ = ImageConfig::parse(data, manifest.layers.len());
        }
        Err(_) => {}
    }
    if let Ok(config) = ImageConfig::parse(data, 1) {
        assert_eq!(config.rootfs.diff_ids.len(), 1);
    }
});
