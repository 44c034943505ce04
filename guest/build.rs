//! Link settings for the component build.

fn main() {
    // Rust gives a wasm program a 1 MiB stack in linear memory. The host
    // resets every byte of a request's initial memory when the request ends
    // (and maps it again for the next), so a smaller stack makes every
    // request cheaper. The guest's deepest recursion is serde_json's, which
    // stops at 128 levels; 128 KiB holds that many times over, and the
    // stack sits below the data, so an overflow traps instead of
    // overwriting it.
    if std::env::var("CARGO_CFG_TARGET_FAMILY").as_deref() == Ok("wasm") {
        println!("cargo::rustc-link-arg-cdylib=-zstack-size=131072");
        println!("cargo::rustc-link-arg-cdylib=--initial-memory=1048576");
    }
}
