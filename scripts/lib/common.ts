/**
 * Shared helpers for the test-VM scripts (scripts/vm.ts, scripts/kernel-suite.ts): where the repo
 * and the cache are, environment knobs, and small process helpers.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { UserError } from '../../src/errors.js';

// The scripts' one-line failures are the package's own kind: one class, one brand.
export { UserError };

/** The repository root: this file is compiled to dist/scripts/lib/common.js. */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'scripts'))) return dir;
    if (dirname(dir) === dir) return resolve(start, '../../..');
  }
}

/** The VM cache folder (git-ignored): `.cache/vm` in the repo, or `$UBLK_VM_CACHE`. */
export function cacheRoot(): string {
  return resolve(process.env.UBLK_VM_CACHE || join(REPO_ROOT, '.cache', 'vm'));
}

export function log(message: string): void {
  process.stderr.write(`ublk-vm: ${message}\n`);
}

export function verbose(): boolean {
  return envFlag('UBLK_VM_VERBOSE');
}

export function envFlag(name: string): boolean {
  const v = process.env[name];
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
}

/** A positive number from the environment (seconds, counts), or the default. */
export function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new UserError(`${name}=${raw} is not a positive number`);
  return n;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion, capturing its output (never throws for a non-zero exit). */
export function run(cmd: string, args: readonly string[], opts: SpawnSyncOptions = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    return { status: code === 'ENOENT' ? 127 : 126, stdout: '', stderr: String(r.error.message) };
  }
  return {
    status: r.status ?? 128 + 9,
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr ?? ''),
  };
}

/** Runs a program, failing with its output's tail as the reason when it exits non-zero. */
export function runOrFail(
  what: string,
  cmd: string,
  args: readonly string[],
  opts: SpawnSyncOptions = {},
): string {
  const r = run(cmd, args, opts);
  if (r.status !== 0) {
    const tail = (r.stdout + r.stderr).trim().split('\n').slice(-25).join('\n');
    throw new UserError(`${what} failed (exit ${r.status}): ${cmd} ${args.join(' ')}\n${tail}`);
  }
  return r.stdout;
}

/** Finds a program in PATH (plus the sbin folders, which a non-root PATH may lack). */
export function which(name: string): string | undefined {
  const dirs = (process.env.PATH ?? '')
    .split(':')
    .concat(['/usr/local/sbin', '/usr/sbin', '/sbin']);
  for (const d of dirs) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  return undefined;
}

/** POSIX shell single-quoting. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}
