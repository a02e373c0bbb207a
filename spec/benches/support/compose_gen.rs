//! Generator of the benchmark compose file (shared by the bench and the timing example).

use std::fmt::Write;

/// A compose file with `n` services using anchors, interpolation, short syntaxes and a
/// depends_on chain.
pub fn compose(n: usize) -> String {
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
