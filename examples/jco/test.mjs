// The component under Node.js: the bundled overlay2 example converts in a
// bare cache directory, the second request is a hit with the same image, a
// denied path stays denied, sweep removes a stale lock file, a trap leaves
// nothing held, and the preopens are read-only.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as shim from '@bytecodealliance/preview2-shim';
import { open } from './run.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const source = fs.realpathSync(path.join(repo, 'examples/overlay2/c81e4f2a6b9d0c3e5f7a1b2d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d2e'));
const agent = fs.realpathSync(path.join(repo, 'examples/vm-agent'));
// A bare cache directory: the host creates images/, tmp/ and locks/.
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rootfs-cache-jco-'));
assert.deepEqual(fs.readdirSync(cacheDir), []);

const { cache, host } = await open({ cacheDir, sourceRoot: path.dirname(source), agents: [agent] });
assert.deepEqual(fs.readdirSync(cacheDir).sort(), ['images', 'locks', 'tmp']);
const request = { source, agent, converter: 'exact', size: 16n << 20n, platform: undefined, pull: undefined, remote: undefined };
const tag = (e) => (e.payload ?? e).tag;

const first = await cache.convert(request);
assert.equal(first.cached, false);
assert.match(first.key, /^[0-9a-f]{64}$/);
assert.equal(first.image, `images/${first.key}.ext4`);
assert.ok(fs.statSync(path.join(cacheDir, first.image)).size === 16 << 20);
assert.deepEqual(host.installs.map((i) => [i.target, i.mode]), [['/sbin/vm-agent', 0o755]]);
assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'locks')), [], 'a dropped lock left its file');

const second = await cache.convert(request);
assert.equal(second.cached, true, 'the second request was not a hit');
assert.equal(second.image, first.image);
assert.equal(host.installs.length, 1, 'a hit installed the agent again');

const entries = await cache.listEntries();
assert.equal(entries.length, 1);
assert.equal(entries[0].problem, undefined);

await assert.rejects(cache.convert({ ...request, agent: '/etc/hostname' }), (e) => tag(e) === 'denied');
// A source outside the host's roots: the guest's first probe is refused.
await assert.rejects(cache.convert({ ...request, source: '/nonexistent' }), (e) => tag(e) === 'denied');

// The probe shows only what the preopens show.
const [outside, dotdot, link] = host.probe([
  { path: '/etc/hostname', readBytes: 0 },
  { path: `${path.dirname(source)}/../x`, readBytes: 0 },
  { path: `${source}/link`, readBytes: 256 },
]);
assert.equal(outside.tag, 'err');
assert.equal(outside.val.tag, 'denied');
assert.equal(dotdot.val.tag, 'invalid-request');
assert.equal(link.tag, 'ok');
assert.equal(link.val.kind, 'file');
assert.equal(Buffer.from(link.val.head).toString().trim(), fs.readFileSync(`${source}/link`, 'utf8').trim());

// A stale lock file (its holder died): sweep takes and drops the lock, which removes it.
const stale = path.join(cacheDir, 'locks', `${'ab'.repeat(32)}.lock`);
fs.writeFileSync(stale, '');
const swept = await cache.sweep();
assert.equal(swept.staleLocks, 1);
assert.ok(!fs.existsSync(stale), 'sweep reported a stale lock and left its file');

// A host function that throws traps the guest mid-build, holding a lock and a
// temporary image: the host releases both, and the next call gets a fresh instance.
const mountImage = host.mountImage;
host.mountImage = () => {
  throw new Error('a bug in the host');
};
await assert.rejects(cache.convert({ ...request, size: 32n << 20n }), /a bug in the host/);
host.mountImage = mountImage;
assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'tmp')), [], 'a trap left a temporary image');
assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'locks')), [], 'a trap left a lock file');
assert.equal(host.locks.size, 0, 'a trap left a lock held');
assert.equal((await cache.convert({ ...request, size: 32n << 20n })).cached, false);

// inspect: a cache-relative path works; an absolute one under no preopen says what to do.
assert.equal((await cache.inspect(first.image)).magic, true);
await assert.rejects(cache.inspect('/var/tmp/elsewhere.ext4'), (e) => tag(e) === 'invalid-request' && /preopen/.test((e.payload ?? e).val));

// preview2-shim has no read-only preopens: the host refuses every WASI write.
const [[cacheRoot]] = shim.filesystem.preopens.getDirectories();
assert.throws(() => cacheRoot.openAt({}, 'tmp/x', { create: true }, { write: true }), (e) => e === 'read-only');
assert.throws(() => cacheRoot.unlinkFileAt(first.image), (e) => e === 'read-only');
assert.ok(fs.existsSync(path.join(cacheDir, first.image)));

fs.rmSync(cacheDir, { recursive: true, force: true });
console.log('jco: converted, hit on the second call, denied what the host does not allow, swept a stale lock, released after a trap');
