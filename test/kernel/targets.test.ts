/**
 * User target modules through the CLI (`ublk add -t ./path/to/module.js`): the examples under
 * examples/, a target whose read handler throws, and the errors `ublk add` gives for bad targets
 * and bad target arguments (one clear line, non-zero exit, and no device left behind).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { CLI, daemonPids, delAll, RUN_DIR, sh, ublkNodes, type Run } from './support/cli.js';
import {
  assertNoDevice,
  assertSameBytes,
  fioSummary,
  fioVerify,
  listed,
  readAt,
  withDevice,
  writeAt,
} from './support/targets.js';

const MiB = 2 ** 20;
const module = (relative: string) => fileURLToPath(new URL(relative, import.meta.url));
const RAMDISK = module('../../examples/ramdisk.js');
const PATTERN = module('../../examples/pattern.js');
const FAULTY = module('./fixtures/faulty.js');
const NOT_A_TARGET = module('./fixtures/not-a-target.js');
const NO_FLUSH = module('./fixtures/no-flush.js');
const DAEMON_LOG = join(RUN_DIR, 'daemon.log');
const SHAPES = module('./fixtures/shapes.js');

let dir: string;
before(() => {
  dir = mkdtempSync('/tmp/ublk-targets-test-');
});
after(() => {
  delAll();
  rmSync(dir, { recursive: true, force: true });
});

test('examples/ramdisk.js -q 2: fio randwrite+verify, two jobs side by side', async (t) => {
  await withDevice(['-t', RAMDISK, '--size', '128M', '-q', '2'], async (_id, dev, added) => {
    assert.deepEqual(added.target, { name: 'ramdisk', type: 255, dev_size: 128 * MiB });
    const report = fioVerify(dev, { iodepth: 32, size: 24 * MiB, numjobs: 2 });
    t.diagnostic(fioSummary(report));
  });
});

test('examples/pattern.js: every sector reads back as its own number; writes are refused', async () => {
  await withDevice(['-t', PATTERN, '--size', '64M'], (_id, dev) => {
    const sectors = 64 * 2048;
    assert.equal(sh('blockdev', ['--getro', dev]).trim(), '1', 'a read-only device');
    const fd = openSync(dev, 'r');
    try {
      const check = (first: number, count: number) => {
        const data = Buffer.alloc(count * 512);
        assert.equal(readSync(fd, data, 0, data.length, first * 512), data.length);
        for (let s = 0; s < count; s++) {
          for (let w = 0; w < 64; w++) {
            const value = data.readBigUInt64LE(s * 512 + w * 8);
            assert.equal(value, BigInt(first + s), `sector ${first + s}, word ${w}`);
          }
        }
      };
      check(0, 8);
      check(1000, 1);
      check(4095, 3000); // across several requests' worth of sectors
      check(sectors - 16, 16);
      for (let i = 0; i < 50; i++) check(Math.floor(Math.random() * (sectors - 8)), 8);
    } finally {
      closeSync(fd);
    }
    const write = spawnSync('dd', [
      'if=/dev/zero',
      `of=${dev}`,
      'bs=4096',
      'count=1',
      'oflag=direct',
    ]);
    assert.notEqual(write.status, 0, 'writing to it fails');
  });
});

test('a target whose read throws: EIO for exactly that read, logged once; the device keeps serving', async () => {
  const failAt = 5 * MiB + 4096 + 100; // inside the 4 KiB block at 5 MiB + 4 KiB
  const logStart = existsSync(DAEMON_LOG) ? readFileSync(DAEMON_LOG, 'utf8').length : 0;
  await withDevice(['-t', FAULTY, '--size', '16M', '--fail_at', String(failAt)], (id, dev) => {
    const data = randomBytes(16 * MiB);
    writeAt(dev, 0, data); // the test reads some of it back: beside the failing block and beyond
    const bad = 5 * MiB + 4096;
    const read = (offset: number) =>
      spawnSync('dd', [
        `if=${dev}`,
        'of=/dev/null',
        'bs=4096',
        'count=1',
        'iflag=direct,skip_bytes',
        `skip=${offset}`,
      ]);
    const failed = read(bad);
    assert.notEqual(failed.status, 0, 'the read covering the failing byte fails');
    assert.match(String(failed.stderr), /Input\/output error/);
    for (const neighbour of [bad - 4096, bad + 4096, 0, 16 * MiB - 4096]) {
      assert.equal(read(neighbour).status, 0, `the read at ${neighbour} works`);
    }
    assertSameBytes(readAt(dev, bad - 4096, 4096), data.subarray(bad - 4096, bad), 'before');
    assertSameBytes(
      readAt(dev, bad + 4096, MiB),
      data.subarray(bad + 4096, bad + 4096 + MiB),
      'after',
    );
    assert.notEqual(read(bad).status, 0, 'and fails again, every time');
    const logged = readFileSync(DAEMON_LOG, 'utf8')
      .slice(logStart)
      .split('\n')
      .filter((line) => line.startsWith(`ublk device ${id} queue 0 tag `));
    assert.equal(logged.length, 1, `the failure logged once, its repeat counted later: ${logged}`);
    assert.match(
      logged[0],
      new RegExp(`tag \\d+: READ of 4096 bytes at offset ${bad} failed with EIO: injected failure`),
    );
    assert.equal(listed(id).state, 'LIVE', 'the device is still up');
    const more = randomBytes(4 * MiB);
    writeAt(dev, 8 * MiB, more);
    assertSameBytes(readAt(dev, 8 * MiB, 4 * MiB), more, 'and serves writes and reads');
  });
});

test("handlers that settle every way (sync, microtask chains, timers, ring IO): fio verify; its thread's timers run", async (t) => {
  await withDevice(['-t', SHAPES, '-d', '64'], async (_id, dev) => {
    const clock = () =>
      Number(
        readAt(dev, 32 * MiB, 4096)
          .toString('latin1')
          .replace(/\0+$/, ''),
      );
    const report = fioVerify(dev, { iodepth: 64, size: 32 * MiB });
    t.diagnostic(fioSummary(report));
    const afterLoad = clock();
    assert.ok(afterLoad > 0, `the interval timer ran while fio ran (${afterLoad} ticks)`);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const afterIdle = clock();
    assert.ok(
      afterIdle > afterLoad,
      `and while the device was idle (${afterLoad} -> ${afterIdle})`,
    );
    assert.match(
      readFileSync(`/sys/block/${dev.slice('/dev/'.length)}/queue/scheduler`, 'utf8'),
      /\[none\]/,
      'the default I/O scheduler is none',
    );
  });
});

/** Runs a command to its end without blocking, so that several can run at once. */
function runAsync(command: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

const addAsync = (...args: string[]) => runAsync(process.execPath, [CLI, 'add', ...args]);

/** Nothing of a device anywhere: nodes, daemons, run-dir records. */
function assertNothingCreated(): void {
  assert.deepEqual(ublkNodes(), [], 'no /dev/ublkbN or /dev/ublkcN');
  assert.deepEqual(daemonPids(), [], 'no daemon left running');
  const runDir = '/run/ublksrvd';
  const records = existsSync(runDir) ? readdirSync(runDir).filter((n) => n.endsWith('.json')) : [];
  assert.deepEqual(records, [], 'no device record');
}

test('bad input: one clear line, exit 1, and no device', async (t) => {
  const file = (name: string, size: number) => {
    const path = join(dir, name);
    writeFileSync(path, Buffer.alloc(size));
    return path;
  };
  const unreadable = file('unreadable.img', MiB);
  sh('chmod', ['000', unreadable]);
  const directory = join(dir, 'a-directory');
  mkdirSync(directory, { recursive: true });
  // Root reads anything; without CAP_DAC_OVERRIDE (and _READ_SEARCH) it obeys the mode bits, and
  // it keeps the CAP_SYS_ADMIN that ublk needs.
  const caps = '-dac_override,-dac_read_search';
  const withoutDacCaps = [`--inh-caps=${caps}`, `--bounding-set=${caps}`, process.execPath, CLI];

  // Each `ublk add` costs two Node start-ups under emulation: they all run at once.
  const cases: [string, Promise<Run>, RegExp][] = [
    [
      'loop: missing backing file',
      addAsync('-t', 'loop', '-f', join(dir, 'missing.img')),
      /loop: backing file \S*missing\.img does not exist/,
    ],
    [
      'loop: unreadable backing file',
      runAsync('setpriv', [...withoutDacCaps, 'add', '-t', 'loop', '-f', unreadable]),
      /loop: cannot open \S*unreadable\.img for reading and writing: permission denied/,
    ],
    [
      'loop: a directory',
      addAsync('-t', 'loop', '-f', directory),
      /loop: \S*a-directory is a directory, not a file or block device/,
    ],
    [
      'loop: an empty file',
      addAsync('-t', 'loop', '-f', file('empty.img', 0)),
      /loop: \S*empty\.img is empty/,
    ],
    [
      'loop: a size that is not a multiple of the block size',
      addAsync('-t', 'loop', '-f', file('odd.img', MiB + 100)),
      /size of \S*odd\.img \(1048676 bytes\) is not a multiple of the block size 512/,
    ],
    [
      'a target module that does not exist',
      addAsync('-t', join(dir, 'no-such-target.js')),
      /target module \S*no-such-target\.js does not exist/,
    ],
    [
      'a module that does not export a target',
      addAsync('-t', NOT_A_TARGET),
      /not-a-target\.js does not export a target/,
    ],
    [
      'a target that declares a capability without its handler',
      addAsync('-t', NO_FLUSH),
      /target no-flush: queue\(\) returned no flush\(\) for its volatileCache capability/,
    ],
    [
      'mem: a size beyond the machine memory',
      addAsync('-t', 'mem', '--size', `${Math.ceil(totalmem() / 2 ** 30) + 1}G`),
      /mem: --size \S+ \(\d+ bytes\) is more than this machine's memory/,
    ],
  ];
  for (const [name, running, message] of cases) {
    await t.test(name, async () => {
      const run = await running;
      assert.equal(run.status, 1, 'exit status 1');
      assert.equal(run.stdout, '', 'nothing on stdout');
      const lines = run.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(run.stderr)}`);
      assert.match(lines[0], /^ublk: /);
      assert.match(lines[0], message);
    });
  }
  await t.test('no device was created: no nodes, no daemon, `ublk list` empty', () => {
    assertNothingCreated();
    assertNoDevice();
  });
});

test('the library: createDevice takes a built-in name, a withFilters stack of built-in exports, and a target object defined with its import.meta.url', async () => {
  const { createDevice, nullTarget, readonlyFilter, withFilters } =
    await import('../../src/index.js');
  const recorded = (await import('./fixtures/recorded.js')).default;
  const cases = [
    { target: 'null', name: 'null', sector1: 0 },
    { target: withFilters(nullTarget, [readonlyFilter]), name: 'null', sector1: 0 },
    { target: recorded, name: 'recorded', sector1: 1 },
  ];
  for (const { target, name, sector1 } of cases) {
    const device = await createDevice({ target, depth: 4 });
    try {
      assert.equal(device.target.name, name);
      // The queue threads imported the same target: their handlers answer.
      assert.deepEqual([...readAt(device.path, 512, 512).subarray(0, 4)], Array(4).fill(sector1));
      if (typeof target !== 'string' && target !== recorded) {
        assert.deepEqual(device.target.info.filters, ['readonly']);
      }
    } finally {
      await device.stop();
    }
  }
  assertNoDevice();
});
