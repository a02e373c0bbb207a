//! Containers: OCI bundles, namespaces, overlay rootfs, cgroups, security, supervision, logs.
