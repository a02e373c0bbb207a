//! `dcpp diff` and `apply --dry-run` through the real binary on a real daemon: the planner's
//! actions with their reasons for a scale change, an image change, a constraint nobody
//! satisfies and a removed service, asserted exactly; and neither writes anything.

mod rig;
#[path = "rig/slot.rs"]
mod slot;
use rig::*;

fn stack(web_image: &str, worker: u32, with_api: bool, with_old: bool) -> String {
    let mut y = format!(
        "name: df\nservices:\n  web:\n    image: {web_image}\n    command: [\"sleep\", \"3600\"]\n    deploy: {{ replicas: 2 }}\n  worker:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    deploy: {{ replicas: {worker} }}\n"
    );
    if with_api {
        y.push_str(&format!(
            "  api:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n    deploy:\n      placement:\n        constraints: [node.labels.disk==ssd]\n"
        ));
    }
    if with_old {
        y.push_str(&format!(
            "  old:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n"
        ));
    }
    y
}

#[test]
fn diff_prints_the_planned_actions_with_reasons() {
    let rig = Rig::new("df");
    let v2_image = "dcpp.local/busybox:diff2";
    rig.import_variant(v2_image, |root| {
        std::fs::write(root.join("www/index.html"), "v2\n").unwrap();
    });
    let v1 = rig.write("v1.yml", &stack(IMAGE, 5, false, true));
    let (code, _, err, _) = rig.run(&["apply", "-f", &v1, "--timeout", "60s"]);
    assert_eq!(code, Some(0), "{err}");
    let before = rig.containers();
    let nodes: serde_json::Value =
        serde_json::from_str(&rig.ok(&["node", "ls", "--format", "json"])).unwrap();
    let id = nodes[0]["id"].to_string();
    let host = nodes[0]["hostname"].as_str().unwrap().to_string();

    // Unchanged: exit 0, nothing planned.
    let (code, out, err, _) = rig.run(&["diff", "-f", &v1]);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");

    let v2 = rig.write("v2.yml", &stack(v2_image, 3, true, false));
    let (code, out, err, _) = rig.run(&["diff", "--prune", "-f", &v2]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        out,
        format!(
            "+ service api
~ service web: image
~ service worker: deploy.replicas
- service old
stop old.1: service old removed
pending api.1: no suitable node ({id}: constraint node.labels.disk==ssd not met)
replace web.1: image changed
stop worker.4: scale 5→3
stop worker.5: scale 5→3
replace web.2: image changed (when the rolling update reaches it)
"
        )
    );
    // Without --prune the removed service is kept, as apply keeps it.
    let (code, out, _, _) = rig.run(&["diff", "-f", &v2]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("- service old (kept; --prune removes it)") && !out.contains("old.1"),
        "{out}"
    );

    // apply --dry-run prints the same plan and changes nothing.
    let (code, out, err, _) = rig.run(&["apply", "--dry-run", "--prune", "-f", &v2]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("  stop worker.4: scale 5→3\n")
            && out.contains("  replace web.1: image changed\n"),
        "{out}"
    );
    assert_eq!(rig.containers(), before);
    let (code, _, _, _) = rig.run(&["diff", "-f", &v1]);
    assert_eq!(code, Some(0), "a dry run wrote something");

    // A scale-up places the new replicas.
    let v3 = rig.write("v3.yml", &stack(IMAGE, 6, false, true));
    let (code, out, _, _) = rig.run(&["diff", "-f", &v3]);
    assert_eq!(code, Some(2));
    assert_eq!(
        out,
        format!("~ service worker: deploy.replicas\ncreate worker.6 on {host}\n")
    );

    // Bad input: a clear error and exit 1.
    let bad = rig.write("bad.yml", "services:\n  web:\n    image: [\n");
    let (code, _, err, _) = rig.run(&["diff", "-f", &bad]);
    assert_eq!(code, Some(1), "{err}");
    rig.ok(&["down", "-p", "df"]);
}
