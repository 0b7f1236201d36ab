/**
 * Bundles each program the package starts into one module: the CLI, its daemon, the queue worker,
 * and the built-in targets and filters those load by URL. Why: Node's ESM loader resolves and
 * links each module on its own, a cost paid again by every CLI command, every daemon and every
 * queue thread (docs/performance.md#decisions, "One bundle per program").
 *
 * dist/bundle mirrors dist/src: each program's bundle sits where its entry module sits, and every
 * bundled module sees `import.meta.url` as its own place in the mirror, so the URLs the code builds
 * from it (the daemon's script, the queue worker's, a built-in target's, the native addon's and
 * package.json's) name the bundles, and the same files, as they do unbundled.
 */
import { build, type Plugin } from 'esbuild';
import { readFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUILT_IN_FILTERS, BUILT_IN_TARGETS } from '../src/targets/registry.js';
import { REPO_ROOT } from './lib/common.js';

const SRC = join(REPO_ROOT, 'dist', 'src');
const OUT = join(REPO_ROOT, 'dist', 'bundle');

/** The entry modules, relative to dist/src. */
const ENTRIES = [
  'cli/main.js',
  'cli/daemon-main.js',
  'ublk/queue/queue-worker.js',
  // The registry's URLs, imported from here, name the modules in dist/src.
  ...[...Object.values(BUILT_IN_TARGETS), ...Object.values(BUILT_IN_FILTERS)].map((url) =>
    relative(SRC, fileURLToPath(url)),
  ),
];

/** Rewrites `import.meta.url` in each module to its place in the mirror, from the bundle's own. */
function mirroredImportMeta(outfile: string): Plugin {
  return {
    name: 'mirrored-import-meta',
    setup(b) {
      b.onLoad({ filter: /\.js$/ }, async ({ path }) => {
        const source = await readFile(path, 'utf8');
        if (!path.startsWith(SRC + '/') || !source.includes('import.meta.url')) return undefined;
        const mirrored = relative(dirname(outfile), join(OUT, relative(SRC, path)));
        const url = `new URL(${JSON.stringify(mirrored)}, import.meta.url).href`;
        return { contents: source.replaceAll('import.meta.url', url), loader: 'js' };
      });
    },
  };
}

await Promise.all(
  ENTRIES.map((entry) => {
    const outfile = join(OUT, entry);
    return build({
      entryPoints: [join(SRC, entry)],
      outfile,
      bundle: true,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      // The native addon is loaded by a computed path through createRequire: nothing to bundle.
      external: ['*.node'],
      plugins: [mirroredImportMeta(outfile)],
      logLevel: 'warning',
    });
  }),
);
