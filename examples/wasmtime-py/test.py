"""The component under wasmtime-py: the bundled overlay2 example converts in
a bare cache directory, the second request is a hit with the same image, a
denied path stays denied, sweep removes a stale lock file, a trap leaves
nothing held, and inspect of a path under no preopen says what to do.

    python3 examples/wasmtime-py/test.py    (ROOTFS_CACHE_COMPONENT overrides the component)
"""

import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import Cache, Host, Refused, birth_ns, record  # noqa: E402

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
SOURCE = os.path.join(REPO, "examples/overlay2/c81e4f2a6b9d0c3e5f7a1b2d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d2e")
AGENT = os.path.join(REPO, "examples/vm-agent")
COMPONENT = os.environ.get("ROOTFS_CACHE_COMPONENT") or os.path.join(REPO, "host/component/rootfs-cache.wasm")


def expect_refused(tag, fn):
    try:
        fn()
    except Refused as r:
        assert r.value.tag == tag, f"expected {tag}, got {r.value.tag}: {r.value.payload}"
        return
    raise AssertionError(f"expected a {tag} error")


def main():
    cache_dir = tempfile.mkdtemp(prefix="rootfs-cache-py-")
    try:
        # A bare cache directory: the host creates images/, tmp/ and locks/.
        assert os.listdir(cache_dir) == []
        host = Host(cache_dir, [os.path.dirname(SOURCE)], agents=[AGENT])
        assert sorted(os.listdir(cache_dir)) == ["images", "locks", "tmp"], os.listdir(cache_dir)
        cache = Cache(COMPONENT, host)
        locks = os.path.join(cache_dir, "locks")

        first = cache.convert(SOURCE, AGENT, size=16 << 20)
        assert first.cached is False
        assert re.fullmatch(r"[0-9a-f]{64}", first.key), first.key
        assert first.image == f"images/{first.key}.ext4", first.image
        assert os.stat(os.path.join(cache_dir, first.image)).st_size == 16 << 20
        assert [(i["target"], i["mode"]) for i in host.installs] == [("/sbin/vm-agent", 0o755)], host.installs
        assert os.listdir(locks) == [], "a dropped lock left its file"

        second = cache.convert(SOURCE, AGENT, size=16 << 20)
        assert second.cached is True, "the second request was not a hit"
        assert second.image == first.image
        assert len(host.installs) == 1, "a hit installed the agent again"

        entries = cache.list_entries()
        assert len(entries) == 1 and entries[0].problem is None, [vars(e) for e in entries]

        # An agent the host does not allow, and a source outside its roots.
        expect_refused("denied", lambda: cache.convert(SOURCE, "/etc/hostname", size=16 << 20))
        expect_refused("denied", lambda: cache.convert("/nonexistent", AGENT, size=16 << 20))

        # A stale lock file (its holder died): sweep takes and drops the lock, which removes it.
        stale = os.path.join(locks, "ab" * 32 + ".lock")
        open(stale, "w").close()
        swept = cache.sweep()
        assert getattr(swept, "stale-locks") == 1, vars(swept)
        assert not os.path.exists(stale), "sweep reported a stale lock and left its file"

        # A host function that raises traps the guest mid-build, holding a
        # lock and a temporary image: the host releases both.
        broken = Host(cache_dir, [os.path.dirname(SOURCE)], agents=[AGENT])

        def mount_image(_image):
            raise RuntimeError("a bug in the host")

        broken.mount_image = mount_image
        try:
            Cache(COMPONENT, broken).convert(SOURCE, AGENT, size=32 << 20)
            raise AssertionError("the trap was not reported")
        except Refused:
            raise
        except Exception:  # wasmtime-py's trap
            pass
        assert os.listdir(os.path.join(cache_dir, "tmp")) == [], "a trap left a temporary image"
        assert os.listdir(locks) == [] and broken.locks == {}, "a trap left a lock held"
        assert cache.convert(SOURCE, AGENT, size=32 << 20).cached is False

        # inspect: a cache-relative path works; an absolute one under no preopen says what to do.
        assert cache.inspect(first.image).magic is True
        try:
            cache.inspect("/var/tmp/elsewhere.ext4")
            raise AssertionError("inspect of a path under no preopen succeeded")
        except Refused as r:
            assert r.value.tag == "invalid-request" and "preopen" in r.value.payload, r.value.payload

        # created-ns is the birth time, as statx reports it (0 where unknown).
        probed = host.probe_one(record(path=SOURCE, read_bytes=0))
        assert getattr(probed, "created-ns") == birth_ns(SOURCE)
        print(
            "wasmtime-py: converted, hit on the second call, denied what the host does not allow, "
            "swept a stale lock, released after a trap"
        )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
