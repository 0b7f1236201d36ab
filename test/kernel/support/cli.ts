import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Control } from '../../../src/ublk/control/control.js';

export const CLI = new URL('../../../bundle/cli/main.js', import.meta.url).pathname;

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `ublk ARGS` as a user types it, and returns what it printed. */
export function ublk(...args: string[]): Run {
  return ublkWithEnv({}, ...args);
}

/**
 * `ublk ARGS` with `env` added to the environment. The tests' own UBLK_LIST_FORMAT is dropped
 * (undefined values are left out): they parse the default layout unless they ask for another.
 */
export function ublkWithEnv(env: NodeJS.ProcessEnv, ...args: string[]): Run {
  const r: SpawnSyncReturns<string> = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    timeout: 10 * 60_000,
    env: { ...process.env, UBLK_LIST_FORMAT: undefined, ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The device's flags as GET_DEV_INFO reports them, asked through the library rather than through
 * `ublk list`, whose output is what the tests check against it.
 */
export async function kernelFlags(devId: number): Promise<number> {
  const control = Control.open();
  try {
    return (await control.getDevInfo(devId)).flags;
  } finally {
    control.close();
  }
}

/** The UBLK_F bits the kernel reports (`ublk features`: GET_FEATURES, or what 6.1 has). */
export function kernelFeatures(): number {
  const r = ublk('features');
  assert.equal(r.status, 0, r.stderr);
  const m = /^ublk_drv features: (0x[0-9a-f]+)$/m.exec(r.stdout);
  assert.ok(m, r.stdout);
  return Number(m[1]);
}

/** The daemon pid and state of the second line of `list`'s default (ublksrv 1.8) layout. */
export function listStatus(text: string): { pid: number; state: string } {
  const f = text.split('\n')[1].trim().split(/\s+/);
  assert.deepEqual([f[4], f[5], f[7]], ['daemon', 'pid', 'state'], `a 1.8 listing: ${text}`);
  return { pid: Number(f[6]), state: f[8] };
}

/** `ublk add ARGS`, which must succeed; returns the new device's id. */
export function addDevice(...args: string[]): number {
  const r = ublk('add', ...args);
  if (r.status !== 0) throw new Error(`ublk add ${args.join(' ')} failed: ${r.stderr}`);
  const m = /^dev id (\d+):/m.exec(r.stdout);
  if (!m) throw new Error(`ublk add printed no device: ${r.stdout}`);
  return Number(m[1]);
}

export function delDevice(devId: number): void {
  const r = ublk('del', '-n', String(devId));
  if (r.status !== 0) throw new Error(`ublk del -n ${devId} failed: ${r.stderr}`);
}

/**
 * Deletes every ublk device, for cleanup hooks; never throws. Skipped when there is nothing to
 * delete (no node, daemon or state record): `ublk del -a` is a Node start-up, seconds under
 * emulation, and the hooks run after every test.
 */
export function delAll(): void {
  if (ublkNodes().length === 0 && daemonPids().length === 0 && stateFiles().length === 0) return;
  ublk('del', '-a');
}

/** The ublk block and char devices that exist right now. */
export function ublkNodes(): string[] {
  return readdirSync('/dev').filter((n) => /^ublk[bc]\d+$/.test(n));
}

/** Pids of running ublk daemons. */
export function daemonPids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('daemon-main.js');
      } catch {
        return false;
      }
    })
    .map(Number);
}

export { processExists as isAlive } from '../../../src/processes.js';

export async function waitFor(what: string, check: () => boolean, ms = 60_000): Promise<void> {
  for (const deadline = Date.now() + ms; Date.now() < deadline;) {
    if (check()) return;
    await sleep(100);
  }
  if (!check()) throw new Error(`timed out waiting for ${what}`);
}

/** Runs a command to completion, failing the test if it fails. */
export function sh(command: string, args: string[]): string {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 10 * 60_000 });
  if (r.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
  }
  return r.stdout;
}

/** fio with the given options; returns the parsed JSON report. */
export function fio(args: string[]): FioReport {
  const out = sh('fio', ['--output-format=json', ...args]);
  return JSON.parse(out.slice(out.indexOf('{'))) as FioReport;
}

export interface FioJob {
  error: number;
  read: { iops: number; io_bytes: number };
  write: { iops: number; io_bytes: number };
}
export interface FioReport {
  jobs: FioJob[];
}

/** Starts `ublk add --foreground ...` as a child the test can signal. */
export function spawnForeground(...args: string[]) {
  return spawn(process.execPath, [CLI, 'add', '--foreground', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

export const RUN_DIR = '/run/ublksrvd';

/** The daemons' state records in the run dir. */
export function stateFiles(): string[] {
  return existsSync(RUN_DIR) ? readdirSync(RUN_DIR).filter((n) => n.endsWith('.json')) : [];
}

/** Open fds of any process that point at a ublk char device. */
export function ublkcFds(): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (/\/dev\/ublkc\d+/.test(readlinkSync(`/proc/${pid}/fd/${fd}`))) {
          found.push(`${pid}/${fd}`);
        }
      } catch {
        // raced with the process closing it
      }
    }
  }
  return found;
}

/** No ublk device node, daemon, state record or open /dev/ublkcN is left. */
export function assertNothingLeft(): void {
  assert.deepEqual(ublkNodes(), [], 'no /dev/ublkbN or /dev/ublkcN');
  assert.deepEqual(daemonPids(), [], 'no daemon process');
  assert.deepEqual(stateFiles(), [], 'no state file');
  assert.deepEqual(ublkcFds(), [], 'no open /dev/ublkcN');
}
