// A host adapter for the rootfs-cache component, written in JavaScript.
//
// It implements `rootfs:cache/host@0.1.0` for Node.js: publishing, removal,
// use records and fsck are real (fs, child_process); the converter writes a
// synthetic ext4 superblock and the "mount" records the agent install, like
// the Rust fake adapter, so no root is needed. Every path the guest names is
// checked the way the Rust host's policy checks it: a plain file name
// directly under tmp/ or images/ of the cache.
import { createHash, randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A WIT `error` value: jco turns a thrown one into the guest's `Err`. */
const err = (tag, val) => ({ tag, val });

const NAME = /^(tmp|images)\/[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$/;
const KEY = /^[0-9a-f]{64}$/;

export function createHost({ cacheDir, agents = null, log = () => {} }) {
  const locks = new Map(); // key -> token
  const installs = [];
  let counter = 0;

  const inCache = (rel, areas = ['tmp', 'images']) => {
    if (!NAME.test(rel) || !areas.includes(rel.split('/')[0])) {
      throw err('denied', { rule: 'cache_dir', detail: `${JSON.stringify(rel)} is not a file of ${areas.join(' or ')}` });
    }
    return path.join(cacheDir, rel);
  };
  const sha256 = (file) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const io = (what, e) => (e.code === 'ENOENT' ? err('not-found', `${what}: ${e.message}`) : err('io', `${what}: ${e.message}`));

  class BuildLock {
    constructor(key) {
      this.key = key;
      this.tokenValue = `${process.pid}-${counter++}`;
      locks.set(key, this.tokenValue);
    }
    token() {
      return this.tokenValue;
    }
    fail(reason) {
      log('build failed', reason);
    }
    [Symbol.dispose]() {
      if (locks.get(this.key) === this.tokenValue) locks.delete(this.key);
    }
  }

  class MountedImage {
    constructor(image) {
      this.image = image;
    }
    install(file) {
      if (agents && !agents.includes(file.source)) throw err('denied', { rule: 'agents', detail: file.source });
      if (sha256(file.source) !== file.sha256) throw err('inject-failed', 'the agent changed during the build');
      installs.push({ image: this.image, ...file });
    }
    unmount() {}
    [Symbol.dispose]() {}
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
    BuildLock,
    MountedImage,
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
    describeConverter(name) {
      if (name !== 'exact' && name !== 'oci2rootfs') throw err('invalid-request', `converter ${name} is not available here`);
      return { identity: 'js-synthetic 1', installsAgent: false };
    },
    runConverter(job) {
      const out = inCache(job.output, ['tmp']);
      syntheticExt4(out, job.size ?? 8n << 20n);
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
    },
    remove(rel) {
      fs.rmSync(inCache(rel), { force: true, recursive: false });
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
    fsck(image) {
      const out = spawnSync('e2fsck', ['-fn', inCache(image, ['images'])], { encoding: 'utf8' });
      if (out.error) throw io('e2fsck', out.error);
      return { clean: out.status === 0, exitStatus: out.status ?? -1, outputTail: (out.stdout + out.stderr).slice(-1024) };
    },
  };
}

export { randomUUID };
