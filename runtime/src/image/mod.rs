//! OCI images: content-addressed store, registry client, import/load, layer unpacking.
