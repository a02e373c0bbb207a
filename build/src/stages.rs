//! What a build runs: the stages its target needs, each stage's base, and the arguments and
//! environment in scope at each instruction, with docker's scoping rules:
//! - an `ARG` before the first `FROM` is global: it is seen by `FROM` lines only, until a stage
//!   declares it again (without a default, it takes the global value);
//! - `--build-arg` overrides a declared argument's default; one no `ARG` declares is unused
//!   (docker warns, and so does dcpp);
//! - `ENV` wins over an `ARG` of the same name, and variables in an `ENV` line are those from
//!   before it;
//! - the platform arguments (`TARGETPLATFORM`, `BUILDARCH`, …) are global without a declaration.

use std::collections::{BTreeMap, BTreeSet};

use crate::words::{self, Lookup};
use crate::{Dockerfile, Error, Instruction, Kind};

/// Arguments docker lets through to `RUN` without a declaration, and never reports unused.
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The platform this node builds for, as docker names it (`linux/amd64`).
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    format!("linux/{arch}")
}

fn platform_args() -> BTreeMap<String, String> {
    let p = host_platform();
    let arch = p.trim_start_matches("linux/").to_string();
    let mut m = BTreeMap::new();
    for side in ["TARGET", "BUILD"] {
        m.insert(format!("{side}PLATFORM"), p.clone());
        m.insert(format!("{side}OS"), "linux".into());
        m.insert(format!("{side}ARCH"), arch.clone());
        m.insert(format!("{side}VARIANT"), String::new());
    }
    m
}

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    /// An earlier stage (its index in the Dockerfile).
    Stage(usize),
    /// An image reference, arguments expanded.
    Image(String),
}

/// One stage of the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRef {
    /// Its index among the Dockerfile's stages (what `--from=0` names).
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    /// Line of its `FROM`.
    pub line: usize,
    /// The instructions after its `FROM`.
    pub instructions: Vec<Instruction>,
}

/// The build of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The stages the target needs, in Dockerfile order; the target is the last.
    pub stages: Vec<StageRef>,
    /// `--build-arg` names no `ARG` declares (docker: "were not consumed").
    pub unused_args: Vec<String>,
    escape: char,
    globals: BTreeMap<String, Option<String>>,
    build_args: BTreeMap<String, String>,
}

/// Resolves the stages `target` (a stage name, or the last stage) needs.
pub fn plan(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
) -> Result<Plan, Error> {
    let escape = df.escape;
    // Globals: in order, each default expanded with the globals before it.
    let mut globals: BTreeMap<String, Option<String>> = platform_args()
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let mut all: Vec<StageRef> = Vec::new();
    for i in &df.instructions {
        match (&i.kind, all.last_mut()) {
            (Kind::Arg(args), None) => {
                for (name, default) in args {
                    declared.insert(name.clone());
                    let value = match build_args.get(name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(
                                words::expand(d, escape, &GlobalLookup(&globals))
                                    .map_err(|e| e.on_line(i.line))?,
                            ),
                            None => None,
                        },
                    };
                    globals.insert(name.clone(), value);
                }
            }
            (
                Kind::From {
                    image,
                    alias,
                    platform,
                },
                _,
            ) => {
                let g = GlobalLookup(&globals);
                if let Some(p) = platform {
                    let p = words::expand(p, escape, &g).map_err(|e| e.on_line(i.line))?;
                    if p != host_platform() {
                        return Err(Error::at(
                            i.line,
                            format!(
                                "FROM --platform={p}: this node builds for {} only",
                                host_platform()
                            ),
                        ));
                    }
                }
                let image = words::expand(image, escape, &g).map_err(|e| e.on_line(i.line))?;
                if image.is_empty() {
                    return Err(Error::at(i.line, "FROM: the image name is empty"));
                }
                let base = if image.eq_ignore_ascii_case("scratch") {
                    Base::Scratch
                } else if let Some(s) = all
                    .iter()
                    .find(|s| s.name.as_deref() == Some(image.to_ascii_lowercase().as_str()))
                {
                    Base::Stage(s.index)
                } else {
                    Base::Image(image)
                };
                if let Some(a) = alias
                    && all.iter().any(|s| s.name.as_deref() == Some(a.as_str()))
                {
                    return Err(Error::at(
                        i.line,
                        format!("duplicate name for build stage: {a}"),
                    ));
                }
                all.push(StageRef {
                    index: all.len(),
                    name: alias.clone(),
                    base,
                    line: i.line,
                    instructions: Vec::new(),
                });
            }
            (_, None) => {}
            (k, Some(stage)) => {
                if let Kind::Arg(args) = k {
                    declared.extend(args.iter().map(|(n, _)| n.clone()));
                }
                stage.instructions.push(i.clone());
            }
        }
    }
    let target_at = match target {
        None => all.len().saturating_sub(1),
        Some(t) => all
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().filter_map(|s| s.name.as_deref()).collect();
                Error::Plan(format!(
                    "target stage {t:?} could not be found (stages: {})",
                    if names.is_empty() {
                        "none named".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?,
    };
    let mut needed = BTreeSet::new();
    let mut todo = vec![target_at];
    while let Some(s) = todo.pop() {
        if !needed.insert(s) {
            continue;
        }
        let st = &all[s];
        if let Base::Stage(b) = st.base {
            todo.push(b);
        }
        for i in &st.instructions {
            if let Kind::Copy(c) = &i.kind
                && let Some(from) = &c.from
            {
                let from = words::expand(from, escape, &GlobalLookup(&globals))
                    .map_err(|e| e.on_line(i.line))?;
                if let Some(dep) = stage_named(&all[..s], &from) {
                    todo.push(dep);
                } else if from.parse::<usize>().is_ok() {
                    return Err(Error::at(
                        i.line,
                        format!("COPY --from={from}: no earlier stage has that index"),
                    ));
                }
            }
        }
    }
    let unused_args = build_args
        .keys()
        .filter(|k| !declared.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(Plan {
        stages: all
            .into_iter()
            .filter(|s| needed.contains(&s.index))
            .collect(),
        unused_args,
        escape,
        globals,
        build_args: build_args.clone(),
    })
}

/// Whether `--from=VALUE` (or a `FROM` image) names stage `s`, by index or by name (stage
/// names are case-insensitive).
fn names(s: &StageRef, from: &str) -> bool {
    match from.parse::<usize>() {
        Ok(n) => s.index == n,
        Err(_) => s
            .name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(from)),
    }
}

/// An earlier stage by name or by index.
fn stage_named(earlier: &[StageRef], from: &str) -> Option<usize> {
    earlier.iter().find(|s| names(s, from)).map(|s| s.index)
}

struct GlobalLookup<'a>(&'a BTreeMap<String, Option<String>>);

impl Lookup for GlobalLookup<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned().flatten()
    }
}

impl Plan {
    /// The stage `--from=VALUE` names (expanded), if it is one of this build's.
    pub fn stage_for(&self, from: &str) -> Option<&StageRef> {
        self.stages.iter().find(|s| names(s, from))
    }

    /// The scope at the start of a stage whose base image sets `base_env` (`KEY=value`).
    pub fn scope(&self, base_env: &[String]) -> Scope<'_> {
        Scope {
            plan: self,
            args: BTreeMap::new(),
            env: base_env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                .collect(),
        }
    }
}

/// The arguments and environment at one point of a stage.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    plan: &'a Plan,
    /// Declared arguments, `None` when declared without a value.
    args: BTreeMap<String, Option<String>>,
    /// The image's environment, in order.
    env: Vec<(String, String)>,
}

impl Lookup for Scope<'_> {
    fn get(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.env.iter().rev().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.args.get(name).cloned().flatten()
    }
}

impl Scope<'_> {
    /// One word of an instruction docker substitutes in, expanded here.
    pub fn expand(&self, raw: &str) -> Result<String, Error> {
        words::expand(raw, self.plan.escape, self)
    }

    /// Words split on unquoted spaces, each expanded.
    pub fn split(&self, raw: &str) -> Result<Vec<String>, Error> {
        words::split(raw, self.plan.escape, self)
    }

    /// Takes in an `ARG` or `ENV` instruction (others change no scope).
    pub fn step(&mut self, i: &Instruction) -> Result<(), Error> {
        match &i.kind {
            Kind::Arg(args) => {
                for (name, default) in args {
                    let value = match (self.plan.build_args.get(name), default) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(d)) => Some(self.expand(d).map_err(|e| e.on_line(i.line))?),
                        (None, None) => self.plan.globals.get(name).cloned().flatten(),
                    };
                    self.args.insert(name.clone(), value);
                }
            }
            Kind::Env(pairs) => {
                // Every pair sees the variables from before the line.
                let mut set = Vec::new();
                for (k, v) in pairs {
                    let k = self.expand(k).map_err(|e| e.on_line(i.line))?;
                    let v = self.expand(v).map_err(|e| e.on_line(i.line))?;
                    if k.is_empty() {
                        return Err(Error::at(i.line, "ENV names can not be blank"));
                    }
                    set.push((k, v));
                }
                for (k, v) in set {
                    self.env.retain(|(e, _)| *e != k);
                    self.env.push((k, v));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The image's environment as `KEY=value` (what the image config records).
    pub fn image_env(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// The environment of a `RUN`: the image's, plus the arguments in scope (and the proxy
    /// arguments given), which do not stay in the image.
    pub fn run_env(&self) -> Vec<String> {
        let mut out = self.image_env();
        let in_env = |k: &str| self.env.iter().any(|(e, _)| e == k);
        for (k, v) in &self.args {
            if let Some(v) = v
                && !in_env(k)
            {
                out.push(format!("{k}={v}"));
            }
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.plan.build_args.get(*p)
                && !in_env(p)
                && !self.args.contains_key(*p)
            {
                out.push(format!("{p}={v}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn args(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn global_arguments_reach_from_and_a_stage_only_when_declared_again() {
        let df = parse(
            "ARG TAG=1.36\nARG BASE=busybox:${TAG}\nFROM ${BASE} AS one\nARG TAG\nARG OTHER=x${TAG}\nENV TAG=env-wins\nRUN true\nFROM one\nRUN true\n",
        )
        .unwrap();
        let p = plan(&df, &args(&[("TAG", "2"), ("UNUSED", "z")]), None).unwrap();
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[0].base, Base::Image("busybox:2".into()));
        assert_eq!(
            p.stages[1].base,
            Base::Stage(0),
            "a stage name is not an image"
        );
        assert_eq!(p.unused_args, ["UNUSED"]);

        let mut s = p.scope(&["PATH=/bin".into()]);
        assert_eq!(
            s.expand("$TAG").unwrap(),
            "",
            "a global is not seen before ARG"
        );
        for i in &p.stages[0].instructions {
            s.step(i).unwrap();
            if let Kind::Arg(a) = &i.kind
                && a[0].0 == "OTHER"
            {
                assert_eq!(s.expand("$OTHER").unwrap(), "x2");
            }
        }
        assert_eq!(s.expand("$TAG").unwrap(), "env-wins", "ENV wins over ARG");
        assert_eq!(s.image_env(), ["PATH=/bin", "TAG=env-wins"]);
        assert_eq!(
            s.run_env(),
            ["PATH=/bin", "TAG=env-wins", "OTHER=x2"],
            "arguments reach RUN but not the image"
        );
        // The second stage starts again: arguments are per stage.
        let s2 = p.scope(&[]);
        assert_eq!(s2.expand("${OTHER:-unset}").unwrap(), "unset");
    }

    #[test]
    fn env_pairs_see_the_values_from_before_their_line() {
        let df = parse("FROM a\nENV A=1\nENV A=2 B=$A\nENV C=\"$A $B\" D='$A'\n").unwrap();
        let p = plan(&df, &BTreeMap::new(), None).unwrap();
        let mut s = p.scope(&[]);
        for i in &p.stages[0].instructions {
            s.step(i).unwrap();
        }
        assert_eq!(s.image_env(), ["A=2", "B=1", "C=2 1", "D=$A"]);
    }

    #[test]
    fn a_target_builds_only_the_stages_it_needs() {
        let df = parse(
            "FROM busybox AS deps\nRUN true\nFROM busybox AS unused\nRUN false\nFROM scratch AS app\nCOPY --from=deps /a /a\nCOPY --from=0 /b /b\nCOPY --from=other/image:1 /c /c\nFROM app AS test\n",
        )
        .unwrap();
        let p = plan(&df, &BTreeMap::new(), Some("APP")).unwrap();
        let names: Vec<_> = p.stages.iter().map(|s| s.name.clone().unwrap()).collect();
        assert_eq!(names, ["deps", "app"]);
        assert_eq!(p.stages[1].base, Base::Scratch);
        assert_eq!(p.stage_for("0").map(|s| s.index), Some(0));
        assert!(
            p.stage_for("other/image:1").is_none(),
            "an image, not a stage"
        );
        let all = plan(&df, &BTreeMap::new(), None).unwrap();
        assert_eq!(
            all.stages.len(),
            3,
            "test needs app needs deps; unused is left out"
        );
        assert_eq!(
            plan(&df, &BTreeMap::new(), Some("nope"))
                .unwrap_err()
                .to_string(),
            "target stage \"nope\" could not be found (stages: deps, unused, app, test)"
        );
    }

    #[test]
    fn platform_arguments_and_the_platform_check() {
        let host = host_platform();
        let df = parse(&format!(
            "FROM --platform=$BUILDPLATFORM busybox AS b\nARG TARGETARCH\nRUN true\nFROM --platform={host} b\n"
        ))
        .unwrap();
        let p = plan(&df, &BTreeMap::new(), None).unwrap();
        let mut s = p.scope(&[]);
        s.step(&p.stages[0].instructions[0]).unwrap();
        assert_eq!(
            s.expand("$TARGETARCH").unwrap(),
            host.trim_start_matches("linux/")
        );
        let df = parse("FROM --platform=linux/s390x-nope busybox\n").unwrap();
        assert_eq!(
            plan(&df, &BTreeMap::new(), None).unwrap_err().to_string(),
            format!(
                "Dockerfile:1: FROM --platform=linux/s390x-nope: this node builds for {host} only"
            )
        );
        let df = parse("FROM a AS x\nFROM b AS x\n").unwrap();
        assert_eq!(
            plan(&df, &BTreeMap::new(), None).unwrap_err().to_string(),
            "Dockerfile:2: duplicate name for build stage: x"
        );
        let df = parse("FROM a\nCOPY --from=3 /a /a\n").unwrap();
        assert_eq!(
            plan(&df, &BTreeMap::new(), None).unwrap_err().to_string(),
            "Dockerfile:2: COPY --from=3: no earlier stage has that index"
        );
    }

    #[test]
    fn proxy_arguments_pass_to_run_without_a_declaration_and_are_never_unused() {
        let df = parse("FROM a\nRUN true\n").unwrap();
        let p = plan(&df, &args(&[("HTTP_PROXY", "http://127.0.0.1:3128")]), None).unwrap();
        assert!(p.unused_args.is_empty());
        assert_eq!(p.scope(&[]).run_env(), ["HTTP_PROXY=http://127.0.0.1:3128"]);
    }
}
