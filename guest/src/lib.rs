//! The rootfs-cache guest: every decision of the cache, compiled to a WASI
//! Preview 2 component.
//!
//! The component exports `rootfs:cache/cache` and imports
//! `rootfs:cache/host` (see `wit/rootfs-cache.wit`). It reads the cache
//! directory and the source roots through read-only WASI preopens and changes
//! nothing except through the host. The modules below are plain Rust, so
//! `cargo test -p rootfs-cache-guest` runs them natively.
#![warn(missing_docs)]

pub mod blob_store;
pub mod capabilities;
#[cfg(target_arch = "wasm32")]
mod component;
pub mod daemon;
pub mod error;
pub mod evict;
pub mod ext4;
#[cfg(not(target_arch = "wasm32"))]
pub mod fake;
pub mod flow;
pub mod key;
pub mod layerdb;
pub mod lifecycle;
pub mod manifest;
pub mod oci;
pub mod overlay2;
pub mod probe;
pub mod registry;
pub mod remote;
pub mod source;
pub mod sys;
pub mod validate;

/// Bindings generated from `wit/` (their documentation is the WIT's).
#[allow(missing_docs, reason = "generated from the WIT, whose comments are the documentation")]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rootfs-cache",
        additional_derives: [PartialEq, Eq],
    });
}

/// The WIT types, under their interface names.
pub mod wit {
    pub use crate::bindings::rootfs::cache::{host, types};
}
