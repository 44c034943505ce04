//! Hostile inputs: each case of an adversarial run against the CLI, as a
//! table of crafted inputs and the typed outcome each must get. Every case
//! also checks that the cache is as it was before (bad input never changes
//! the cache).
//!
//! - `converters`: `command:` converters that misbehave (aliased outputs,
//!   surviving grandchildren, crashes, terminal escapes in stderr).
//! - `files`: FIFOs, devices and endless files where a regular file is
//!   expected, and symlinks out of the source.
//! - `layers`: crafted OCI layers and overlay2 chains (hardlink counts,
//!   `trusted.overlay.*` xattrs, whiteouts, sizes and diff IDs, image bounds).

mod converters;
mod files;
mod layers;
