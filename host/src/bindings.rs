//! Host bindings generated from `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rootfs-cache",
    imports: { default: async | trappable },
    exports: { default: async },
    trappable_error_type: {
        "rootfs:cache/types.error" => crate::error::HostCallError,
    },
    with: {
        "rootfs:cache/host.mounted-image": crate::store::MountedImageHandle,
        "rootfs:cache/host.build-lock": crate::store::BuildLockHandle,
    },
});
