//! The cache manifest, `images/<key>.json`: what an entry was built from.
//!
//! The manifest is written last when an entry is published, so its presence
//! marks a complete entry. It is parsed strictly: an unknown field, a wrong
//! type or another format version makes the entry corrupt, and it is rebuilt.

use serde::{Deserialize, Serialize};

/// The manifest format this guest writes and accepts.
pub const FORMAT: u32 = 1;

/// The largest manifest read; real ones are under 2 KiB.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// The agent an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    /// Host path it was copied from.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

/// One entry's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The cache key; must match the file name.
    pub key: String,
    /// `overlay2`, `oci-layout` or `registry`.
    pub kind: String,
    /// Host path of the source.
    pub source: String,
    /// The layers the converter applied, bottom first.
    pub layers: Vec<String>,
    /// For OCI layouts: the platform and manifest digest selected.
    pub platform: Option<String>,
    /// The agent installed at `/sbin/vm-agent`.
    pub agent: AgentRecord,
    /// The converter's identity.
    pub converter: String,
    /// The size that was asked for, if any.
    pub requested_size: Option<u64>,
    /// The image's length in bytes.
    pub image_bytes: u64,
    /// Build time, seconds since the Unix epoch.
    pub created: u64,
    /// What built it (`rootfs-cache-guest <version>`).
    pub builder: String,
    /// SHA-256 of the image's bytes, hex, as published: the host's
    /// publisher computes it and adds it to the manifest the guest gives it
    /// (`verify --deep` compares it with the image). Absent from entries
    /// published before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
}

impl Manifest {
    /// Parses a manifest, strictly.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not valid: {e}"))?;
        if m.format != FORMAT {
            return Err(format!("manifest format {} is not {FORMAT}", m.format));
        }
        Ok(m)
    }

    /// Serialises the manifest as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            key: "ab".repeat(32),
            kind: "overlay2".into(),
            source: "/var/lib/docker/overlay2/x".into(),
            layers: vec!["/var/lib/docker/overlay2/x/diff".into()],
            platform: None,
            agent: AgentRecord { path: "/opt/vm-agent".into(), sha256: "cd".repeat(32), size: 10 },
            converter: "oci2rootfs 0.3.0".into(),
            requested_size: Some(64 << 20),
            image_bytes: 64 << 20,
            created: 1_700_000_000,
            builder: "rootfs-cache-guest 0.1.0".into(),
            image_sha256: None,
        }
    }

    #[test]
    fn a_manifest_round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(m.to_json().as_bytes()).unwrap(), m);
    }

    #[test]
    fn the_image_digest_the_publisher_adds_is_accepted() {
        let json = sample().to_json();
        assert!(!json.contains("image_sha256"), "the guest leaves it to the publisher");
        let published = json.replacen('{', &format!(r#"{{"image_sha256":"{}","#, "ef".repeat(32)), 1);
        assert_eq!(Manifest::parse(published.as_bytes()).unwrap().image_sha256, Some("ef".repeat(32)));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let json = sample().to_json();
        let extra = json.replacen('{', r#"{"surprise":1,"#, 1);
        assert!(Manifest::parse(extra.as_bytes()).unwrap_err().contains("unknown field"));
        let wrong = json.replace(r#""format":1"#, r#""format":"1""#);
        assert!(Manifest::parse(wrong.as_bytes()).is_err());
        let future = json.replace(r#""format":1"#, r#""format":2"#);
        assert!(Manifest::parse(future.as_bytes()).unwrap_err().contains("format 2"));
        assert!(Manifest::parse(b"").is_err());
    }
}
