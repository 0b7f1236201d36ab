/**
 * Filters over targets (`ublk add ... --filter NAME`): each built-in filter's effect as a user
 * sees it on the block device, the stack in `ublk list`, the one-line errors of a bad stack, and
 * a stack re-created by `ublk recover`.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import {
  assertNothingLeft,
  delAll,
  fio,
  kernelFeatures,
  kernelFlags,
  sh,
  ublk,
  waitFor,
} from './support/cli.js';
import { killDaemon, recover } from './support/recovery.js';
import {
  assertNoDevice,
  assertSameBytes,
  fioSummary,
  fioVerify,
  readAt,
  withDevice,
  writeAt,
} from './support/targets.js';

const MiB = 2 ** 20;
const dir = mkdtempSync('/tmp/ublk-filters-test-');
after(() => {
  delAll();
  rmSync(dir, { recursive: true, force: true });
});

/** Bytes of a file through the page cache: tmpfs refuses O_DIRECT before Linux 6.6. */
function fileAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    assert.equal(readSync(fd, buf, 0, length, offset), length);
    return buf;
  } finally {
    closeSync(fd);
  }
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** A base image with random bytes in its first 8 MiB and at 48 MiB, zeros elsewhere. */
function baseImage(name: string, size = 64 * MiB): string {
  const path = join(dir, name);
  writeFileSync(path, Buffer.alloc(0));
  sh('truncate', ['-s', String(size), path]);
  writeAt(path, 0, randomBytes(8 * MiB), { flags: 'sync' });
  writeAt(path, 48 * MiB, randomBytes(MiB), { flags: 'sync' });
  return path;
}

/** dd with O_DIRECT: its exit status and what it printed on failure. */
function ddDirect(dev: string, op: 'read' | 'write', offset: number, length = 4096) {
  const args =
    op === 'read'
      ? [`if=${dev}`, 'of=/dev/null', 'iflag=direct,skip_bytes', `skip=${offset}`]
      : ['if=/dev/zero', `of=${dev}`, 'oflag=direct,seek_bytes', `seek=${offset}`];
  const r = spawnSync('dd', [...args, `bs=${length}`, 'count=1', 'status=none'], {
    encoding: 'utf8',
  });
  return { status: r.status, stderr: r.stderr };
}

test('readonly: the block layer refuses writes, reads are the base, and list shows the stack', async () => {
  const base = baseImage('ro.img');
  const before = sha256(base);
  const stats = join(dir, 'ro-stats.txt');
  await withDevice(
    ['-t', 'loop', '-f', base, '--filter', 'readonly', '--filter', 'stats', '--stats_file', stats],
    (_id, dev, added) => {
      assert.deepEqual(added.target.filters, ['readonly', 'stats']);
      assert.equal(added.target.name, 'loop');
      assert.equal(sh('blockdev', ['--getro', dev]).trim(), '1');
      const w = ddDirect(dev, 'write', 0);
      assert.notEqual(w.status, 0, 'a write to a read-only device fails');
      assert.match(w.stderr, /Operation not permitted|Read-only file system/);
      assertSameBytes(readAt(dev, 0, 8 * MiB), fileAt(base, 0, 8 * MiB), 'reads are the base');
    },
  );
  assert.equal(sha256(base), before, 'the base file is unchanged');
  assert.match(readFileSync(stats, 'utf8'), /^write: ops=0 /m, 'no write reached the target');
});

const kernelHasZeroCopy = () => (kernelFeatures() & UBLK_F.AUTO_BUF_REG) !== 0;
const zeroCopyOf = async (id: number) => ((await kernelFlags(id)) & UBLK_F.AUTO_BUF_REG) !== 0;

test('zero copy under filters: kept under readonly, stats, error and delay on any kinds (their hooks run in front of the forward), off under cow', async () => {
  const base = baseImage('zc.img', 16 * MiB);
  const kernelHas = kernelHasZeroCopy();
  // Each of stats, delay and error keeps it only if the three stacked do.
  const stacks: [string, string[]][] = [
    ['readonly', ['--filter', 'readonly']],
    [
      'stats, delay and error',
      [
        '--filter',
        'stats',
        '--stats_file',
        join(dir, 'zc-stats3.txt'),
        '--filter',
        'delay',
        '--rdelay',
        '1',
        '--wdelay',
        '1',
        '--filter',
        'error',
        '--error_range',
        '15M-16M',
      ],
    ],
  ];
  for (const [name, filters] of stacks) {
    await withDevice(['-t', 'loop', '-f', base, ...filters], async (id, dev) => {
      assert.equal(await zeroCopyOf(id), kernelHas, `${name}: zero copy where the kernel has it`);
      // With zero copy the data never reaches JavaScript: right bytes mean forwarded reads.
      assertSameBytes(readAt(dev, 0, 8 * MiB), fileAt(base, 0, 8 * MiB), `${name}: the file`);
    });
  }
  if (kernelHas) {
    const r = ublk('add', '-t', 'loop', '-f', base, '--auto_zc', ...stacks[1][1]);
    assert.equal(r.status, 0, `--auto_zc with stats is not refused: ${r.stderr}`);
    delAll();
  }
  await withDevice(
    ['-t', 'loop', '-f', base, '--filter', 'cow', '--cow_file', join(dir, 'zc-top.img')],
    async (id) => {
      assert.equal(await zeroCopyOf(id), false, 'cow serves reads and writes itself: copy mode');
    },
  );
});

test('delay: each read and each write waits at least --rdelay / --wdelay, on null (handlers) and loop (forwarded)', async () => {
  const base = baseImage('delay.img', 16 * MiB);
  for (const target of [
    ['-t', 'null'],
    ['-t', 'loop', '-f', base],
  ]) {
    await withDevice(
      [...target, '--filter', 'delay', '--rdelay', '40ms', '--wdelay', '0.06s'],
      (_id, dev) => {
        const time = (args: string[]) => {
          const start = process.hrtime.bigint();
          sh('dd', [...args, 'bs=4096', 'count=10', 'status=none']);
          return Number(process.hrtime.bigint() - start) / 1e6;
        };
        const reads = time([`if=${dev}`, 'of=/dev/null', 'iflag=direct']);
        const writes = time(['if=/dev/zero', `of=${dev}`, 'oflag=direct']);
        assert.ok(reads >= 10 * 40, `${target[1]}: 10 reads took ${reads} ms, at least 400`);
        assert.ok(writes >= 10 * 60, `${target[1]}: 10 writes took ${writes} ms, at least 600`);
      },
    );
  }
});

test('error: requests touching --error_range fail with EIO, the others succeed (mem: forwarded, zero copy kept)', async () => {
  const kernelHas = kernelHasZeroCopy();
  await withDevice(
    ['-t', 'mem', '--size', '16M', '--filter', 'error', '--error_range', '1M-2M'],
    async (id, dev) => {
      assert.equal(await zeroCopyOf(id), kernelHas);
      for (const offset of [MiB, MiB + 4096, 2 * MiB - 4096, MiB - 4096 * 2]) {
        const length = offset < MiB ? 3 * 4096 : 4096; // the last one reaches into the range
        for (const op of ['read', 'write'] as const) {
          const r = ddDirect(dev, op, offset, length);
          assert.notEqual(r.status, 0, `${op} at ${offset} fails`);
          assert.match(r.stderr, /Input\/output error/, `${op} at ${offset}: EIO`);
        }
      }
      for (const offset of [0, MiB - 4096, 2 * MiB, 8 * MiB, 16 * MiB - 4096]) {
        for (const op of ['write', 'read'] as const) {
          const r = ddDirect(dev, op, offset);
          assert.equal(r.status, 0, `${op} at ${offset} succeeds: ${r.stderr}`);
        }
      }
    },
  );
});

test('error: --error_ops write --error_errno ENOSPC fails writes only, with ENOSPC', async () => {
  await withDevice(
    [
      '-t',
      'null',
      '--filter',
      'error',
      '--error_ops',
      'write',
      '--error_rate',
      '1',
      '--error_errno',
      'ENOSPC',
    ],
    (_id, dev) => {
      const w = ddDirect(dev, 'write', 4096);
      assert.notEqual(w.status, 0);
      assert.match(w.stderr, /No space left on device/);
      assert.equal(ddDirect(dev, 'read', 4096).status, 0, 'reads are not chosen');
    },
  );
});

/** The stats file's `OP: ops=N bytes=N errors=N` lines. */
function statsOf(path: string): Record<string, { ops: number; bytes: number; errors: number }> {
  const out: Record<string, { ops: number; bytes: number; errors: number }> = {};
  for (const m of readFileSync(path, 'utf8').matchAll(
    /^(\w+): ops=(\d+) bytes=(\d+) errors=(\d+)/gm,
  )) {
    out[m[1]] = { ops: Number(m[2]), bytes: Number(m[3]), errors: Number(m[4]) };
  }
  return out;
}

/** SIGUSR1 to the daemon, then the stats file it rewrote. */
async function statsNow(pid: number, path: string) {
  const before = existsSync(path) ? statSync(path).mtimeMs : 0;
  const was = existsSync(path) ? readFileSync(path, 'utf8') : '';
  process.kill(pid, 'SIGUSR1');
  await waitFor(
    'the stats file to be rewritten',
    () => {
      if (!existsSync(path)) return false;
      return statSync(path).mtimeMs !== before || readFileSync(path, 'utf8') !== was;
    },
    30_000,
  );
  return statsOf(path);
}

/**
 * The stats once the device is idle: the kernel reads a new disk (its partition scan) on its own
 * schedule, and those reads must not be counted as fio's.
 */
async function settledStats(pid: number, path: string) {
  let last = await statsNow(pid, path);
  for (let round = 0; round < 60; round++) {
    await sleep(500);
    const now = await statsNow(pid, path);
    if (now.read.ops === last.read.ops && now.write.ops === last.write.ops) return now;
    last = now;
  }
  throw new Error("the new device still gets IO that is not fio's after 30 s");
}

/** fio's random reads, then random writes, of 4 KiB at `iodepth`: how many of each it did. */
function fioReadsWrites(dev: string, reads: number, writes: number, iodepth: number) {
  const run = (rw: string, ios: number) =>
    fio([
      `--name=${rw}`,
      `--filename=${dev}`,
      '--ioengine=io_uring',
      '--direct=1',
      `--rw=${rw}`,
      '--bs=4k',
      `--iodepth=${iodepth}`,
      '--size=32M',
      `--number_ios=${ios}`,
    ]).jobs[0];
  return {
    reads: run('randread', reads).read.io_bytes / 4096,
    writes: run('randwrite', writes).write.io_bytes / 4096,
  };
}

test("stats: the counts between two SIGUSR1 are fio's, on null (handlers, 2 queues) and loop (forwarded, zero copy where the kernel has it), and the file is written at exit", async (t) => {
  const base = baseImage('stats.img', 32 * MiB);
  const kernelHas = kernelHasZeroCopy();
  for (const target of [
    ['-t', 'null', '-q', '2'],
    ['-t', 'loop', '-f', base],
  ]) {
    const path = join(dir, 'stats.txt');
    await withDevice(
      [...target, '--filter', 'stats', '--stats_file', path],
      async (id, dev, added) => {
        if (target[1] === 'loop') assert.equal(await zeroCopyOf(id), kernelHas, 'zero copy');
        const first = await settledStats(added.daemon_pid, path);
        await sleep(20); // different mtime granularity: make sure the rewrite is seen
        const { reads, writes } = fioReadsWrites(dev, 300, 200, 4);
        const second = await statsNow(added.daemon_pid, path);
        t.diagnostic(`${target[1]}: fio did ${reads} reads, ${writes} writes`);
        assert.equal(second.read.ops - first.read.ops, reads);
        assert.equal(second.write.ops - first.write.ops, writes);
        assert.equal(second.read.bytes - first.read.bytes, reads * 4096);
        assert.equal(second.write.bytes - first.write.bytes, writes * 4096);
        assert.equal(second.read.errors + second.write.errors, 0);
        rmSync(path);
      },
    );
    const last = statsOf(path);
    assert.ok(last.read.ops >= 300 && last.write.ops >= 200, 'written again when the device went');
  }
});

test('stats over error over loop: stats counts the requests error fails, as failures, exactly', async () => {
  const base = baseImage('stats-error.img', 16 * MiB);
  const path = join(dir, 'stats-error.txt');
  const filters = ['--filter', 'stats', '--stats_file', path];
  filters.push('--filter', 'error', '--error_range', '4M-5M');
  await withDevice(['-t', 'loop', '-f', base, ...filters], async (_id, dev, added) => {
    const first = await settledStats(added.daemon_pid, path);
    await sleep(20);
    let failed = 0;
    for (const offset of [0, 4 * MiB, 4 * MiB + 8192, 6 * MiB, 5 * MiB - 4096, 5 * MiB]) {
      const r = ddDirect(dev, 'read', offset);
      const inRange = offset >= 4 * MiB && offset < 5 * MiB;
      assert.equal(r.status === 0, !inRange, `read at ${offset}: ${r.stderr}`);
      if (inRange) failed++;
    }
    const second = await statsNow(added.daemon_pid, path);
    assert.equal(second.read.ops - first.read.ops, 6);
    assert.equal(second.read.errors - first.read.errors, failed);
    assert.equal(second.read.bytes - first.read.bytes, (6 - failed) * 4096);
  });
});

test('cow: the device reads its own writes (fio verify), the base never changes, the overlay persists', async (t) => {
  const base = baseImage('cow-base.img');
  const before = sha256(base);
  const top = join(dir, 'top.img');
  const args = ['-t', 'loop', '-f', base, '--filter', 'cow', '--cow_file', top];
  const mine = randomBytes(MiB);
  await withDevice(args, (_id, dev, added) => {
    assert.equal(added.block_size, 4096);
    assert.deepEqual(added.target.filters, ['cow']);
    assertSameBytes(readAt(dev, 0, 8 * MiB), fileAt(base, 0, 8 * MiB), 'unwritten: the base');
    t.diagnostic(fioSummary(fioVerify(dev, { iodepth: 16, size: 16 * MiB, offset: 16 * MiB })));
    // Half of it over the base's data at 48 MiB, so that reads mix overlay and base blocks.
    writeAt(dev, 48 * MiB + 512 * 1024, mine);
    sh('blkdiscard', ['-o', String(4 * MiB), '-l', String(MiB), dev]);
    assertSameBytes(readAt(dev, 4 * MiB, MiB), Buffer.alloc(MiB), 'discarded: zeros');
    assertSameBytes(readAt(dev, 3 * MiB, MiB), fileAt(base, 3 * MiB, MiB), 'next to it: the base');
  });
  assert.equal(sha256(base), before, 'the base file is unchanged');
  await withDevice(args, (_id, dev) => {
    assertSameBytes(readAt(dev, 48 * MiB + 512 * 1024, MiB), mine, 'the overlay after a new add');
    assertSameBytes(readAt(dev, 48 * MiB, 512 * 1024), fileAt(base, 48 * MiB, 512 * 1024), 'base');
    assertSameBytes(readAt(dev, 4 * MiB, MiB), Buffer.alloc(MiB), 'still discarded');
  });
  assert.equal(sha256(base), before, 'the base file is still unchanged');
});

test('ublk recover re-creates the filter stack: cow over loop, killed and recovered', async () => {
  const base = baseImage('rec-base.img', 32 * MiB);
  const before = sha256(base);
  const top = join(dir, 'rec-top.img');
  await withDevice(
    [
      '-t',
      'loop',
      '-f',
      base,
      '-r',
      '1',
      '--filter',
      'cow',
      '--cow_file',
      top,
      '--filter',
      'delay',
      '--rdelay',
      '1',
    ],
    async (id, dev, added) => {
      const mine = randomBytes(MiB);
      writeAt(dev, 2 * MiB, mine);
      await killDaemon(added.daemon_pid);
      recover(id, added.daemon_pid);
      const r = ublk('list', '-n', String(id), '--json');
      const target = (JSON.parse(r.stdout) as { target: Record<string, unknown> }[])[0].target;
      assert.deepEqual(target.filters, ['cow', 'delay']);
      assertSameBytes(readAt(dev, 2 * MiB, MiB), mine, 'the write, through the recovered stack');
    },
  );
  assert.equal(sha256(base), before);
});

test("a user's filter module (examples/window.js) over loop: a window of the file", async () => {
  const base = baseImage('window.img', 16 * MiB);
  const before = fileAt(base, 0, 16 * MiB);
  const window = new URL('../../examples/window.js', import.meta.url).pathname;
  const args = ['--filter', window, '--window_offset', '1M', '--window_size', '4M'];
  await withDevice(['-t', 'loop', '-f', base, ...args], (_id, dev, added) => {
    assert.equal(added.dev_capacity * 512, 4 * MiB);
    assert.deepEqual(added.target.filters, ['window']);
    assertSameBytes(readAt(dev, 0, 4 * MiB), before.subarray(MiB, 5 * MiB), 'the window');
    const mine = randomBytes(64 * 1024);
    writeAt(dev, 8192, mine);
    assertSameBytes(fileAt(base, MiB + 8192, mine.length), mine, 'written at 1M + 8K in the file');
    assertSameBytes(fileAt(base, 0, MiB), before.subarray(0, MiB), 'nothing before the window');
  });
});

test('a bad stack fails in one line and leaves no device', () => {
  const cases: [string[], RegExp][] = [
    [
      ['-t', 'null', '--cow_file', join(dir, 'x.img')],
      /--cow_file is an option of the cow filter: add --filter cow/,
    ],
    [['-t', 'null', '--filter', 'nosuch'], /unknown filter 'nosuch'/],
    [['-t', 'null', '--filter', 'cow'], /cow: no overlay file: use --cow_file FILE/],
    [['-t', 'null', '--filter', 'delay', '--rdelay', 'soon'], /invalid --rdelay 'soon'/],
  ];
  for (const [args, message] of cases) {
    const r = ublk('add', ...args);
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  assertNoDevice();
  assertNothingLeft();
});
