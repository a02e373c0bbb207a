//! `image_pull DATA_DIR REFERENCE [--no-unpack]`: pull into `DATA_DIR/images` through the
//! library, without the rest of the `dcpp` binary. bench/image-pull.sh uses it (DCPP_LIB=1)
//! to measure the pull path alone and, with `--no-unpack`, download + verify only (what
//! `skopeo copy … oci:` does).

use std::path::PathBuf;

use dcpp_runtime::image::ImageStore;
use dcpp_runtime::image::registry::{PullOptions, RegistryClient, RegistryOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(reference)) = (args.first(), args.get(1)) else {
        eprintln!("usage: image_pull DATA_DIR REFERENCE [--no-unpack]");
        std::process::exit(2);
    };
    let unpack = !args.iter().any(|a| a == "--no-unpack");
    let store = ImageStore::open(&PathBuf::from(dir).join("images")).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let client = RegistryClient::new(store, RegistryOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let opts = PullOptions {
        unpack,
        ..Default::default()
    };
    match rt.block_on(client.pull_with(reference, opts)) {
        Ok(img) => println!("{reference}: pulled {}", img.id),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}
