//! `ImageStore::resolve` cost with a handful of images, the way its callers use it: the node
//! agent opens the store per container it creates, `dcpp container run` once per process.
//! The first call in a fresh process is measured by `bench/image-resolve.sh` (hyperfine).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dcpp_runtime::image::ImageStore;

fn setup() -> (tempfile::TempDir, ImageStore, String) {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    let mut id = String::new();
    for i in 0..8 {
        std::fs::write(rootfs.join("etc/which"), format!("image {i}\n")).unwrap();
        let img = store
            .import_rootfs(&rootfs, &format!("127.0.0.1:5000/bench/app{i}:v{i}"))
            .unwrap();
        id = img.id.to_string();
    }
    (tmp, store, id)
}

fn bench(c: &mut Criterion) {
    let (tmp, store, id) = setup();
    let root = tmp.path().join("images");
    c.bench_function("resolve tag (same handle)", |b| {
        b.iter(|| black_box(store.resolve("127.0.0.1:5000/bench/app3:v3").unwrap()))
    });
    c.bench_function("open + resolve tag", |b| {
        b.iter(|| {
            let s = ImageStore::open(&root).unwrap();
            black_box(s.resolve("127.0.0.1:5000/bench/app3:v3").unwrap())
        })
    });
    c.bench_function("resolve id prefix", |b| {
        b.iter(|| black_box(store.resolve(&id["sha256:".len()..][..12]).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
