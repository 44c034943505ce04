"""The component under wasmtime-py: the bundled overlay2 example converts,
the second request is a hit with the same image, and a denied path stays
denied.

    python3 examples/wasmtime-py/test.py    (ROOTFS_CACHE_COMPONENT overrides the component)
"""

import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import Cache, Host, Refused  # noqa: E402

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
        host = Host(cache_dir, [os.path.dirname(SOURCE)], agents=[AGENT])
        cache = Cache(COMPONENT, host)

        first = cache.convert(SOURCE, AGENT, size=16 << 20)
        assert first.cached is False
        assert re.fullmatch(r"[0-9a-f]{64}", first.key), first.key
        assert first.image == f"images/{first.key}.ext4", first.image
        assert os.stat(os.path.join(cache_dir, first.image)).st_size == 16 << 20
        assert [(i["target"], i["mode"]) for i in host.installs] == [("/sbin/vm-agent", 0o755)], host.installs

        second = cache.convert(SOURCE, AGENT, size=16 << 20)
        assert second.cached is True, "the second request was not a hit"
        assert second.image == first.image
        assert len(host.installs) == 1, "a hit installed the agent again"

        entries = cache.list_entries()
        assert len(entries) == 1 and entries[0].problem is None, [vars(e) for e in entries]

        # An agent the host does not allow, and a source outside its roots.
        expect_refused("denied", lambda: cache.convert(SOURCE, "/etc/hostname", size=16 << 20))
        expect_refused("denied", lambda: cache.convert("/nonexistent", AGENT, size=16 << 20))
        print("wasmtime-py: converted, hit on the second call, denied what the host does not allow")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
