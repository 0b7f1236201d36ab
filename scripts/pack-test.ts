/**
 * The published package, as a user gets it: packs the tarball (what `npm run compile` built; run
 * by `npm test` after it), installs it into an empty project with no C compiler on PATH, from the
 * npm cache only, then runs `npx ublk help`, imports the library, and type-checks a target module
 * written against the installed package's types. Proves the tarball carries a prebuilt addon that
 * loads, entry points that resolve, and declarations that stand on their own.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { arch, platform } from 'node:process';
import { REPO_ROOT } from './lib/common.js';

interface PackResult {
  filename: string;
  size: number;
  entryCount: number;
  files: { path: string }[];
}

interface Manifest {
  name: string;
  bin: Record<string, string>;
  main: string;
  types: string;
  exports: Record<string, Record<string, string>>;
  dependencies?: Record<string, string>;
}

class Failure extends Error {}

const started = Date.now();
const work = mkdtempSync(join(tmpdir(), 'ublk-pack-test-'));

function run(what: string, command: string, args: string[], options: SpawnSyncOptions = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', ...options });
  if (result.status !== 0) {
    const output = `${String(result.stdout ?? '')}${String(result.stderr ?? '')}`.trim();
    const why = result.error?.message ?? `exit ${result.status ?? result.signal}`;
    throw new Failure(`${what} failed (${why})${output ? `:\n${output}` : ''}`);
  }
  return String(result.stdout);
}

/** Where a program on this process's PATH really is (npm, npx: scripts run by node). */
function onPath(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return realpathSync(join(dir, name));
  }
  throw new Failure(`${name} is not on PATH`);
}

/** PATH with node, npm, npx and sh only: no compiler, make or python for a from-source build. */
function bareEnv(): NodeJS.ProcessEnv {
  const bin = join(work, 'bin');
  mkdirSync(bin);
  symlinkSync(process.execPath, join(bin, 'node'));
  for (const tool of ['npm', 'npx']) symlinkSync(onPath(tool), join(bin, tool));
  // npm runs lifecycle scripts with `sh -c`, found on PATH.
  symlinkSync('/bin/sh', join(bin, 'sh'));
  // Not the outer `npm run`'s npm_* variables (npm_config_local_prefix would be this repository),
  // bar the cache and config a user may have pointed elsewhere.
  const keep = new Set(['npm_config_cache', 'npm_config_userconfig', 'npm_config_registry']);
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) || keep.has(k.toLowerCase())),
  );
  return { ...env, PATH: bin, CC: '/bin/false', CXX: '/bin/false' };
}

function pack(): PackResult {
  const prebuild = join(REPO_ROOT, 'prebuilds', `${platform}-${arch}`);
  if (!existsSync(prebuild)) throw new Failure(`no ${prebuild}: run \`npm run compile\` first`);
  // --ignore-scripts: prepare would compile again what `npm test` has just compiled.
  const out = run(
    'npm pack',
    'npm',
    ['pack', '--json', '--ignore-scripts', '--pack-destination', work],
    {
      cwd: REPO_ROOT,
    },
  );
  return (JSON.parse(out) as PackResult[])[0];
}

function checkContents(packed: PackResult, manifest: Manifest): void {
  const files = new Set(packed.files.map((f) => f.path));
  const entryPoints = [
    ...Object.values(manifest.bin),
    manifest.main,
    manifest.types,
    ...Object.values(manifest.exports).flatMap((conditions) => Object.values(conditions)),
  ].map((p) => p.replace(/^\.\//, ''));
  const missing = entryPoints.filter((p) => !files.has(p));
  if (missing.length > 0) throw new Failure(`the tarball lacks ${missing.join(', ')}`);
  const prebuild = `prebuilds/${platform}-${arch}/`;
  if (![...files].some((f) => f.startsWith(prebuild))) {
    throw new Failure(`the tarball has no ${prebuild} addon`);
  }
  const strays = [...files].filter((f) => /^dist\/(test|bench|scripts|examples)\//.test(f));
  if (strays.length > 0)
    throw new Failure(`the tarball carries ${strays[0]} and ${strays.length - 1} more`);
}

/**
 * The README's example target, as a user would write it against the installed package, and a
 * probe that the declarations are real types, not any: a target without its handlers is refused.
 */
const TARGET = `${readFileSync(join(REPO_ROOT, 'examples', 'ramdisk.ts'), 'utf8')}
// @ts-expect-error
defineTarget({ name: 'incomplete' });
`;

function main(): string {
  const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as Manifest;
  const packed = pack();
  checkContents(packed, manifest);

  const app = join(work, 'app');
  mkdirSync(app);
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'app', private: true, type: 'module' }),
  );
  const env = bareEnv();
  const inApp: SpawnSyncOptions = { cwd: app, env };
  // --offline: the tarball's one dependency (node-gyp-build) comes from the npm cache `npm ci`
  // filled; its install step must find the prebuild and build nothing.
  run(
    'npm install of the tarball (no compiler on PATH, offline)',
    'npm',
    [
      'install',
      '--offline',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
      join(work, packed.filename),
    ],
    inApp,
  );
  const installed = join(app, 'node_modules', manifest.name);
  if (existsSync(join(installed, 'build')))
    throw new Failure(`the install built the addon from source (${installed}/build)`);

  const help = run('npx ublk help', 'npx', ['--offline', 'ublk', 'help'], inApp);
  if (!/^ublk add -t TYPE/m.test(help))
    throw new Failure(`npx ublk help printed no usage:\n${help}`);
  run(
    "the library's import (loads the prebuilt addon)",
    'node',
    [
      '--input-type=module',
      '-e',
      `const m = await import('${manifest.name}'); if (typeof m.createDevice !== 'function') process.exit(1);`,
    ],
    inApp,
  );

  writeFileSync(join(app, 'target.ts'), TARGET);
  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        // The shipped declarations are checked too; Node's types are the repository's.
        skipLibCheck: false,
        types: ['node'],
        typeRoots: [join(REPO_ROOT, 'node_modules', '@types')],
      },
      files: ['target.ts'],
    }),
  );
  const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  run(
    'tsc --noEmit of a target module against the installed types',
    'node',
    [tsc, '-p', app],
    inApp,
  );

  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  return `pack test: ${packed.filename} (${packed.entryCount} files, ${Math.round(packed.size / 1024)} kB) installs with no compiler, \`npx ublk help\` runs, the library loads its prebuilt addon, a target module type-checks (${seconds} s)`;
}

try {
  console.log(main());
  rmSync(work, { recursive: true, force: true });
} catch (err) {
  if (!(err instanceof Failure)) throw err;
  console.error(`pack test FAILED: ${err.message}\n(left in ${work})`);
  process.exitCode = 1;
}
