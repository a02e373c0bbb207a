//! The rules for compose's `build:` that `dcpp apply` and GitOps watch share: the name of a
//! built image, when it is built, how it reaches the nodes of a cluster, and the pinning of
//! the service to the built manifest. The building itself is the binary's (the control
//! plane does not depend on the runtime): [`ImageBuilder`] is what watch asks of it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dcpp_spec::{Project, Service};

/// Whether a reference names its registry host, as docker tells one (`host.tld/…`,
/// `host:port/…`, `localhost/…`): only such an image can reach other nodes.
pub fn names_registry(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

/// How a built image reaches the nodes that run its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One node: the image is where it was built.
    Local,
    /// Pushed to the registry `image:` names; every agent pulls it as any image.
    Push,
    /// It cannot reach the other nodes: why.
    Refused(String),
}

/// The delivery of service `service`'s built `image` on a cluster of `nodes`. A registry
/// rather than node-to-node transfer: agents already pull (with credentials, digests checked,
/// a layer fetched once per node), and a node that joins later or replaces a task finds it
/// there without the building node being up.
pub fn delivery(service: &str, image: &str, nodes: usize) -> Delivery {
    if nodes <= 1 {
        Delivery::Local
    } else if names_registry(image) {
        Delivery::Push
    } else {
        Delivery::Refused(format!(
            "service {service}: the cluster has {nodes} nodes and a built image exists only on \
             the node that builds it; name a registry in `image:` (e.g. \
             image: 127.0.0.1:5000/{image}) for apply to push it there, so that every node \
             pulls it"
        ))
    }
}

/// The name of service `name`'s image: `image:`, else `<project>-<service>` as compose does.
pub fn image_name(project: &Project, name: &str, svc: &Service) -> String {
    svc.image_name(&project.name, name)
        .unwrap_or_else(|| format!("{}-{name}", project.name))
}

/// One build, as the binary's builder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The service's image name: the first tag.
    pub image: String,
    pub context: PathBuf,
    /// Relative to the context unless absolute.
    pub dockerfile: Option<PathBuf>,
    /// `image` and then `build.tags`.
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub labels: BTreeMap<String, String>,
}

/// What a service with `build:` needs before it can be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStep {
    /// The image is here and `pull_policy` is not `build`: pin it to this manifest digest.
    Use { image: String, digest: String },
    /// Build it.
    Build(BuildSpec),
}

/// A `build:` that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "service {service}: build context {context}: dcpp builds from a local directory only \
         (it fetches nothing from the network)"
    )]
    RemoteContext { service: String, context: String },
}

/// Compose's rule for service `name`: built when `pull_policy` is `build` or when its image
/// is not `present` (the manifest digest of the image of that name in this node's store).
pub fn build_step(
    project: &Project,
    name: &str,
    present: Option<&str>,
) -> Result<Option<BuildStep>, Refused> {
    let Some(svc) = project.services.get(name) else {
        return Ok(None);
    };
    let Some(build) = &svc.build else {
        return Ok(None);
    };
    let image = image_name(project, name, svc);
    let always = svc.pull_policy.as_deref() == Some("build");
    if let Some(d) = present
        && !always
    {
        return Ok(Some(BuildStep::Use {
            image,
            digest: d.to_string(),
        }));
    }
    if dcpp_spec::is_remote_context(&build.context) {
        return Err(Refused::RemoteContext {
            service: name.to_string(),
            context: build.context.clone(),
        });
    }
    let mut tags = vec![image.clone()];
    tags.extend(build.tags.iter().cloned());
    Ok(Some(BuildStep::Build(BuildSpec {
        image,
        context: PathBuf::from(&build.context),
        dockerfile: build.dockerfile.as_ref().map(PathBuf::from),
        tags,
        build_args: build
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect(),
        target: build.target.clone(),
        no_cache: build.no_cache,
        labels: build.labels.clone(),
    })))
}

/// A failure of the builder, as it describes it (a failing `RUN` names its Dockerfile line).
pub type BuilderError = Box<dyn std::error::Error + Send + Sync>;

/// The image store and builder of the node watch runs on. Blocking: watch calls it off the
/// async threads.
pub trait ImageBuilder: Send + Sync {
    /// The manifest digest of the image named `image` in this node's store, if it is there.
    fn present(&self, image: &str) -> Result<Option<String>, BuilderError>;
    /// Builds `spec` (progress lines to `progress`); the manifest digest of the result.
    fn build(
        &self,
        spec: &BuildSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<String, BuilderError>;
    /// Pushes `image` to the registry its name names; the manifest digest pushed.
    fn push(&self, image: &str) -> Result<String, BuilderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_named_by_a_host_part() {
        for yes in [
            "127.0.0.1:5000/app:1",
            "registry.local/app",
            "localhost/app:2",
        ] {
            assert!(names_registry(yes), "{yes}");
        }
        for no in ["app", "app:1", "shop-web", "library/app:1"] {
            assert!(!names_registry(no), "{no}");
        }
    }

    #[test]
    fn a_built_image_reaches_a_cluster_through_the_registry_it_names() {
        assert_eq!(delivery("web", "shop-web", 1), Delivery::Local);
        assert_eq!(delivery("web", "127.0.0.1:5000/app:1", 1), Delivery::Local);
        assert_eq!(delivery("web", "127.0.0.1:5000/app:1", 2), Delivery::Push);
        let Delivery::Refused(e) = delivery("web", "shop-web", 3) else {
            panic!("a cluster without a registry in image: is refused");
        };
        assert!(
            e.contains("3 nodes") && e.contains("name a registry in `image:`"),
            "{e}"
        );
    }

    fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("compose.yml");
        std::fs::write(&f, yaml).unwrap();
        dcpp_spec::load(&dcpp_spec::LoadOptions {
            files: vec![f],
            project_name: Some("shop".into()),
            profiles: vec![],
            env_files: vec![],
            working_dir: dir.path().to_path_buf(),
            project_dir: None,
            environment: BTreeMap::new(),
        })
        .unwrap()
        .project
    }

    #[test]
    fn a_missing_image_is_built_under_the_compose_name_and_a_present_one_pinned() {
        let p = project(
            "services:\n  web:\n    build:\n      context: ./site\n      args: {A: '1', B: null}\n      tags: [extra:1]\n  api:\n    image: api:2\n    build: .\n  db:\n    image: db\n",
        );
        let Some(BuildStep::Build(spec)) = build_step(&p, "web", None).unwrap() else {
            panic!("a missing image is built");
        };
        assert_eq!(spec.image, "shop-web");
        assert_eq!(spec.tags, ["shop-web", "extra:1"]);
        assert!(spec.context.is_absolute() && spec.context.ends_with("site"));
        assert_eq!(spec.build_args, BTreeMap::from([("A".into(), "1".into())]));
        assert_eq!(
            build_step(&p, "api", Some("sha256:ab")).unwrap(),
            Some(BuildStep::Use {
                image: "api:2".into(),
                digest: "sha256:ab".into()
            })
        );
        assert_eq!(build_step(&p, "db", None).unwrap(), None);
    }

    #[test]
    fn pull_policy_build_builds_even_a_present_image_and_urls_are_refused() {
        let p = project(
            "services:\n  web:\n    build: .\n    pull_policy: build\n  git:\n    build: https://example.com/r.git\n  gh:\n    build: github.com/o/r\n",
        );
        assert!(matches!(
            build_step(&p, "web", Some("sha256:ab")).unwrap(),
            Some(BuildStep::Build(_))
        ));
        // `github.com/…` is as remote as a URL: the loader keeps it unresolved.
        for svc in ["git", "gh"] {
            let e = build_step(&p, svc, None).unwrap_err();
            assert!(
                e.to_string()
                    .contains("dcpp builds from a local directory only"),
                "{e}"
            );
        }
    }
}
