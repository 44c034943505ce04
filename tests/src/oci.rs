//! OCI image layouts built from in-memory layer descriptions.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use flate2::write::GzEncoder;

use crate::sha256_hex;

/// What a tar entry is.
pub enum TarKind<'a> {
    /// A regular file with its bytes.
    File(&'a [u8]),
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(&'a [u8]),
    /// A hardlink to an earlier path.
    Hardlink(&'a [u8]),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A FIFO.
    Fifo,
}

/// One entry of a layer tar.
pub struct TarEntry<'a> {
    path: &'a [u8],
    kind: TarKind<'a>,
    mode: u32,
    owner: (u64, u64),
    mtime: (u64, u32),
    xattrs: Vec<(&'a str, &'a [u8])>,
}

impl<'a> TarEntry<'a> {
    fn new(path: &'a [u8], kind: TarKind<'a>, mode: u32) -> Self {
        Self { path, kind, mode, owner: (0, 0), mtime: (1_700_000_000, 0), xattrs: Vec::new() }
    }

    /// A regular file.
    pub fn file(path: &'a str, data: &'a [u8], mode: u32) -> Self {
        Self::new(path.as_bytes(), TarKind::File(data), mode)
    }

    /// A directory.
    pub fn dir(path: &'a str, mode: u32) -> Self {
        Self::new(path.as_bytes(), TarKind::Dir, mode)
    }

    /// A symlink.
    pub fn symlink(path: &'a str, target: &'a str) -> Self {
        Self::new(path.as_bytes(), TarKind::Symlink(target.as_bytes()), 0o777)
    }

    /// Any kind, with a raw path.
    pub fn raw(path: &'a [u8], kind: TarKind<'a>, mode: u32) -> Self {
        Self::new(path, kind, mode)
    }

    /// Sets the owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.owner = (uid, gid);
        self
    }

    /// Sets the modification time.
    pub fn mtime(mut self, secs: u64, nanos: u32) -> Self {
        self.mtime = (secs, nanos);
        self
    }

    /// Adds an extended attribute.
    pub fn xattr(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.xattrs.push((name, value));
        self
    }
}

/// Builds a tar from entries, with PAX records for xattrs and nanosecond
/// times.
pub fn tar(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut pax: Vec<(String, Vec<u8>)> =
            entry.xattrs.iter().map(|(n, v)| (format!("SCHILY.xattr.{n}"), v.to_vec())).collect();
        if entry.mtime.1 != 0 {
            pax.push(("mtime".into(), format!("{}.{:09}", entry.mtime.0, entry.mtime.1).into_bytes()));
        }
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_uid(entry.owner.0);
        header.set_gid(entry.owner.1);
        header.set_mtime(entry.mtime.0);
        header.set_mode(entry.mode);
        header.set_size(0);
        // Hostile paths (`..`, absolute) are written into the header as
        // they are: the tar crate would refuse them.
        let hostile = |p: &[u8]| p.starts_with(b"/") || p.split(|&c| c == b'/').any(|c| c == b"..");
        let raw_name = |header: &mut tar::Header, field: &[u8], link: bool| {
            let gnu = header.as_gnu_mut().unwrap();
            let dest = if link { &mut gnu.linkname[..] } else { &mut gnu.name[..] };
            dest[..field.len()].copy_from_slice(field);
        };
        let path = Path::new(OsStr::from_bytes(entry.path));
        let data: &[u8] = match &entry.kind {
            TarKind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                data
            }
            TarKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            TarKind::Symlink(target) | TarKind::Hardlink(target) => {
                let t = if matches!(entry.kind, TarKind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                header.set_entry_type(t);
                if hostile(target) {
                    raw_name(&mut header, target, true);
                } else {
                    header.set_link_name(Path::new(OsStr::from_bytes(target))).unwrap();
                }
                &[]
            }
            TarKind::Char(major, minor) | TarKind::Block(major, minor) => {
                let t =
                    if matches!(entry.kind, TarKind::Char(..)) { tar::EntryType::Char } else { tar::EntryType::Block };
                header.set_entry_type(t);
                header.set_device_major(*major).unwrap();
                header.set_device_minor(*minor).unwrap();
                &[]
            }
            TarKind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                &[]
            }
        };
        if hostile(entry.path) {
            raw_name(&mut header, entry.path, false);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        } else {
            builder.append_data(&mut header, path, data).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `tar+gzip`.
    Gzip,
    /// `tar+zstd`.
    Zstd,
    /// Plain `tar`.
    None,
}

impl Compression {
    fn apply(self, data: &[u8]) -> (Vec<u8>, &'static str) {
        match self {
            Self::Gzip => (gzip(data), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Self::Zstd => (zstd::encode_all(data, 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd"),
            Self::None => (data.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        }
    }
}

/// gzip.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Writes `data` as a blob of `layout` and returns its digest.
pub fn write_blob(layout: &Path, data: &[u8]) -> String {
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

/// Writes an OCI layout with gzip-compressed layers for `linux/<arch>`.
pub fn layout(dir: &Path, layers: &[Vec<u8>], arch: &str, style: IndexStyle) {
    let layers: Vec<(Vec<u8>, Compression)> = layers.iter().map(|l| (l.clone(), Compression::Gzip)).collect();
    layout_with(dir, &layers, arch, style);
}

/// Writes an OCI layout with each layer compressed as given, tagged `latest`.
pub fn layout_with(dir: &Path, layers: &[(Vec<u8>, Compression)], arch: &str, style: IndexStyle) {
    layout_edited(dir, layers, arch, style, |_, _| {});
}

/// [`layout_with`], with `edit` changing the manifest and the image config
/// (as JSON) before they are written: for layouts whose descriptors lie.
pub fn layout_edited(
    dir: &Path,
    layers: &[(Vec<u8>, Compression)],
    arch: &str,
    style: IndexStyle,
    edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (layer, compression) in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(layer)));
        let (blob, media_type) = compression.apply(layer);
        let digest = write_blob(dir, &blob);
        descriptors.push(serde_json::json!({ "mediaType": media_type, "digest": digest, "size": blob.len() }));
    }
    let mut config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids }, "config": {}
    });
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "layers": descriptors,
    });
    edit(&mut manifest, &mut config);
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(dir, &config);
    manifest["config"] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
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
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/os-release", b"ID=oci-fixture\n", 0o644),
        TarEntry::file("etc/removed", b"gone in layer 2\n", 0o644),
        TarEntry::dir("usr/", 0o755),
        TarEntry::dir("usr/bin/", 0o755),
        TarEntry::file("usr/bin/app", b"#!/bin/sh\necho app\n", 0o755),
        TarEntry::symlink("bin", "usr/bin"),
    ]);
    let top = tar(&[
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/.wh.removed", b"", 0o644),
        TarEntry::file("etc/motd", b"oci top layer\n", 0o644),
    ]);
    layout(dir, &[base, top], "amd64", style);
}

/// A three-layer image (gzip, gzip, plain tar: umoci 0.4 reads no zstd) with every kind of entry and
/// change: whiteouts of files, directories, symlinks and hardlinks, an opaque
/// directory, a file replaced by a directory and the reverse, devices, a
/// FIFO, xattrs, owners, setuid/setgid/sticky modes, non-UTF-8 names and
/// targets, nanosecond times and a mostly-zero file.
pub fn feature_layout(dir: &Path, style: IndexStyle) {
    let cap: &[u8] = &[0, 0, 0, 2, 0, 32, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut zeros = vec![0u8; 4 << 20];
    zeros[2 << 20..(2 << 20) + 6].copy_from_slice(b"middle");
    let one = tar(&[
        TarEntry::dir("./", 0o755).mtime(1_650_000_000, 5),
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/os-release", b"ID=oci-features\n", 0o644)
            .xattr("user.origin", b"layer one")
            .mtime(1_600_000_000, 123_456_789),
        TarEntry::file("etc/deleted-file", crate::DELETED_MARKER, 0o644),
        TarEntry::dir("etc/deleted-dir/", 0o755),
        TarEntry::file("etc/deleted-dir/child", crate::DELETED_MARKER, 0o600),
        TarEntry::symlink("etc/deleted-link", "os-release"),
        TarEntry::dir("opt/", 0o755),
        TarEntry::dir("opt/app/", 0o750),
        TarEntry::file("opt/app/old-config", b"old\n", 0o644),
        TarEntry::dir("data/", 0o755),
        TarEntry::file("data/will-be-dir", b"a file first\n", 0o644),
        TarEntry::dir("data/will-be-file/", 0o755),
        TarEntry::file("data/will-be-file/child", b"x", 0o644),
        TarEntry::file("data/hl-a", b"hardlinked\n", 0o644),
        TarEntry::raw(b"data/hl-b", TarKind::Hardlink(b"data/hl-a"), 0o644),
        TarEntry::file("data/hl-doomed", b"hardlinked and deleted\n", 0o644),
        TarEntry::raw(b"data/hl-survivor", TarKind::Hardlink(b"data/hl-doomed"), 0o644),
        TarEntry::file("data/sparse", &zeros, 0o644),
        TarEntry::dir("usr/", 0o755),
        TarEntry::dir("usr/bin/", 0o755),
        TarEntry::file("usr/bin/suid", b"#!/bin/sh\n", 0o4755),
        TarEntry::file("usr/bin/sgid", b"#!/bin/sh\n", 0o2755),
        TarEntry::file("usr/bin/ping", b"\x7fELF not really\n", 0o755).xattr("security.capability", cap),
        TarEntry::dir("tmp/", 0o1777),
        TarEntry::dir("home/", 0o755),
        TarEntry::dir("home/user/", 0o750).owner(1000, 1000),
        TarEntry::file("home/user/file", b"mine\n", 0o640).owner(1000, 100),
        TarEntry::symlink("home/user/link", "file").owner(1234, 5678),
        TarEntry::raw(b"dev-null", TarKind::Char(1, 3), 0o666),
        TarEntry::raw(b"dev-loop", TarKind::Block(7, 300), 0o660),
        TarEntry::raw(b"fifo", TarKind::Fifo, 0o644),
        TarEntry::raw(b"caf\xe9-\xff", TarKind::File(b"latin-1 name\n"), 0o644),
        TarEntry::raw(b"odd-link", TarKind::Symlink(b"target-\xfe"), 0o777),
        TarEntry::symlink("bin", "usr/bin").mtime(1_500_000_000, 987_654_321),
    ]);
    let many: Vec<String> = (0..5000).map(|i| format!("many/entry-{i:05}")).collect();
    let mut two_entries = vec![
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/.wh.deleted-file", b"", 0o644),
        TarEntry::file("etc/.wh.deleted-dir", b"", 0o644),
        TarEntry::file("etc/.wh.deleted-link", b"", 0o644),
        TarEntry::dir("data/", 0o755),
        TarEntry::file("data/.wh.hl-doomed", b"", 0o644),
        TarEntry::dir("opt/app/", 0o750),
        TarEntry::file("opt/app/.wh..wh..opq", b"", 0o644),
        TarEntry::file("opt/app/new-config", b"new\n", 0o600),
        TarEntry::file("data/will-be-file", b"now a file\n", 0o644),
        TarEntry::dir("data/will-be-dir/", 0o700),
        TarEntry::file("data/will-be-dir/child", b"now a directory\n", 0o644),
        TarEntry::file("etc/motd", b"layer two\n", 0o644),
        TarEntry::dir("many/", 0o755),
    ];
    for name in &many {
        two_entries.push(TarEntry::file(name, b"n", 0o644));
    }
    let two = tar(&two_entries);
    let three = tar(&[
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/motd", b"layer three\n", 0o644).mtime(1_700_000_000, 1),
    ]);
    layout_with(dir, &[(one, Compression::Gzip), (two, Compression::Gzip), (three, Compression::None)], "amd64", style);
}

/// Unpacks `layout`'s `latest` with `umoci unpack` into `bundle` (which
/// must not exist yet) and returns the unpacked root filesystem: the
/// reference tree the differential tests compare an OCI layout's image with.
pub fn umoci_unpack(layout: &Path, bundle: &Path) -> std::path::PathBuf {
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci unpack {}: {}", layout.display(), String::from_utf8_lossy(&out.stderr));
    bundle.join("rootfs")
}

/// Whether a blob of `layout` names `tar+zstd` layers (which umoci 0.4
/// cannot unpack).
pub fn is_zstd(layout: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(layout.join("blobs/sha256")) else { return false };
    entries
        .flatten()
        .any(|e| std::fs::read(e.path()).map(|b| String::from_utf8_lossy(&b).contains("tar+zstd")).unwrap_or(false))
}

/// The OCI layout of the Docker fixture `name` when `ROOTFS_FIXTURES` names
/// the `fixtures.json` of `tests/fixtures/docker-fixtures.sh`; `None` when it
/// is not set or has no such fixture.
pub fn fixture_layout(name: &str) -> Option<std::path::PathBuf> {
    let list = std::env::var_os("ROOTFS_FIXTURES")?;
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(list).ok()?).ok()?;
    let fixture = list.as_array()?.iter().find(|f| f["name"] == name)?;
    Some(std::path::PathBuf::from(fixture["oci"].as_str()?))
}

/// The layout of the `base` Docker fixture when `ROOTFS_FIXTURES` names the
/// fixtures and its layers are not zstd (which umoci cannot unpack), else
/// the tests' feature layout (every kind of entry and change), written under
/// `dir`: a real image where there is one, for tests that compare with
/// `umoci unpack`.
pub fn base_or_feature_layout(dir: &Path) -> std::path::PathBuf {
    if let Some(layout) = fixture_layout("base")
        && !is_zstd(&layout)
    {
        return layout;
    }
    let layout = dir.join("features");
    feature_layout(&layout, IndexStyle::Skopeo);
    layout
}

/// Pushes the image `oci:LAYOUT:latest` (every image with `all`) to the
/// plain-HTTP registry at `host` as `name` (`REPO:TAG`), with `skopeo copy
/// --preserve-digests`.
pub fn skopeo_push(layout: &Path, host: &str, name: &str, all: bool) {
    let mut command = std::process::Command::new("skopeo");
    command.args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"]);
    if all {
        command.arg("--all");
    }
    let out = command
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{host}/{name}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
}
