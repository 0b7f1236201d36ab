/**
 * The bundles `npm run compile` writes to dist/bundle (scripts/bundle.ts): one per program the
 * package starts, and the URLs their code builds from import.meta.url name the bundles.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BUILT_IN_FILTERS, BUILT_IN_TARGETS } from '../../src/targets/registry.js';

// This file runs as dist/test/unit/bundle.test.js.
const DIST = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(DIST, 'bundle/cli/main.js');

const cli = (...args: string[]) =>
  spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

test('a bundle for the CLI, its daemon, the queue worker and every built-in target and filter', () => {
  // The registry's URLs name the modules in dist/src; each has its bundle at the same place in
  // dist/bundle.
  const modules = [...Object.values(BUILT_IN_TARGETS), ...Object.values(BUILT_IN_FILTERS)].map(
    (url) => relative(join(DIST, 'src'), fileURLToPath(url)),
  );
  for (const rel of [
    'cli/main.js',
    'cli/daemon-main.js',
    'ublk/queue/queue-worker.js',
    ...modules,
  ]) {
    const path = join(DIST, 'bundle', rel);
    assert.ok(existsSync(path), `${path} exists`);
  }
});

test('the bundled CLI reads package.json, loads a built-in target bundle and the native addon', () => {
  const version = cli('--version');
  assert.equal(version.status, 0, version.stderr);
  const pkg = JSON.parse(readFileSync(join(DIST, '../package.json'), 'utf8')) as {
    version: string;
  };
  assert.equal(version.stdout.trim(), `ublk-ts ${pkg.version}`);

  // help -t loop imports dist/bundle/targets/loop.js by the registry's URL, which imports sys.
  const help = cli('help', '-t', 'loop');
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /--buffered_io/);
});
