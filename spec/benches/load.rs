//! Load + interpolate + normalise a generated 1000-service compose file (goal: < 50 ms).

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use dcpp_spec::{LoadOptions, load};

#[path = "support/compose_gen.rs"]
mod compose_gen;

fn bench(c: &mut Criterion) {
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
    let loaded = load(&opts).expect("bench file loads");
    assert_eq!(loaded.project.services.len(), 1000);
    c.bench_function("load_1000_services", |b| {
        b.iter(|| load(std::hint::black_box(&opts)).expect("load"))
    });
    // The floor: only the YAML event parser over the same text, no tree, no compose semantics.
    let text = std::fs::read_to_string(&opts.files[0]).expect("read");
    c.bench_function("yaml_events_only_1000_services", |b| {
        b.iter(|| {
            use serde_saphyr::granit_parser::Parser;
            let mut p = Parser::new_from_str(std::hint::black_box(&text));
            let mut n = 0usize;
            while let Some(ev) = p.next_event() {
                ev.expect("valid yaml");
                n += 1;
            }
            n
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
