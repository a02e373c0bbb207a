//! The main end-to-end test with real busybox containers (run as root): the container executor
//! calls the network layer through its hook; two replicas of `web` behind one published port, a
//! client on the same network reaching them by IP and by service name, a container on another
//! network that cannot, and a host left as it was.

mod container_util;
mod network_util;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dcpp_runtime::container::{
    ContainerManager, CreateOptions, ImageInput, ManagerOptions, MountRequest, MountSource,
    RuntimeKind,
};
use dcpp_runtime::network::{
    ContainerNetworks, ContainerPlan, NetworkConfig, NetworkManager, PlannedNetwork, PortMapping,
    Protocol,
};
use network_util::{DestroyOnDrop, curl, free_port, host_snapshot, options};

struct Rig {
    net: Arc<NetworkManager>,
    hook: Arc<ContainerNetworks>,
    ctr: ContainerManager,
    layer: std::path::PathBuf,
}

impl Rig {
    fn image(&self) -> ImageInput {
        let config: oci_spec::image::Config =
            serde_json::from_value(serde_json::json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}))
                .unwrap();
        ImageInput {
            reference: "busybox:test".into(),
            layer_dirs: vec![self.layer.clone()],
            config: Some(config),
        }
    }

    /// Creates and starts `name` on `network`, with the resolver in its /etc/resolv.conf.
    fn start(
        &self,
        name: &str,
        service: &str,
        network: &str,
        ports: Vec<PortMapping>,
        script: &str,
    ) -> String {
        self.hook.plan(
            name,
            ContainerPlan {
                service: Some(service.into()),
                networks: vec![PlannedNetwork {
                    network: network.into(),
                    ..Default::default()
                }],
                ports,
                withdrawn: false,
                dns: Vec::new(),
            },
        );
        let resolv = self.net.write_resolv_conf(name, &[network]).unwrap();
        let mut o = CreateOptions::new(self.image());
        o.name = Some(name.into());
        o.command = Some(vec!["sh".into(), "-c".into(), script.into()]);
        o.mounts.push(MountRequest {
            source: MountSource::Bind(resolv),
            target: "/etc/resolv.conf".into(),
            read_only: true,
        });
        let c = self.ctr.create(&o).expect("create");
        self.ctr.start(&c.state.id).expect("start");
        c.state.id
    }

    /// Runs a one-shot container and returns its exit code and output.
    fn run(&self, name: &str, network: &str, script: &str) -> (i32, String) {
        let id = self.start(name, name, network, vec![], script);
        let exit = self
            .ctr
            .wait(&id, Some(Duration::from_secs(60)))
            .unwrap()
            .expect("exited");
        let out: String = self
            .ctr
            .logs(&id)
            .unwrap()
            .into_iter()
            .map(|e| e.log)
            .collect();
        self.ctr.remove(&id, true).unwrap();
        (exit.exit_code, out)
    }
}

#[test]
fn busybox_containers_by_ip_service_name_and_published_port() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tag, pool, hint) = ("dtct", "10.235.0.0/16", "10.235.");
    let tmp = tempfile::Builder::new()
        .prefix("dcpp-netct-")
        .tempdir()
        .unwrap();
    let opts = options(
        &tmp.path().join("data"),
        tag,
        pool,
        Some(vec!["127.0.0.1:9".parse().unwrap()]),
    );
    let before = host_snapshot(tag, &opts.nft_table, hint);
    {
        let _teardown = DestroyOnDrop(opts.clone());
        let net = Arc::new({
            let _g = rt.enter();
            NetworkManager::open(opts.clone()).unwrap()
        });
        let hook = Arc::new(ContainerNetworks::new(net.clone()));
        let layer = tmp.path().join("layer");
        container_util::busybox_layer(&layer);
        let cgroup_parent = format!(
            "dcpp-test-{}",
            tmp.path().file_name().unwrap().to_string_lossy()
        );
        let ctr = ContainerManager::open(ManagerOptions {
            data_dir: tmp.path().join("data"),
            cgroup_parent,
            runtime: RuntimeKind::Builtin,
            shim: container_util::shim(),
            network_hook: Some(hook.clone()),
        })
        .unwrap();
        let rig = Rig {
            net,
            hook,
            ctr,
            layer,
        };
        let app = rig
            .net
            .create_network("proj_app", NetworkConfig::default())
            .unwrap();
        rig.net
            .create_network("proj_other", NetworkConfig::default())
            .unwrap();

        let port = free_port();
        let publish = vec![PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: port,
            container_port: 80,
            protocol: Protocol::Tcp,
        }];
        let serve = |body: &str| {
            format!(
                "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"
            )
        };
        let w1 = rig.start(
            "proj-web-1",
            "web",
            "proj_app",
            publish.clone(),
            &serve("web1"),
        );
        let w2 = rig.start(
            "proj-web-2",
            "web",
            "proj_app",
            publish.clone(),
            &serve("web2"),
        );
        let ip1 = rig.hook.attachments(&w1)[0].ip;
        assert!(app.subnet.contains(ip1));
        std::thread::sleep(Duration::from_millis(300));

        // Same network: by IP, by service name (over repeated lookups both replicas answer).
        let script = format!(
            "wget -q -O - http://{ip1}/ && for i in 1 2 3 4 5 6; do wget -q -O - http://web/; done && nslookup web"
        );
        let (code, out) = rig.run("proj-client-1", "proj_app", &script);
        assert_eq!(code, 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "web1", "{out}");
        let seen: BTreeSet<&str> = lines[1..7].iter().copied().collect();
        assert_eq!(seen, BTreeSet::from(["web1", "web2"]), "{out}");
        let ip2 = rig.hook.attachments(&w2)[0].ip;
        assert!(
            out.contains(&ip1.to_string()) && out.contains(&ip2.to_string()),
            "{out}"
        );

        // Another network: the address is unreachable and the name unknown.
        let (code, out) = rig.run(
            "proj-other-1",
            "proj_other",
            &format!("timeout 3 wget -q -O - http://{ip1}/; echo rc=$?; nslookup proj-web-1 || echo nxdomain"),
        );
        assert_eq!(code, 0, "{out}");
        assert!(
            !out.contains("web1") && out.contains("rc="),
            "isolation: {out}"
        );
        assert!(
            !out.contains(&ip1.to_string()),
            "names stay in their network: {out}"
        );

        // Published port from the host, spread over both replicas.
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            seen.insert(
                curl(&format!("http://127.0.0.1:{port}/"))
                    .unwrap()
                    .trim()
                    .to_owned(),
            );
        }
        assert_eq!(seen, BTreeSet::from(["web1".to_owned(), "web2".to_owned()]));

        // A third service asking for the same port fails the create with a clear error.
        rig.hook.plan(
            "proj-api-1",
            ContainerPlan {
                service: Some("api".into()),
                networks: vec![PlannedNetwork {
                    network: "proj_app".into(),
                    ..Default::default()
                }],
                ports: publish.clone(),
                withdrawn: false,
                dns: Vec::new(),
            },
        );
        let mut o = CreateOptions::new(rig.image());
        o.name = Some("proj-api-1".into());
        o.command = Some(vec!["sleep".into(), "60".into()]);
        let err = rig.ctr.create(&o).unwrap_err().to_string();
        assert!(
            err.contains(&format!("host port {port}/tcp is already in use")),
            "{err}"
        );
        if let Ok(c) = rig.ctr.resolve("proj-api-1") {
            rig.ctr.remove(&c.id, true).unwrap();
        }

        for id in [w1, w2] {
            rig.ctr.remove(&id, true).unwrap();
        }
        assert!(
            rig.net.inspect("proj_app").unwrap().endpoints.is_empty(),
            "removal detaches"
        );
        rig.ctr.remove_cgroup_parent();
    }
    assert_eq!(
        before,
        host_snapshot(tag, &opts.nft_table, hint),
        "left behind"
    );
}
