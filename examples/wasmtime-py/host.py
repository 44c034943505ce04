"""A host adapter for the rootfs-cache component, written in Python.

It runs the committed component under wasmtime-py (`pip install wasmtime`)
and implements `rootfs:cache/host@0.5.0` the way `examples/jco/host.mjs` does
for Node.js: publishing, removal, use records and fsck are real; the
converter writes a synthetic ext4 superblock and the "mount" records the
agent install (like the Rust fake adapter), so no root is needed. Every path
the guest names is checked the way the Rust host's policy checks it: a plain
file name directly under tmp/ or images/ of the cache for changes, and for
`probe` (read-only) a path under the cache or one of the source roots.

What the WIT asks of every host, done here: the host creates images/, tmp/
and locks/ in the cache; a build lock is an `flock` on locks/<key>.lock,
created when taken and removed (then unlocked) when dropped, so `sweep`
clears stale lock files and other processes using the cache (the Rust host
too) are excluded; `probe` reports birth times as `statx` does; the preopens
are read-only; and every call runs in a fresh Store, after which
`release_all` releases what a trapped guest still held (locks and their
files, temporary images), as dropping would have.

Values cross the component boundary as wasmtime-py represents them: a WIT
record is a `Record` with one attribute per field (named as in the WIT, with
dashes), a variant case is a `Variant(tag, payload)`, `result<T, error>` is
the value itself or the error's `Variant`, and a resource is a
`ResourceHost` whose `rep` indexes a table of this host's objects.
"""

import ctypes
import fcntl
import hashlib
import os
import re
import stat
import struct
import subprocess
from typing import Any, Dict, List, Optional

from wasmtime import Config, Engine, Store, WasiConfig
from wasmtime.component import Component, Linker, Record, ResourceAny, ResourceHost, ResourceType, Variant

NAME = re.compile(r"^(tmp|images)/[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")
KEY = re.compile(r"^[0-9a-f]{64}$")
MAX_PROBE_PATHS = 256
MAX_READ_BYTES = 65536
MAX_TOTAL_READ_BYTES = 1 << 20
HOST = "rootfs:cache/host@0.5.0"
CACHE = "rootfs:cache/cache@0.5.0"

# The resource types this host defines: any two distinct numbers.
BUILD_LOCK = 1
MOUNTED_IMAGE = 2


_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BTIME = 0x800


def birth_ns(path: str) -> int:
    """A path's birth time in ns as `statx` reports it (`stx_btime`, not
    following a final symlink), or 0 where the filesystem or libc cannot tell:
    the value the WIT's `created-ns` asks for, and the Rust host's. Python's
    `os.stat` has no birth time on Linux."""
    statx = getattr(_LIBC, "statx", None)
    if statx is None:
        return 0
    buf = ctypes.create_string_buffer(256)  # struct statx
    if statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf) != 0:
        return 0
    (mask,) = struct.unpack_from("<I", buf, 0)
    sec, nsec = struct.unpack_from("<qI", buf, 80)  # stx_btime
    return sec * 1_000_000_000 + nsec if mask & _STATX_BTIME and sec >= 0 else 0


def record(**fields: Any) -> Record:
    """A WIT record; keyword `a_b` becomes field `a-b`."""
    r = Record()
    for name, value in fields.items():
        setattr(r, name.replace("_", "-"), value)
    return r


def error(tag: str, payload: Any) -> Variant:
    """A value of the WIT `error` variant."""
    return Variant(tag, payload)


def denied(rule: str, detail: str) -> Variant:
    return error("denied", record(rule=rule, detail=detail))


def io_error(what: str, e: OSError) -> Variant:
    tag = "not-found" if isinstance(e, FileNotFoundError) else "io"
    return error(tag, f"{what}: {e.strerror or e}")


class Refused(Exception):
    """A request this host refuses, carrying the guest's `error`."""

    def __init__(self, value: Variant):
        super().__init__(value.tag)
        self.value = value


class Host:
    """The capabilities of one cache directory."""

    def __init__(self, cache_dir: str, source_roots: List[str], agents: Optional[List[str]] = None):
        self.cache_dir = cache_dir
        self.source_roots = source_roots
        self.agents = agents
        self.installs: List[Dict[str, Any]] = []
        self.locks: Dict[str, int] = {}
        self.objects: Dict[int, Any] = {}
        self.unpublished: set = set()
        self.next_rep = 1
        # The guest cannot create directories; every capability that writes expects these.
        for sub in ("images", "tmp", "locks"):
            os.makedirs(os.path.join(cache_dir, sub), exist_ok=True)

    # Paths.
    def in_cache(self, rel: str, areas=("tmp", "images")) -> str:
        if not NAME.match(rel) or rel.split("/")[0] not in areas:
            raise Refused(denied("cache_dir", f"{rel!r} is not a file of {' or '.join(areas)}"))
        return os.path.join(self.cache_dir, rel)

    def probe_target(self, p: str) -> str:
        root, rel = self.cache_dir, p
        if p.startswith("/"):
            roots = [r for r in self.source_roots if p == r or p.startswith(r + "/")]
            if not roots:
                raise Refused(denied("source_roots", f"{p} is outside the source of this request"))
            root = max(roots, key=len)
            rel = p[len(root) + 1 :]
        parts = [] if rel == "" else rel.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise Refused(error("invalid-request", f"{p} is not a normalised path"))
        full = os.path.join(root, *parts)
        if len(parts) > 1:
            parent, real_root = os.path.realpath(os.path.dirname(full)), os.path.realpath(root)
            if parent != real_root and not parent.startswith(real_root + "/"):
                raise Refused(denied("source_roots", f"{p} leads outside the directories of this request"))
        return full

    # Resources.
    def new(self, obj: Any, ty: int) -> ResourceHost:
        rep = self.next_rep
        self.next_rep += 1
        self.objects[rep] = obj
        return ResourceHost.own(rep, ty)

    def drop(self, rep: int) -> None:
        obj = self.objects.pop(rep, None)
        if isinstance(obj, dict) and self.locks.get(obj.get("key")) == rep:
            del self.locks[obj["key"]]
            # Remove the file, then unlock: how `sweep` clears a stale lock file.
            try:
                os.unlink(self.lock_path(obj["key"]))
            except FileNotFoundError:
                pass
            fcntl.flock(obj["fd"], fcntl.LOCK_UN)
            os.close(obj["fd"])

    def release_all(self) -> None:
        """After a call: releases what the guest still holds, as dropping it
        would have (after a trap, its locks and their files, its mounts, the
        temporary images it neither published nor removed). A call that
        returned normally leaves nothing."""
        for rep in list(self.objects):
            self.drop(rep)
        for rel in self.unpublished:
            try:
                os.remove(os.path.join(self.cache_dir, rel))
            except FileNotFoundError:
                pass
        self.unpublished.clear()

    # Locks.
    def lock_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, "locks", key + ".lock")

    def take_lock(self, key: str, wait: bool) -> Optional[ResourceHost]:
        """`flock` on locks/<key>.lock; `None` when another holder has it and
        `wait` is false. A holder removes the file before it unlocks, so a
        lock won on a file since removed is retried on the new one."""
        if key in self.locks:
            if wait:
                raise Refused(error("io", f"locks/{key}.lock is already held by this host"))
            return None
        path = self.lock_path(key)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise Refused(io_error(f"locks/{key}.lock", e))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
                lock = self.new({"key": key, "fd": fd}, BUILD_LOCK)
                self.locks[key] = lock.rep
                return lock
            os.close(fd)

    # The interface, one method per function.
    def digest_file(self, p: str):
        if self.agents is not None and p not in self.agents:
            return denied("agents", p)
        try:
            st = os.stat(p)
        except OSError as e:
            return io_error(f"agent {p}", e)
        if not stat.S_ISREG(st.st_mode):
            return error("invalid-request", f"agent {p} is not a regular file")
        with open(p, "rb") as f:
            return record(sha256=hashlib.sha256(f.read()).hexdigest(), size=st.st_size)

    def describe_converter(self, name: str):
        if name not in ("exact", "oci2rootfs"):
            return error("invalid-request", f"converter {name} is not available here")
        return record(identity="py-synthetic 1", installs_agent=False)

    def run_converter(self, job: Record):
        out = self.in_cache(job.output, ("tmp",))
        size = job.size if job.size is not None else 8 << 20
        self.unpublished.add(job.output)
        synthetic_ext4(out, size)
        # The length of the image created.
        return os.stat(out).st_size

    def mount_image(self, image: str):
        self.in_cache(image, ("tmp",))
        return self.new({"image": image}, MOUNTED_IMAGE)

    def install(self, mounted: ResourceHost, file: Record):
        if self.agents is not None and file.source not in self.agents:
            return denied("agents", file.source)
        with open(file.source, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != file.sha256:
                return error("inject-failed", "the agent changed during the build")
        image = self.objects[mounted.rep]["image"]
        self.installs.append({"image": image, "target": file.target, "mode": file.mode})
        return None

    def publish(self, staged: str, image: str, manifest: str, manifest_json: str):
        s, i, m = self.in_cache(staged, ("tmp",)), self.in_cache(image, ("images",)), self.in_cache(manifest, ("images",))
        try:
            with open(s, "r+b") as f:
                os.fsync(f.fileno())
            tmp = s + ".json.tmp"
            with open(tmp, "w") as f:
                f.write(manifest_json + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(s, i)
            os.rename(tmp, m)
            d = os.open(os.path.join(self.cache_dir, "images"), os.O_RDONLY)
            try:
                os.fsync(d)
            finally:
                os.close(d)
        except OSError as e:
            return io_error("publishing", e)
        self.unpublished.discard(staged)
        return None

    def remove(self, rel: str):
        try:
            os.remove(self.in_cache(rel))
        except FileNotFoundError:
            pass
        self.unpublished.discard(rel)
        return None

    def record_use(self, manifest: str):
        m = self.in_cache(manifest, ("images",))
        os.utime(m, None)
        return None

    def probe_one(self, request: Record):
        p, read_bytes = request.path, getattr(request, "read-bytes")
        if read_bytes > MAX_READ_BYTES:
            return error("invalid-request", f"probe asked for {read_bytes} bytes of {p}; the limit is {MAX_READ_BYTES}")
        try:
            full = self.probe_target(p)
            st = os.lstat(full)
            kind = (
                "file" if stat.S_ISREG(st.st_mode)
                else "directory" if stat.S_ISDIR(st.st_mode)
                else "symlink" if stat.S_ISLNK(st.st_mode)
                else "other"
            )
            head = b""
            if kind == "file" and read_bytes > 0:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    head = os.pread(fd, min(read_bytes, st.st_size), 0)
                finally:
                    os.close(fd)
            return record(
                kind=kind,
                size=st.st_size,
                modified_ns=st.st_mtime_ns,
                created_ns=birth_ns(full),
                link_target=os.readlink(full.encode()) if kind == "symlink" else None,
                head=head,
            )
        except Refused as r:
            return r.value
        except OSError as e:
            return io_error(p, e)

    def probe(self, requests: List[Record]):
        if len(requests) > MAX_PROBE_PATHS:
            return error("invalid-request", f"probe was given {len(requests)} paths; the limit is {MAX_PROBE_PATHS}")
        total = sum(getattr(r, "read-bytes") for r in requests)
        if total > MAX_TOTAL_READ_BYTES:
            return error("invalid-request", f"probe asked for {total} bytes in all; the limit is {MAX_TOTAL_READ_BYTES}")
        return [self.probe_one(r) for r in requests]

    def lock(self, key: str):
        if not KEY.match(key):
            return error("invalid-request", f"{key} is not a cache key")
        return self.take_lock(key, wait=True)

    def try_lock(self, key: str):
        if not KEY.match(key):
            # wasmtime-py lowers `result<option<build-lock>, error>` by the
            # Python type of the value, and an `option` accepts any object, so
            # this error cannot be returned as one: raising traps the guest.
            raise ValueError(f"{key} is not a cache key")
        return self.take_lock(key, wait=False)

    def fsck(self, image: str):
        out = subprocess.run(["e2fsck", "-fn", self.in_cache(image, ("images",))], capture_output=True, text=True)
        return record(clean=out.returncode == 0, exit_status=out.returncode, output_tail=(out.stdout + out.stderr)[-1024:])

    def fetch_manifest(self, reference: str, _pull: Any):
        # Images by name: this adapter has no network, so it refuses them as
        # a policy would (the Rust host pulls; see the README's `docker://`).
        return denied("registries", f"{reference}: the wasmtime-py example host pulls nothing (no network)")

    def fetch_blobs(self, reference: str, _blobs: Any, _pull: Any):
        return denied("registries", f"{reference}: the wasmtime-py example host pulls nothing (no network)")

    def inspect_daemon_image(self, name: str):
        # Images of the local Docker engine: this adapter reaches none.
        return denied("docker_engines", f"{name}: the wasmtime-py example host reaches no Docker engine")

    def export_daemon_image(self, name: str):
        return denied("docker_engines", f"{name}: the wasmtime-py example host reaches no Docker engine")

    def remote(self, *args: Any):
        # A remote cache: this adapter has no network, so it refuses every
        # call as a policy would (the Rust host shares entries through a registry).
        return denied("remote", "the wasmtime-py example host has no remote cache")

    def digest_image(self, image: str):
        p = self.in_cache(image, ("tmp", "images"))
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            return io_error(image, e)
        return record(sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def token(self, lock: ResourceHost) -> str:
        return f"{os.getpid()}-{lock.rep}"


def synthetic_ext4(path: str, size: int) -> None:
    """A file of `size` bytes whose superblock passes the guest's checks (4 KiB blocks)."""
    blocks = size // 4096
    groups = max(1, -(-blocks // 32768))
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x00, groups * 128)
    struct.pack_into("<I", sb, 0x04, blocks)
    struct.pack_into("<I", sb, 0x0C, blocks // 2)
    struct.pack_into("<I", sb, 0x10, groups * 128 - 11)
    struct.pack_into("<I", sb, 0x18, 2)
    struct.pack_into("<I", sb, 0x20, 32768)
    struct.pack_into("<I", sb, 0x28, 128)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<I", sb, 0x4C, 1)
    struct.pack_into("<H", sb, 0x58, 256)
    with open(path, "xb") as f:
        f.truncate(size)
        f.seek(1024)
        f.write(sb)


def guarded(fn):
    """A host function: resources the guest passes come back to this host's
    handles, and a `Refused` becomes the guest's `Err`."""

    def call(store, *args):
        args = tuple(a.to_host(store) if isinstance(a, ResourceAny) else a for a in args)
        try:
            return fn(*args)
        except Refused as r:
            return r.value

    return call


class Cache:
    """The component, instantiated in a fresh Store per request as the Rust host does."""

    def __init__(self, component_path: str, host: Host):
        self.host = host
        self.engine = Engine(Config())
        self.component = Component.from_file(self.engine, component_path)
        self.linker = Linker(self.engine)
        self.linker.add_wasip2()
        h = host
        with self.linker.root() as root:
            with root.add_instance(HOST) as i:
                i.add_resource("build-lock", ResourceType.host(BUILD_LOCK), lambda _s, rep: h.drop(rep))
                i.add_resource("mounted-image", ResourceType.host(MOUNTED_IMAGE), lambda _s, rep: h.drop(rep))
                i.add_func("digest-file", guarded(h.digest_file))
                i.add_func("describe-converter", guarded(h.describe_converter))
                i.add_func("run-converter", guarded(h.run_converter))
                i.add_func("mount-image", guarded(h.mount_image))
                i.add_func("[method]mounted-image.install", guarded(h.install))
                i.add_func("[method]mounted-image.unmount", guarded(lambda _m: None))
                i.add_func("publish", guarded(h.publish))
                i.add_func("remove", guarded(h.remove))
                i.add_func("record-use", guarded(h.record_use))
                i.add_func("probe", guarded(h.probe))
                i.add_func("try-lock", guarded(h.try_lock))
                i.add_func("lock", guarded(h.lock))
                i.add_func("fsck", guarded(h.fsck))
                i.add_func("fetch-manifest", guarded(h.fetch_manifest))
                i.add_func("fetch-blobs", guarded(h.fetch_blobs))
                i.add_func("inspect-daemon-image", guarded(h.inspect_daemon_image))
                i.add_func("export-daemon-image", guarded(h.export_daemon_image))
                for name in ("remote-manifest", "remote-blob", "remote-image", "remote-push-image",
                             "remote-push-blob", "remote-push-manifest"):
                    i.add_func(name, guarded(h.remote))
                i.add_func("digest-image", guarded(h.digest_image))
                i.add_func("[method]build-lock.token", guarded(h.token))
                i.add_func("[method]build-lock.fail", guarded(lambda _lock, _reason: None))

    def call(self, name: str, *args: Any) -> Any:
        """Calls export `name` of `rootfs:cache/cache` in a fresh Store, then
        releases whatever the guest still held (all of it after a trap)."""
        store = Store(self.engine)
        wasi = WasiConfig()
        # The same preopens as the Rust host, read-only (`fs_mutable=False`):
        # the cache at /cache, each source root at its own path.
        wasi.preopen_dir(self.host.cache_dir, "/cache", False)
        for root in self.host.source_roots:
            wasi.preopen_dir(root, root, False)
        store.set_wasi(wasi)
        try:
            instance = self.linker.instantiate(store, self.component)
            iface = instance.get_export_index(store, CACHE)
            func = instance.get_func(store, instance.get_export_index(store, name, iface))
            result = func(store, *args)
            func.post_return(store)
        finally:
            self.host.release_all()
        if isinstance(result, Variant):
            raise Refused(result)
        return result

    def convert(self, source: str, agent: str, size: Optional[int] = None, converter: str = "exact") -> Record:
        request = record(source=source, agent=agent, size=size, converter=converter, platform=None, pull=None, remote=None)
        return self.call("convert", request)

    def list_entries(self) -> List[Record]:
        return self.call("list-entries")

    def sweep(self) -> Record:
        return self.call("sweep")

    def inspect(self, image: str) -> Record:
        return self.call("inspect", image)
