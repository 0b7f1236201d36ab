/**
 * Helpers for the target tests (loop, mem, examples): what a user does with a device once `ublk
 * add` made it (a file system, fio), and what the tests check afterwards.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { delDevice, fio, sh, ublk, ublkNodes, type FioReport } from './cli.js';

const MiB = 2 ** 20;

export const blockDevice = (id: number) => `/dev/ublkb${id}`;

/** A device as `ublk list -n ID --json` shows it (dev_id, block_size, target...). */
export interface Listed {
  dev_id: number;
  nr_hw_queues: number;
  block_size: number;
  dev_capacity: number;
  /** UBLK_F flags as listed (`list` and `add` print them; the JSON form has them too). */
  flags: number;
  state: string;
  daemon_pid: number;
  queues: { id: number; tid: number; affinity: number[] }[];
  target: Record<string, unknown>;
}

export function listed(id: number): Listed {
  const r = ublk('list', '-n', String(id), '--json');
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as Listed[])[0];
}

/** The device's UBLK_F flags as `ublk list` shows them. */
export function listedFlags(id: number): number {
  const list = ublk('list', '-n', String(id)).stdout;
  const m = /flags (0x[0-9a-f]+) \[/.exec(list);
  assert.ok(m, list);
  return Number(m[1]);
}

/**
 * What `ublk add` prints: the new device in `list`'s text form (ublksrv's format, checked field
 * by field in cli.test.ts), parsed into the --json shape. Saves a `ublk list`, which costs
 * seconds of Node start-up under emulation.
 */
export function parseListing(text: string): Listed {
  const head =
    /^dev id (\d+): nr_hw_queues (\d+) queue_depth \d+ block size (\d+) dev_capacity (\d+)\n\tmax rq size \d+ daemon pid (\d+)(?: flags \S+)? state (\S+)$/m.exec(
      text,
    );
  const target = /^\ttarget (\{.*\})$/m.exec(text);
  const flags = /flags (0x[0-9a-f]+)/.exec(text);
  assert.ok(head && target && flags, `a device listing: ${text}`);
  const queues = [...text.matchAll(/^\tqueue (\d+): tid (\d+) affinity\(([\d ]*)\)$/gm)].map(
    (m) => ({
      id: Number(m[1]),
      tid: Number(m[2]),
      affinity: m[3].trim().split(/\s+/).filter(Boolean).map(Number),
    }),
  );
  return {
    dev_id: Number(head[1]),
    nr_hw_queues: Number(head[2]),
    block_size: Number(head[3]),
    dev_capacity: Number(head[4]),
    flags: Number(flags[1]),
    daemon_pid: Number(head[5]),
    state: head[6],
    queues,
    target: JSON.parse(target[1]) as Record<string, unknown>,
  };
}

/** `ublk add ARGS`, which must succeed; the new device as it printed it. */
export function addListed(...args: string[]): Listed {
  const r = ublk('add', ...args);
  assert.equal(r.status, 0, `ublk add ${args.join(' ')}: ${r.stderr}`);
  return parseListing(r.stdout);
}

/**
 * `ublk add ARGS`, then `body` with the device (its id, /dev/ublkbN, and what `add` printed of
 * it), then `ublk del` whatever happened, so that a failing test leaves no device behind.
 */
export async function withDevice<T>(
  args: string[],
  body: (id: number, dev: string, added: Listed) => T | Promise<T>,
): Promise<T> {
  const added = addListed(...args);
  const id = added.dev_id;
  try {
    return await body(id, blockDevice(id), added);
  } finally {
    delDevice(id);
  }
}

/** No ublk device exists: no nodes, and `ublk list` prints nothing. */
export function assertNoDevice(): void {
  assert.deepEqual(ublkNodes(), [], 'no /dev/ublkbN or /dev/ublkcN');
  const list = ublk('list');
  assert.equal(list.status, 0, list.stderr);
  assert.equal(list.stdout, '', '`ublk list` shows no device');
}

export interface VerifyOptions {
  iodepth: number;
  /** Bytes each job writes and verifies. */
  size: number;
  /** Jobs side by side, each on its own range (offset_increment = size). */
  numjobs?: number;
  /** Where the first job starts. */
  offset?: number;
  /** fio's --bssplit (e.g. 4k/50:64k/30:256k/20) instead of random sizes from 4k to 256k. */
  bssplit?: string;
}

/**
 * fio writes random 4k-256k blocks at random places with crc32c checksums, then reads every one
 * back and checks it. Fails unless every job wrote and verified all of its range without error.
 */
export function fioVerify(dev: string, o: VerifyOptions): FioReport {
  const numjobs = o.numjobs ?? 1;
  const report = fio([
    `--name=verify-qd${o.iodepth}`,
    `--filename=${dev}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=randwrite',
    o.bssplit ? `--bssplit=${o.bssplit}` : '--bsrange=4k-256k',
    `--iodepth=${o.iodepth}`,
    `--size=${o.size}`,
    `--offset=${o.offset ?? 0}`,
    `--numjobs=${numjobs}`,
    `--offset_increment=${o.size}`,
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
  ]);
  assert.equal(report.jobs.length, numjobs);
  for (const job of report.jobs) {
    assert.equal(job.error, 0, 'fio job error');
    assert.equal(job.write.io_bytes, o.size, 'every byte of the range was written');
    assert.equal(job.read.io_bytes, o.size, 'and read back for verification');
  }
  return report;
}

/**
 * fio randwrite+verify 4k-256k at iodepth 1 (8 MiB), 64 (32 MiB) and two jobs of iodepth 32
 * side by side (32 MiB each), one subtest each, on the first 104 MiB of the device.
 */
export async function fioSuite(t: TestContext, dev: string): Promise<void> {
  await t.test('fio verify, iodepth 1', (s) => {
    s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 1, size: 8 * MiB })));
  });
  await t.test('fio verify, iodepth 64', (s) => {
    s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 64, size: 32 * MiB, offset: 8 * MiB })));
  });
  await t.test('fio verify, 2 jobs of iodepth 32, each on its own 32 MiB', (s) => {
    const report = fioVerify(dev, { iodepth: 32, size: 32 * MiB, numjobs: 2, offset: 40 * MiB });
    s.diagnostic(fioSummary(report));
  });
}

/** "w 12.3 MiB/s, verify 45.6 MiB/s" summed over the jobs of a fio report. */
export function fioSummary(report: FioReport): string {
  const bw = (k: 'read' | 'write') =>
    report.jobs.reduce((sum, j) => sum + (j[k] as { bw_bytes?: number }).bw_bytes! / 2 ** 20, 0);
  return `write ${bw('write').toFixed(1)} MiB/s, verify-read ${bw('read').toFixed(1)} MiB/s`;
}

/** An ext4 file system on the device, mounted on a fresh directory; returns the directory. */
export function mkfsAndMount(dev: string): string {
  sh('mkfs.ext4', ['-q', '-F', dev]);
  const dir = mkdtempSync(join(tmpdir(), 'ublk-mnt-'));
  sh('mount', [dev, dir]);
  return dir;
}

export function mount(dev: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-mnt-'));
  sh('mount', [dev, dir]);
  return dir;
}

export function umount(dir: string): void {
  sh('umount', [dir]);
  rmSync(dir, { recursive: true, force: true });
}

/** sha256 of every file in dir/data/, by name (coreutils' sha256sum: twice Node's speed under TCG). */
function sha256s(dir: string): Map<string, string> {
  const names = readdirSync(join(dir, 'data')).sort();
  const out = sh(
    'sha256sum',
    names.map((n) => join(dir, 'data', n)),
  );
  const sums = new Map<string, string>();
  for (const line of out.trim().split('\n')) {
    const [sum, path] = line.split(/\s+/);
    sums.set(path.slice(dir.length + 1), sum);
  }
  return sums;
}

/**
 * `count` files of random bytes, `total` bytes in all, in dir/data/, synced; returns their
 * sha256s by name (read right after writing, so from the page cache: the bytes written).
 */
export function writeRandomFiles(dir: string, total: number, count: number): Map<string, string> {
  mkdirSync(join(dir, 'data'));
  for (let i = 0; i < count; i++) {
    // Sizes that are not block multiples, so that the tails of blocks matter too.
    const data = randomBytes(Math.floor(total / count) - (i % 7) * 1000);
    const name = `data/file-${String(i).padStart(2, '0')}.bin`;
    writeFileSync(join(dir, name), data);
  }
  sh('sync', []);
  const sums = sha256s(dir);
  assert.equal(sums.size, count);
  return sums;
}

/** Every file of writeRandomFiles is there, with the same sha256; and nothing else. */
export function assertFiles(dir: string, sums: Map<string, string>): void {
  assert.deepEqual(sha256s(dir), sums);
}

/** e2fsck -fn: forced check, change nothing; exit 0 means clean. */
export function assertFsClean(dev: string): void {
  sh('e2fsck', ['-fn', dev]);
}

/** Counters of a block device from /sys/block/NAME/stat (Documentation/block/stat.rst). */
export function blockStat(name: string): { writes: number; discards: number; flushes: number } {
  const f = readFileSync(`/sys/block/${name}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  return { writes: f[4], discards: f[11], flushes: f[15] };
}

/** Bytes allocated to a file (st_blocks * 512). */
export const allocatedBytes = (path: string) => statSync(path).blocks * 512;

/** The same bytes? Compared in 1 MiB pieces so a mismatch says where. */
export function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let at = 0; at < expected.length; at += 1 << 20) {
    const end = Math.min(at + (1 << 20), expected.length);
    assert.ok(actual.subarray(at, end).equals(expected.subarray(at, end)), `${what}: at ${at}`);
  }
}

/** dd, pinned to one CPU when `cpu` is given (blk-mq then uses that CPU's queue). */
function dd(args: string[], cpu: number | undefined, input?: Buffer, length = 0) {
  const argv = cpu === undefined ? args : ['-c', String(cpu), 'dd', ...args];
  return spawnSync(cpu === undefined ? 'dd' : 'taskset', argv, {
    input,
    maxBuffer: 2 * length + (1 << 20),
  });
}

/** `length` bytes of a file or device at `offset`, read with O_DIRECT (dd iflag=direct). */
export function readAt(path: string, offset: number, length: number, cpu?: number): Buffer {
  const r = dd(
    [
      `if=${path}`,
      'bs=65536',
      'iflag=direct,skip_bytes,count_bytes',
      `skip=${offset}`,
      `count=${length}`,
      'status=none',
    ],
    cpu,
    undefined,
    length,
  );
  if (r.status !== 0) throw new Error(`dd from ${path} at ${offset} failed: ${String(r.stderr)}`);
  return r.stdout;
}

/** Writes `data` to a file or device at `offset`, with O_DIRECT unless `flags` says otherwise. */
export function writeAt(
  path: string,
  offset: number,
  data: Buffer,
  { flags = 'direct', cpu }: { flags?: string; cpu?: number } = {},
): void {
  const r = dd(
    [
      `of=${path}`,
      'bs=65536',
      'iflag=fullblock',
      `oflag=${flags},seek_bytes`,
      `seek=${offset}`,
      'conv=notrunc',
      'status=none',
    ],
    cpu,
    data,
  );
  if (r.status !== 0) throw new Error(`dd to ${path} at ${offset} failed: ${String(r.stderr)}`);
}
