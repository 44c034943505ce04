// Runs the rootfs-cache component under Node.js with the JavaScript host:
//   node run.mjs CACHE_DIR SOURCE AGENT
import { readFile } from 'node:fs/promises';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as shim from '@bytecodealliance/preview2-shim';
import { instantiate } from './out/rootfs-cache.js';
import { createHost } from './host.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * Makes every preopen read-only. preview2-shim has no read-only preopens (it
 * opens what the guest asks for with the host's own rights), so every
 * `wasi:filesystem` call that could change something fails with `read-only`,
 * as it does under wasmtime with read-only preopens. The guest never writes
 * through WASI; this keeps a guest that tried from writing past the policy.
 */
export function makeFilesystemReadOnly() {
  const { Descriptor } = shim.filesystem.types;
  if (Descriptor.prototype.readOnlyByRootfsCache) return;
  const refuse = () => {
    throw 'read-only';
  };
  for (const method of [
    'writeViaStream', 'appendViaStream', 'setSize', 'setTimes', 'write', 'createDirectoryAt', 'setTimesAt',
    'linkAt', 'symlinkAt', 'removeDirectoryAt', 'renameAt', 'unlinkFileAt',
  ]) {
    Descriptor.prototype[method] = refuse;
  }
  const openAt = Descriptor.prototype.openAt;
  Descriptor.prototype.openAt = function (pathFlags, p, openFlags, descriptorFlags) {
    if (openFlags.create || openFlags.truncate || openFlags.exclusive || descriptorFlags.write || descriptorFlags.mutateDirectory) {
      refuse();
    }
    return openAt.call(this, pathFlags, p, openFlags, descriptorFlags);
  };
  Descriptor.prototype.readOnlyByRootfsCache = true;
}

/**
 * The component with the cache and `sourceRoot` preopened read-only, and a
 * host for them. Like the Rust host, every call runs in a fresh instance and
 * ends with `host.releaseAll()`: after a trap, that releases what the guest
 * held (its locks and their files, mounts, temporary images), and the
 * trapped instance is never called again. The calls return promises.
 */
export async function open({ cacheDir, sourceRoot, agents }) {
  const host = createHost({ cacheDir, sourceRoots: [sourceRoot], agents });
  // The same preopens as the Rust host: the cache at /cache, the source root at its own path.
  shim.filesystem._setPreopens({ '/cache': cacheDir, [sourceRoot]: sourceRoot });
  makeFilesystemReadOnly();
  const camel = (s) => s.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  // jco's instantiation mode looks imports up by unversioned names.
  const imports = { 'rootfs:cache/host': host };
  for (const [pkg, ifaces] of Object.entries({
    cli: ['environment', 'exit', 'stderr', 'stdin', 'stdout', 'terminal-input', 'terminal-output', 'terminal-stderr', 'terminal-stdin', 'terminal-stdout'],
    clocks: ['monotonic-clock', 'wall-clock'],
    filesystem: ['preopens', 'types'],
    io: ['error', 'streams'],
  })) {
    for (const iface of ifaces) imports[`wasi:${pkg}/${iface}`] = shim[pkg][camel(iface)];
  }
  const modules = new Map();
  const loader = (name) => {
    if (!modules.has(name)) modules.set(name, readFile(path.join(here, 'out', name)).then((b) => WebAssembly.compile(b)));
    return modules.get(name);
  };
  const call = (name) => async (...args) => {
    const { cache } = await instantiate(loader, imports);
    try {
      return cache[name](...args);
    } finally {
      host.releaseAll();
    }
  };
  const cache = Object.fromEntries(['convert', 'inspect', 'listEntries', 'sweep', 'gc', 'verify'].map((n) => [n, call(n)]));
  return { cache, host };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [cacheDir, source, agent] = process.argv.slice(2);
  if (!agent) {
    console.error('usage: node run.mjs CACHE_DIR SOURCE AGENT');
    process.exit(2);
  }
  const src = fs.realpathSync(source);
  // The source root: an OCI layout itself, or an overlay2 layer's parent (the guest reads its siblings and l/).
  const sourceRoot = fs.existsSync(path.join(src, 'oci-layout')) ? src : path.dirname(src);
  fs.mkdirSync(cacheDir, { recursive: true });
  const { cache } = await open({ cacheDir: fs.realpathSync(cacheDir), sourceRoot, agents: [fs.realpathSync(agent)] });
  try {
    const outcome = await cache.convert({ source: src, agent: fs.realpathSync(agent), converter: 'exact', size: undefined, platform: undefined, pull: undefined, remote: undefined });
    console.log(JSON.stringify({ image: outcome.image, key: outcome.key, cached: outcome.cached }));
  } catch (e) {
    console.error(`error: ${JSON.stringify(e.payload ?? e)}`);
    process.exit(1);
  }
}
