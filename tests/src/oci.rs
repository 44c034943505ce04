//! OCI image layouts built from in-memory layer descriptions.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::sha256_hex;

/// One entry of a layer tar.
pub enum TarEntry<'a> {
    /// A regular file.
    File(&'a str, &'a [u8], u32),
    /// A directory.
    Dir(&'a str, u32),
    /// A symlink.
    Symlink(&'a str, &'a str),
}

/// Builds a tar from entries.
pub fn tar(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        match entry {
            TarEntry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(*mode);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            TarEntry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(*mode);
                builder.append_data(&mut header, path, std::io::empty()).unwrap();
            }
            TarEntry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// gzip.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// How `index.json` points at the manifest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IndexStyle {
    /// As skopeo writes it: no top-level mediaType, no platform.
    Skopeo,
    /// With a mediaType and a platform on the descriptor.
    WithPlatform,
}

/// Writes an OCI layout with gzip-compressed layers for `os/arch`.
pub fn layout(dir: &Path, layers: &[Vec<u8>], arch: &str, style: IndexStyle) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(layer)));
        let gz = gzip(layer);
        let digest = write_blob(dir, &gz);
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": gz.len()
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids }, "config": {}
    }))
    .unwrap();
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": descriptors,
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    let mut descriptor = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": "latest" }
    });
    let mut index = serde_json::json!({ "schemaVersion": 2, "manifests": [] });
    if style == IndexStyle::WithPlatform {
        descriptor["platform"] = serde_json::json!({ "os": "linux", "architecture": arch });
        index["mediaType"] = serde_json::json!("application/vnd.oci.image.index.v1+json");
    }
    index["manifests"] = serde_json::json!([descriptor]);
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The standard two-layer OCI image of the tests.
pub fn standard_layout(dir: &Path, style: IndexStyle) {
    let base = tar(&[
        TarEntry::Dir("etc/", 0o755),
        TarEntry::File("etc/os-release", b"ID=oci-fixture\n", 0o644),
        TarEntry::File("etc/removed", b"gone in layer 2\n", 0o644),
        TarEntry::Dir("usr/", 0o755),
        TarEntry::Dir("usr/bin/", 0o755),
        TarEntry::File("usr/bin/app", b"#!/bin/sh\necho app\n", 0o755),
        TarEntry::Symlink("bin", "usr/bin"),
    ]);
    let top = tar(&[
        TarEntry::Dir("etc/", 0o755),
        TarEntry::File("etc/.wh.removed", b"", 0o644),
        TarEntry::File("etc/motd", b"oci top layer\n", 0o644),
    ]);
    layout(dir, &[base, top], "amd64", style);
}
