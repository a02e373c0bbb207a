//! Compose's merge rules for `-f a.yml -f b.yml` and `extends`, on the positioned node tree.
//!
//! Maps merge key by key; `command`, `entrypoint` and `healthcheck.test` are replaced;
//! `environment`, `labels`, `sysctls`, `build.args`, `depends_on` and service `networks` merge
//! as maps whatever form (list or map) each side used; `extra_hosts` (list or map) and `dns*`
//! are appended without the items the base already has; `ipam.config` merges by subnet and
//! each `ulimits` entry is replaced; other lists (ports, volumes, secrets, …) are concatenated and
//! de-duplicated by their key during conversion; scalars are replaced.
//! The `!reset` tag drops the inherited value and `!override` replaces it wholesale.

use std::borrow::Cow;

use crate::yaml::{Entry, Kind, MergeTag, Node};

/// `whole[r]`, borrowed when `whole` is: text read from a file stays borrowed.
fn sub<'a>(whole: &Cow<'a, str>, r: std::ops::Range<usize>) -> Cow<'a, str> {
    match whole {
        Cow::Borrowed(w) => Cow::Borrowed(&w[r]),
        Cow::Owned(w) => Cow::Owned(w[r].to_owned()),
    }
}

/// Lists that are really maps: `KEY=VALUE` items (or bare names) become map entries.
pub(crate) fn list_to_map(node: Node<'_>, split_eq: bool) -> Node<'_> {
    list_to_map_ref(&node, split_eq).unwrap_or(node)
}

/// [`list_to_map`] without consuming the node: `None` when it is not a list. Conversion only
/// reads the tree, and copying a whole list first just to take it apart was measurable.
pub(crate) fn list_to_map_ref<'a>(node: &Node<'a>, split_eq: bool) -> Option<Node<'a>> {
    match &node.kind {
        Kind::Seq(items) => {
            let mut entries: Vec<Entry<'a>> = Vec::new();
            for item in items {
                let (key, value) = match &item.kind {
                    Kind::Scalar { value, .. } => match value.find('=') {
                        Some(i) if split_eq => (
                            sub(value, 0..i),
                            Node::str(item.pos, sub(value, i + 1..value.len())),
                        ),
                        _ => (value.clone(), Node::new(item.pos, Kind::Null)),
                    },
                    // Left for conversion to report with its position.
                    _ => (Cow::Borrowed(""), item.clone()),
                };
                if let Some(e) = entries.iter_mut().find(|e| e.key == key && !key.is_empty()) {
                    e.value = value;
                } else {
                    entries.push(Entry {
                        key,
                        key_pos: item.pos,
                        value,
                    });
                }
            }
            Some(Node {
                pos: node.pos,
                tag: node.tag,
                kind: Kind::Map(entries),
            })
        }
        _ => None,
    }
}

fn as_map_node(n: Node<'_>) -> Node<'_> {
    match n.kind {
        Kind::Null => Node {
            pos: n.pos,
            tag: n.tag,
            kind: Kind::Map(Vec::new()),
        },
        _ => n,
    }
}

/// Merges two maps entry by entry with `f(key, base, over)` for keys on both sides.
fn merge_maps<'a>(
    base: Node<'a>,
    over: Node<'a>,
    f: &dyn Fn(&str, Node<'a>, Node<'a>) -> Node<'a>,
) -> Node<'a> {
    let base = as_map_node(base);
    let over = as_map_node(over);
    let (Kind::Map(mut entries), Kind::Map(over_entries)) = (base.kind.clone(), over.kind.clone())
    else {
        return over;
    };
    for oe in over_entries {
        if oe.value.tag == Some(MergeTag::Reset) {
            entries.retain(|e| e.key != oe.key);
            continue;
        }
        match entries.iter().position(|e| e.key == oe.key) {
            Some(i) if oe.value.tag != Some(MergeTag::Override) => {
                let b =
                    std::mem::replace(&mut entries[i].value, Node::new(oe.value.pos, Kind::Null));
                entries[i].value = f(&oe.key, b, oe.value);
                entries[i].key_pos = oe.key_pos;
            }
            Some(i) => entries[i] = oe,
            None => entries.push(oe),
        }
    }
    Node {
        pos: over.pos,
        tag: None,
        kind: Kind::Map(entries),
    }
}

/// Deep merge: maps recursively, lists appended, anything else replaced.
pub(crate) fn deep<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    match (&base.kind, &over.kind) {
        (Kind::Map(_), Kind::Map(_)) => merge_maps(base, over, &|_, b, o| deep(b, o)),
        (Kind::Seq(a), Kind::Seq(b)) => {
            let mut items = a.clone();
            items.extend(b.iter().cloned());
            Node {
                pos: over.pos,
                tag: None,
                kind: Kind::Seq(items),
            }
        }
        _ => over,
    }
}

fn as_list(n: Node<'_>) -> Node<'_> {
    match n.kind {
        Kind::Scalar { .. } => Node {
            pos: n.pos,
            tag: n.tag,
            kind: Kind::Seq(vec![Node { tag: None, ..n }]),
        },
        _ => n,
    }
}

/// `extra_hosts` as a list of `host=ip` items whichever form it was written in, so a map and
/// a list merge (compose-go's mergeExtraHosts). A shape that is neither is left for conversion
/// to report.
fn hosts_as_list(n: Node<'_>) -> Node<'_> {
    let Kind::Map(entries) = &n.kind else {
        return n;
    };
    let mut items = Vec::new();
    for e in entries {
        match &e.value.kind {
            Kind::Null => items.push(Node::str(e.key_pos, format!("{}=", e.key))),
            Kind::Scalar { value, .. } => {
                items.push(Node::str(e.value.pos, format!("{}={value}", e.key)));
            }
            Kind::Seq(ips) if ips.iter().all(|ip| ip.scalar().is_some()) => {
                for ip in ips {
                    let ip_text = ip.scalar().unwrap_or_default();
                    items.push(Node::str(ip.pos, format!("{}={ip_text}", e.key)));
                }
            }
            _ => return n,
        }
    }
    Node {
        pos: n.pos,
        tag: n.tag,
        kind: Kind::Seq(items),
    }
}

/// Two lists as one: the base's items, then each override item the base does not already
/// hold, as compose merges `extra_hosts` and `dns*` (a host named in both files is written
/// once). Anything but two lists merges as [`deep`] does.
fn append_new<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    let (Kind::Seq(a), Kind::Seq(b)) = (&base.kind, &over.kind) else {
        return deep(base, over);
    };
    let mut items = a.clone();
    for item in b {
        let known = item
            .scalar()
            .is_some_and(|s| a.iter().any(|x| x.scalar() == Some(s)));
        if !known {
            items.push(item.clone());
        }
    }
    Node {
        pos: over.pos,
        tag: None,
        kind: Kind::Seq(items),
    }
}

fn merge_build<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    let norm = |n: Node<'a>| match n.kind {
        Kind::Scalar { .. } => Node::map(
            n.pos,
            vec![Entry {
                key: "context".into(),
                key_pos: n.pos,
                value: n,
            }],
        ),
        _ => n,
    };
    merge_maps(norm(base), norm(over), &|k, b, o| match k {
        "args" | "labels" => merge_maps(list_to_map(b, true), list_to_map(o, true), &|_, _, o| o),
        _ => deep(b, o),
    })
}

/// Merges one service definition over another.
pub(crate) fn merge_service<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    merge_maps(base, over, &|key, b, o| match key {
        "command" | "entrypoint" => o,
        "environment" | "labels" | "sysctls" | "annotations" => {
            merge_maps(list_to_map(b, true), list_to_map(o, true), &|_, _, o| o)
        }
        "depends_on" | "networks" => {
            merge_maps(list_to_map(b, false), list_to_map(o, false), &|_, b, o| {
                deep(b, o)
            })
        }
        "build" => merge_build(b, o),
        "healthcheck" => merge_maps(b, o, &|k, b, o| if k == "test" { o } else { deep(b, o) }),
        // Each limit is replaced whole, as compose does (`nofile: 3` over `{soft, hard}`).
        "ulimits" => merge_maps(b, o, &|_, _, o| o),
        "logging" => {
            let driver = |n: &Node| n.get("driver").and_then(|d| d.scalar()).map(str::to_owned);
            match (driver(&b), driver(&o)) {
                (Some(x), Some(y)) if x != y => o,
                _ => deep(b, o),
            }
        }
        "deploy" => merge_maps(b, o, &|k, b, o| match k {
            "labels" => merge_maps(list_to_map(b, true), list_to_map(o, true), &|_, _, o| o),
            _ => deep(b, o),
        }),
        "extra_hosts" => append_new(hosts_as_list(b), hosts_as_list(o)),
        "dns" | "dns_opt" | "dns_search" => append_new(as_list(b), as_list(o)),
        "env_file" | "tmpfs" | "expose" | "cap_add" | "cap_drop" | "profiles" | "label_file" => {
            deep(as_list(b), as_list(o))
        }
        _ => deep(b, o),
    })
}

pub(crate) fn merge_resource<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    merge_maps(base, over, &|k, b, o| match k {
        "labels" | "driver_opts" => {
            merge_maps(list_to_map(b, true), list_to_map(o, true), &|_, _, o| o)
        }
        "ipam" => merge_maps(b, o, &|k, b, o| match k {
            "config" => merge_by_subnet(b, o),
            _ => deep(b, o),
        }),
        _ => deep(b, o),
    })
}

/// `ipam.config` entries merge by `subnet`; entries with a new subnet are appended.
fn merge_by_subnet<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    let (Kind::Seq(mut items), Kind::Seq(over_items)) = (base.kind, over.kind.clone()) else {
        return over;
    };
    let subnet = |n: &Node<'_>| n.get("subnet").and_then(Node::scalar).map(str::to_owned);
    for oi in over_items {
        let key = subnet(&oi);
        match items.iter().position(|b| key.is_some() && subnet(b) == key) {
            Some(i) => {
                let b = std::mem::replace(&mut items[i], Node::new(oi.pos, Kind::Null));
                items[i] = deep(b, oi);
            }
            None => items.push(oi),
        }
    }
    Node {
        pos: over.pos,
        tag: None,
        kind: Kind::Seq(items),
    }
}

/// Merges a whole compose file over the result of the earlier files.
pub(crate) fn merge_files<'a>(base: Node<'a>, over: Node<'a>) -> Node<'a> {
    merge_maps(base, over, &|k, b, o| match k {
        "services" => merge_maps(b, o, &|_, b, o| merge_service(b, o)),
        "networks" | "volumes" | "configs" | "secrets" => {
            merge_maps(b, o, &|_, b, o| merge_resource(b, o))
        }
        // Extensions merge like any other YAML: maps key by key, lists appended.
        k if k.starts_with("x-") => deep(b, o),
        _ => o,
    })
}
