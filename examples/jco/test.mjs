// The component under Node.js: the bundled overlay2 example converts, the
// second request is a hit with the same image, and a denied path stays denied.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { open } from './run.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const source = fs.realpathSync(path.join(repo, 'examples/overlay2/c81e4f2a6b9d0c3e5f7a1b2d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d2e'));
const agent = fs.realpathSync(path.join(repo, 'examples/vm-agent'));
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rootfs-cache-jco-'));

const { cache, host } = await open({ cacheDir, sourceRoot: path.dirname(source), agents: [agent] });
const request = { source, agent, converter: 'exact', size: 16n << 20n, platform: undefined };

const first = cache.convert(request);
assert.equal(first.cached, false);
assert.match(first.key, /^[0-9a-f]{64}$/);
assert.equal(first.image, `images/${first.key}.ext4`);
assert.ok(fs.statSync(path.join(cacheDir, first.image)).size === 16 << 20);
assert.deepEqual(host.installs.map((i) => [i.target, i.mode]), [['/sbin/vm-agent', 0o755]]);

const second = cache.convert(request);
assert.equal(second.cached, true, 'the second request was not a hit');
assert.equal(second.image, first.image);
assert.equal(host.installs.length, 1, 'a hit installed the agent again');

const entries = cache.listEntries();
assert.equal(entries.length, 1);
assert.equal(entries[0].problem, undefined);

assert.throws(() => cache.convert({ ...request, agent: '/etc/hostname' }), (e) => (e.payload ?? e).tag === 'denied');
// A source outside the host's roots: the guest's first probe is refused.
assert.throws(() => cache.convert({ ...request, source: '/nonexistent' }), (e) => (e.payload ?? e).tag === 'denied');

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

fs.rmSync(cacheDir, { recursive: true, force: true });
console.log('jco: converted, hit on the second call, denied what the host does not allow');
