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

/** Instantiates the component with the cache and `sourceRoot` preopened. */
export async function open({ cacheDir, sourceRoot, agents }) {
  for (const sub of ['images', 'tmp', 'locks']) fs.mkdirSync(path.join(cacheDir, sub), { recursive: true });
  const host = createHost({ cacheDir, sourceRoots: [sourceRoot], agents });
  // The same preopens as the Rust host: the cache at /cache, the source root at its own path.
  shim.filesystem._setPreopens({ '/cache': cacheDir, [sourceRoot]: sourceRoot });
  const camel = (s) => s.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  const imports = { 'rootfs:cache/host': host };
  for (const [pkg, ifaces] of Object.entries({
    cli: ['environment', 'exit', 'stderr', 'stdin', 'stdout', 'terminal-input', 'terminal-output', 'terminal-stderr', 'terminal-stdin', 'terminal-stdout'],
    clocks: ['monotonic-clock', 'wall-clock'],
    filesystem: ['preopens', 'types'],
    io: ['error', 'streams'],
  })) {
    for (const iface of ifaces) imports[`wasi:${pkg}/${iface}`] = shim[pkg][camel(iface)];
  }
  const loader = async (name) => WebAssembly.compile(await readFile(path.join(here, 'out', name)));
  const component = await instantiate(loader, imports);
  return { cache: component.cache, host };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [cacheDir, source, agent] = process.argv.slice(2);
  if (!agent) {
    console.error('usage: node run.mjs CACHE_DIR SOURCE AGENT');
    process.exit(2);
  }
  const src = fs.realpathSync(source);
  const { cache } = await open({ cacheDir: fs.realpathSync(cacheDir), sourceRoot: path.dirname(src), agents: [fs.realpathSync(agent)] });
  try {
    const outcome = cache.convert({ source: src, agent: fs.realpathSync(agent), converter: 'exact', size: undefined, platform: undefined });
    console.log(JSON.stringify({ image: outcome.image, key: outcome.key, cached: outcome.cached }));
  } catch (e) {
    console.error(`error: ${JSON.stringify(e.payload ?? e)}`);
    process.exit(1);
  }
}
