//! Loads a generated 1000-service compose file N times (default 50) and prints the mean wall
//! time per load. Run under `perf stat -e task-clock` to get CPU time per load on a busy machine:
//! `cargo run --release -p dcpp-spec --example load_timing -- 50`.

use std::collections::BTreeMap;

use dcpp_spec::{LoadOptions, load};

#[path = "../benches/support/compose_gen.rs"]
mod compose_gen;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, compose_gen::compose(1000)).expect("write");
    let opts = LoadOptions {
        files: vec![file],
        working_dir: dir.path().to_path_buf(),
        environment: BTreeMap::from([
            ("HOME".to_owned(), "/root".to_owned()),
            ("REGION".to_owned(), "eu".to_owned()),
        ]),
        ..LoadOptions::default()
    };
    let start = std::time::Instant::now();
    for _ in 0..n {
        let loaded = load(&opts).expect("load");
        assert_eq!(loaded.project.services.len(), 1000);
    }
    println!(
        "{n} loads, mean {:.1} ms wall per load",
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
}
