/**
 * The layers of src/, lowest first: the top-level modules (sys, errors...), uring, ublk, targets,
 * cli, and the package's index over all. A module imports only from its own layer or below.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

// This file runs as dist/test/unit/layering.test.js; the sources are the repository's src/.
const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../../../src');
const LAYERS = ['', 'uring', 'ublk', 'targets', 'cli'];

/** A module's layer: its folder under src/, the top-level ones at the bottom, index.ts on top. */
function layerOf(path: string): number {
  const rel = relative(SRC, path);
  if (rel === 'index.ts') return LAYERS.length;
  const folder = rel.includes('/') ? rel.split('/')[0] : '';
  const layer = LAYERS.indexOf(folder);
  assert.ok(layer >= 0, `src/${rel} is in no layer: add its folder to LAYERS`);
  return layer;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

/**
 * Every relative import of a module (static, re-export, dynamic), with its line; and every module
 * it names by URL, `new URL('../x.js', import.meta.url)`, which it imports or hands to another
 * thread or process (a worker's script, a built-in target's module) as surely.
 */
function importsOf(path: string): { line: number; target: string }[] {
  const found: { line: number; target: string }[] = [];
  const text = readFileSync(path, 'utf8');
  const pattern = /(?:\bfrom\s*|\bimport\s*\(?\s*|\bnew\s+URL\s*\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const match of text.matchAll(pattern)) {
    const line = text.slice(0, match.index).split('\n').length;
    found.push({ line, target: resolve(dirname(path), match[1].replace(/\.js$/, '.ts')) });
  }
  return found;
}

function reversedImports(): string[] {
  const reversed: string[] = [];
  for (const path of sources(SRC)) {
    const layer = layerOf(path);
    for (const { line, target } of importsOf(path)) {
      if (!target.startsWith(SRC + '/')) continue;
      if (layerOf(target) > layer) {
        reversed.push(`src/${relative(SRC, path)}:${line} imports src/${relative(SRC, target)}`);
      }
    }
  }
  return reversed;
}

test('no module imports from a layer above its own', () => {
  assert.deepEqual(reversedImports(), []);
});

test('the check sees imports at all, and modules named by URL', () => {
  const targetsOf = (path: string) =>
    importsOf(join(SRC, path)).map((i) => relative(SRC, i.target));
  const ublkImports = targetsOf('ublk/queue/queue.ts');
  assert.ok(ublkImports.includes('errors.ts') && ublkImports.includes('ublk/queue/tag-states.ts'));
  assert.ok(targetsOf('ublk/device/device.ts').includes('ublk/queue/queue-worker.ts'));
  assert.ok(targetsOf('targets/registry.ts').includes('targets/loop.ts'));
});

test('no file name is repeated across src/ (index.ts excepted: each is its folder’s entry module)', () => {
  const byName = new Map<string, string[]>();
  for (const path of sources(SRC)) {
    const name = basename(path);
    if (name !== 'index.ts') byName.set(name, [...(byName.get(name) ?? []), relative(SRC, path)]);
  }
  assert.deepEqual(
    [...byName.values()].filter((paths) => paths.length > 1),
    [],
  );
});
