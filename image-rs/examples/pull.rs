//! Pulls one image with the library, the same call `coffer image pull` makes (used by
//! `bench/pull-bench.sh`, which so need not build the whole CLI in release):
//! `pull REF DEST [--store DIR] [--insecure HOST]… [--key PEM]…`.

use std::error::Error;
use std::path::PathBuf;

use coffer_image::{BlobStore, Decryptor, PrivateKey, PullOptions, RegistriesConfig, pull};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pull REF DEST [--store DIR] [--insecure HOST]... [--key PEM]...";
    let reference = args.next().ok_or(usage)?;
    let dest = PathBuf::from(args.next().ok_or(usage)?);
    let mut store = dest.with_extension("store");
    let mut registries = RegistriesConfig::default();
    let mut decryptor = Decryptor::default();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--store" => store = PathBuf::from(value),
            "--insecure" => registries.add_insecure(&value)?,
            "--key" => {
                decryptor = decryptor.with_private_key(PrivateKey::from_file(value.as_ref())?)
            }
            _ => return Err(usage.into()),
        }
    }
    let mut options = PullOptions::new(BlobStore::open(&store)?).with_registries(registries);
    options.decryptor = decryptor;
    let started = std::time::Instant::now();
    let image = pull(&reference, &dest, &options).await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })?;
    println!(
        "{} {} layers in {:.2}s",
        image.manifest_digest,
        image.layers.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
