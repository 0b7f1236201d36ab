/**
 * Builds the native addons (binding.gyp) with node-gyp and copies each into
 * prebuilds/<platform>-<arch>/<target>.napi.<libc>.node: the layout and tags node-gyp-build, the
 * package's install step, looks for, so an install on a matching machine runs no compiler, and the
 * names src/native-addon.ts loads by. Run by `npm run compile`, and so by `npm pack`'s prepare.
 *
 * The addons use N-API only (NAPI_VERSION in binding.gyp), so one build serves every Node the
 * package supports. Not prebuildify: it keeps only the first .node file a build makes and names it
 * after the package, and with `--napi` and no target it fetches the newest Node's headers; this
 * builds against the headers node-gyp already uses here (nodedir, or its cache).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { arch, platform } from 'node:process';
import { libc as libcOfPrebuilds } from '../src/native-addon.js';
import { REPO_ROOT } from './lib/common.js';

const gyp = JSON.parse(readFileSync(join(REPO_ROOT, 'binding.gyp'), 'utf8')) as {
  targets: { target_name: string }[];
};
const targets = gyp.targets.map((t) => t.target_name);

// An incremental `node-gyp build` once configured (make rebuilds what changed), else a rebuild.
const configured = existsSync(join(REPO_ROOT, 'build', 'Makefile'));
const nodeGyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
const step = configured ? 'build' : 'rebuild';
const run = spawnSync(process.execPath, [nodeGyp, step], { cwd: REPO_ROOT, encoding: 'utf8' });
if (run.status !== 0) {
  process.stderr.write(run.stdout + run.stderr);
  console.error(
    `prebuild: node-gyp ${step} failed (${run.error?.message ?? `exit ${run.status}`})`,
  );
  process.exit(1);
}

const libc = libcOfPrebuilds();
const dir = join(REPO_ROOT, 'prebuilds', `${platform}-${arch}`);
mkdirSync(dir, { recursive: true });
const names = new Set(targets.map((t) => `${t}.napi.${libc}.node`));
for (const stale of readdirSync(dir).filter((f) => !names.has(f))) rmSync(join(dir, stale));
for (const target of targets) {
  copyFileSync(
    join(REPO_ROOT, 'build', 'Release', `${target}.node`),
    join(dir, `${target}.napi.${libc}.node`),
  );
}
