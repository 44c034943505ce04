// A host adapter for the rootfs-cache component, written in JavaScript.
//
// It implements `rootfs:cache/host@0.5.0` for Node.js: publishing, removal,
// use records and fsck are real (fs, child_process); the converter writes a
// synthetic ext4 superblock and the "mount" records the agent install, like
// the Rust fake adapter, so no root is needed. Every path the guest names is
// checked the way the Rust host's policy checks it: a plain file name
// directly under tmp/ or images/ of the cache for changes, and for `probe`
// (read-only) a path under the cache or one of `sourceRoots`.
//
// What the WIT asks of every host, done here: `createHost` creates images/,
// tmp/ and locks/ in the cache; a build lock is the file locks/<key>.lock,
// created when taken and removed when dropped (the locks themselves are
// in-process only: Node.js has no flock, so this host must be the cache's
// only process); and `releaseAll` releases, after a trap, what the guest
// still held (locks, mounts, temporary images), as dropping would have.
import { createHash, randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A WIT `error` value: jco turns a thrown one into the guest's `Err`. */
const err = (tag, val) => ({ tag, val });

const NAME = /^(tmp|images)\/[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$/;
const KEY = /^[0-9a-f]{64}$/;

/** Most paths one `probe` call may name, most bytes one path may read, most bytes in all. */
const MAX_PROBE_PATHS = 256;
const MAX_READ_BYTES = 65536;
const MAX_TOTAL_READ_BYTES = 1 << 20;

export function createHost({ cacheDir, sourceRoots = [], agents = null, log = () => {} }) {
  // The guest cannot create directories; every capability that writes expects these.
  for (const sub of ['images', 'tmp', 'locks']) fs.mkdirSync(path.join(cacheDir, sub), { recursive: true });
  const locks = new Map(); // key -> token
  const installs = [];
  const live = new Set(); // build locks and mounts the guest holds
  const unpublished = new Set(); // temporary images converted and neither published nor removed
  let counter = 0;

  const inCache = (rel, areas = ['tmp', 'images']) => {
    if (!NAME.test(rel) || !areas.includes(rel.split('/')[0])) {
      throw err('denied', { rule: 'cache_dir', detail: `${JSON.stringify(rel)} is not a file of ${areas.join(' or ')}` });
    }
    return path.join(cacheDir, rel);
  };
  const sha256 = (file) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const io = (what, e) => (e.code === 'ENOENT' ? err('not-found', `${what}: ${e.message}`) : err('io', `${what}: ${e.message}`));

  /**
   * Where `probe` looks for `p`: an absolute path under one of the source
   * roots, or a cache-relative one. Like the Rust host, it refuses `..` and
   * any parent that resolves (through symlinks) outside its root.
   */
  const probeTarget = (p) => {
    let root = cacheDir;
    let rel = p;
    if (p.startsWith('/')) {
      root = sourceRoots.filter((r) => p === r || p.startsWith(`${r}/`)).sort((a, b) => b.length - a.length)[0];
      if (root === undefined) throw err('denied', { rule: 'source_roots', detail: `${p} is outside the source of this request` });
      rel = p.slice(root.length + 1);
    }
    const parts = rel === '' ? [] : rel.split('/');
    if (parts.some((part) => part === '' || part === '.' || part === '..')) {
      throw err('invalid-request', `${p} is not a normalised path`);
    }
    const full = path.join(root, ...parts);
    if (parts.length > 1) {
      const parent = fs.realpathSync(path.dirname(full));
      const realRoot = fs.realpathSync(root);
      if (parent !== realRoot && !parent.startsWith(`${realRoot}/`)) {
        throw err('denied', { rule: 'source_roots', detail: `${p} leads outside the directories of this request` });
      }
    }
    return full;
  };

  const probeOne = ({ path: p, readBytes }) => {
    if (readBytes > MAX_READ_BYTES) throw err('invalid-request', `probe asked for ${readBytes} bytes of ${p}; the limit is ${MAX_READ_BYTES}`);
    const full = probeTarget(p);
    const st = fs.lstatSync(full, { bigint: true });
    const kind = st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'other';
    let head = new Uint8Array(0);
    if (kind === 'file' && readBytes > 0) {
      const want = Number(st.size < BigInt(readBytes) ? st.size : BigInt(readBytes));
      const fd = fs.openSync(full, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
      try {
        const buf = Buffer.alloc(want);
        let got = 0;
        for (let n; got < want && (n = fs.readSync(fd, buf, got, want - got, got)) > 0; ) got += n;
        head = new Uint8Array(buf.subarray(0, got));
      } finally {
        fs.closeSync(fd);
      }
    }
    return {
      kind,
      size: st.size,
      modifiedNs: st.mtimeNs,
      createdNs: st.birthtimeNs,
      linkTarget: kind === 'symlink' ? new Uint8Array(fs.readlinkSync(full, { encoding: 'buffer' })) : undefined,
      head,
    };
  };

  /** locks/<key>.lock: created when the lock is taken, removed when it is dropped. */
  const lockFile = (key) => path.join(cacheDir, 'locks', `${key}.lock`);

  class BuildLock {
    constructor(key) {
      try {
        fs.closeSync(fs.openSync(lockFile(key), 'a'));
      } catch (e) {
        throw io(`locks/${key}.lock`, e);
      }
      this.key = key;
      this.tokenValue = `${process.pid}-${counter++}`;
      locks.set(key, this.tokenValue);
      live.add(this);
    }
    token() {
      return this.tokenValue;
    }
    fail(reason) {
      log('build failed', reason);
    }
    [Symbol.dispose]() {
      live.delete(this);
      if (locks.get(this.key) !== this.tokenValue) return;
      // Remove the file, then release: how `sweep` clears a stale lock file.
      fs.rmSync(lockFile(this.key), { force: true });
      locks.delete(this.key);
    }
  }

  class MountedImage {
    constructor(image) {
      this.image = image;
      live.add(this);
    }
    install(file) {
      if (agents && !agents.includes(file.source)) throw err('denied', { rule: 'agents', detail: file.source });
      if (sha256(file.source) !== file.sha256) throw err('inject-failed', 'the agent changed during the build');
      installs.push({ image: this.image, ...file });
    }
    unmount() {}
    [Symbol.dispose]() {
      live.delete(this);
    }
  }

  /** A superblock that passes the guest's checks: `size` bytes, 4 KiB blocks. */
  const syntheticExt4 = (file, size) => {
    const blocks = Number(size / 4096n);
    const groups = Math.max(1, Math.ceil(blocks / 32768));
    const sb = Buffer.alloc(1024);
    sb.writeUInt32LE(groups * 128, 0x00);
    sb.writeUInt32LE(blocks, 0x04);
    sb.writeUInt32LE(Math.floor(blocks / 2), 0x0c);
    sb.writeUInt32LE(groups * 128 - 11, 0x10);
    sb.writeUInt32LE(2, 0x18);
    sb.writeUInt32LE(32768, 0x20);
    sb.writeUInt32LE(128, 0x28);
    sb.writeUInt16LE(0xef53, 0x38);
    sb.writeUInt32LE(1, 0x4c);
    sb.writeUInt16LE(256, 0x58);
    const fd = fs.openSync(file, 'wx');
    try {
      fs.ftruncateSync(fd, Number(size));
      fs.writeSync(fd, sb, 0, sb.length, 1024);
    } finally {
      fs.closeSync(fd);
    }
  };

  return {
    installs,
    locks,
    BuildLock,
    MountedImage,
    /**
     * After a trap: releases what the guest held, as dropping it would have
     * (unmounts, locks and their files, temporary images it neither published
     * nor removed). A call that returned normally leaves nothing to release.
     */
    releaseAll() {
      for (const held of [...live]) held[Symbol.dispose]();
      for (const rel of unpublished) fs.rmSync(path.join(cacheDir, rel), { force: true });
      unpublished.clear();
    },
    digestFile(p) {
      if (agents && !agents.includes(p)) throw err('denied', { rule: 'agents', detail: p });
      let st;
      try {
        st = fs.statSync(p);
      } catch (e) {
        throw io(`agent ${p}`, e);
      }
      if (!st.isFile()) throw err('invalid-request', `agent ${p} is not a regular file`);
      return { sha256: sha256(p), size: BigInt(st.size) };
    },
    probe(requests) {
      if (requests.length > MAX_PROBE_PATHS) {
        throw err('invalid-request', `probe was given ${requests.length} paths; the limit is ${MAX_PROBE_PATHS}`);
      }
      const total = requests.reduce((sum, r) => sum + r.readBytes, 0);
      if (total > MAX_TOTAL_READ_BYTES) {
        throw err('invalid-request', `probe asked for ${total} bytes in all; the limit is ${MAX_TOTAL_READ_BYTES}`);
      }
      return requests.map((request) => {
        try {
          return { tag: 'ok', val: probeOne(request) };
        } catch (e) {
          return { tag: 'err', val: e.tag ? e : io(request.path, e) };
        }
      });
    },
    describeConverter(name) {
      if (name !== 'exact' && name !== 'oci2rootfs') throw err('invalid-request', `converter ${name} is not available here`);
      return { identity: 'js-synthetic 1', installsAgent: false };
    },
    runConverter(job) {
      const out = inCache(job.output, ['tmp']);
      unpublished.add(job.output);
      syntheticExt4(out, job.size ?? 8n << 20n);
      // The length of the image created.
      return BigInt(fs.statSync(out).size);
    },
    mountImage(image) {
      inCache(image, ['tmp']);
      return new MountedImage(image);
    },
    publish(staged, image, manifest, manifestJson) {
      const [s, i, m] = [inCache(staged, ['tmp']), inCache(image, ['images']), inCache(manifest, ['images'])];
      try {
        const fd = fs.openSync(s, 'r+');
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        const tmp = `${s}.json.tmp`;
        fs.writeFileSync(tmp, manifestJson + '\n');
        fs.renameSync(s, i);
        fs.renameSync(tmp, m);
        const dir = fs.openSync(path.join(cacheDir, 'images'), 'r');
        fs.fsyncSync(dir);
        fs.closeSync(dir);
      } catch (e) {
        throw io('publishing', e);
      }
      unpublished.delete(staged);
    },
    remove(rel) {
      fs.rmSync(inCache(rel), { force: true, recursive: false });
      unpublished.delete(rel);
    },
    recordUse(manifest) {
      const m = inCache(manifest, ['images']);
      fs.utimesSync(m, new Date(), fs.statSync(m).mtime);
    },
    tryLock(key) {
      if (!KEY.test(key)) throw err('invalid-request', `${key} is not a cache key`);
      return locks.has(key) ? undefined : new BuildLock(key);
    },
    lock(key) {
      if (!KEY.test(key)) throw err('invalid-request', `${key} is not a cache key`);
      // One thread: nobody else can hold it while this guest runs.
      return new BuildLock(key);
    },
    // Images by name: this adapter has no network, so it refuses them as a
    // policy would (the Rust host pulls; see the README's `docker://`).
    fetchManifest(reference) {
      throw err('denied', { rule: 'registries', detail: `${reference}: the jco example host pulls nothing (no network)` });
    },
    fetchBlobs(reference) {
      throw err('denied', { rule: 'registries', detail: `${reference}: the jco example host pulls nothing (no network)` });
    },
    // Images of the local Docker engine: this adapter reaches none.
    inspectDaemonImage(name) {
      throw err('denied', { rule: 'docker_engines', detail: `${name}: the jco example host reaches no Docker engine` });
    },
    exportDaemonImage(name) {
      throw err('denied', { rule: 'docker_engines', detail: `${name}: the jco example host reaches no Docker engine` });
    },
    // A remote cache: this adapter has no network, so it refuses every call
    // as a policy would (the Rust host shares entries through a registry).
    remoteManifest(tag) {
      throw err('denied', { rule: 'remote', detail: `${tag}: the jco example host has no remote cache` });
    },
    remoteBlob(digest) {
      throw err('denied', { rule: 'remote', detail: `${digest}: the jco example host has no remote cache` });
    },
    remoteImage(digest) {
      throw err('denied', { rule: 'remote', detail: `${digest}: the jco example host has no remote cache` });
    },
    remotePushImage(image) {
      throw err('denied', { rule: 'remote', detail: `${image}: the jco example host has no remote cache` });
    },
    remotePushBlob() {
      throw err('denied', { rule: 'remote', detail: 'the jco example host has no remote cache' });
    },
    remotePushManifest(tag) {
      throw err('denied', { rule: 'remote', detail: `${tag}: the jco example host has no remote cache` });
    },
    digestImage(image) {
      const p = inCache(image, ['tmp', 'images']);
      let st;
      try {
        st = fs.statSync(p);
      } catch (e) {
        throw io(image, e);
      }
      return { sha256: sha256(p), size: BigInt(st.size) };
    },
    fsck(image) {
      const out = spawnSync('e2fsck', ['-fn', inCache(image, ['images'])], { encoding: 'utf8' });
      if (out.error) throw io('e2fsck', out.error);
      return { clean: out.status === 0, exitStatus: out.status ?? -1, outputTail: (out.stdout + out.stderr).slice(-1024) };
    },
  };
}

export { randomUUID };
