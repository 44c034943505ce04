//! A remote cache's artifact manifest and config, as a registry may send them: never panics,
//! and a manifest accepted for a key names that key and one layer of the image's type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_cache_guest::remote::{ArtifactManifest, LAYER_TYPE, RemoteEntry};

const KEY: &str = "4b199e580462c10774933fd480d9e0c83625b4479906300c28d345c5c19662e4";

fuzz_target!(|data: &[u8]| {
    // The first half as the manifest, the rest as the config.
    let (manifest, config) = data.split_at(data.len() / 2);
    if let Ok((parsed, artifact)) = ArtifactManifest::parse_for(manifest, KEY) {
        assert_eq!(parsed.layers.len(), 1);
        assert_eq!(artifact.layer.media_type, LAYER_TYPE);
        let expected = RemoteEntry {
            format: 1,
            key: KEY.into(),
            kind: "registry".into(),
            source: String::new(),
            platform: None,
            agent_sha256: String::new(),
            agent_size: 0,
            converter: String::new(),
            requested_size: None,
            image_bytes: 0,
            image_sha256: String::new(),
            builder: String::new(),
        };
        if let Ok(entry) = artifact.check_config(config, &expected) {
            assert_eq!(entry.key, KEY);
            assert_eq!(entry.image_sha256, artifact.image_sha256);
        }
    }
});
