//! Load + interpolate + normalise a generated 1000-service compose file (goal: < 50 ms).

use std::collections::BTreeMap;
use std::fmt::Write;

use criterion::{Criterion, criterion_group, criterion_main};
use dcpp_spec::{LoadOptions, load};

fn generate(n: usize) -> String {
    let mut s = String::from(
        "name: bench\nx-common: &common\n  restart: unless-stopped\n  labels:\n    team: bench\nservices:\n",
    );
    for i in 0..n {
        let dep = if i > 0 {
            format!(
                "    depends_on:\n      svc{}:\n        condition: service_started\n",
                i - 1
            )
        } else {
            String::new()
        };
        write!(
            s,
            "  svc{i}:\n    <<: *common\n    image: registry.local/app:${{TAG:-1.0}}\n    command: serve --port {port} --name svc{i}\n    environment:\n      - INDEX={i}\n      - HOME\n      - REGION=${{REGION}}\n    ports:\n      - \"{port}:8080\"\n      - \"127.0.0.1:{admin}:9090/udp\"\n    volumes:\n      - data:/data/svc{i}\n      - ./conf/svc{i}:/etc/app:ro\n    healthcheck:\n      test: curl -f http://localhost:8080/health\n      interval: 30s\n      timeout: 5s\n      retries: 3\n    deploy:\n      replicas: 2\n      resources:\n        limits: {{cpus: \"0.5\", memory: 256M}}\n      update_config: {{parallelism: 1, delay: 10s, order: start-first}}\n{dep}",
            port = 10000 + i,
            admin = 30000 + i,
        )
        .expect("write to string");
    }
    s.push_str("volumes:\n  data:\n");
    s
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, generate(1000)).expect("write");
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
