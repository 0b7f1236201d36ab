import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { after, afterEach, test } from 'node:test';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import {
  addDevice,
  assertNothingLeft,
  CLI,
  daemonPids,
  delAll,
  delDevice,
  fio,
  isAlive,
  kernelFlags,
  sh,
  spawnForeground,
  stateFiles,
  ublk,
  ublkNodes,
  ublkWithEnv,
  waitFor,
} from './support/cli.js';

afterEach(() => delAll());
after(() => delAll());

/** ublksrv's `list` names that are not the UBLK_F ones. */
const LIST_NAME_ALIASES: Readonly<Record<string, keyof typeof UBLK_F>> = {
  RECOVERY: 'USER_RECOVERY',
  RECOVERY_REISSUE: 'USER_RECOVERY_REISSUE',
  RECOVERY_FAIL_IO: 'USER_RECOVERY_FAIL_IO',
  AUTO_ZC: 'AUTO_BUF_REG',
};
/** The flags ublksrv's `list` shows in hex only. */
const UNNAMED_FLAGS = UBLK_F.IO_DESC_SIZE;

/** The names of a 1.8 flags line stand for exactly the bits of `flags`, each once. */
function assertFlagNames(names: string[], flags: number): void {
  const bits = names.map((name) => {
    const key = LIST_NAME_ALIASES[name] ?? name;
    assert.ok(key in UBLK_F, `${name} names a UBLK_F flag`);
    return UBLK_F[key as keyof typeof UBLK_F];
  });
  assert.equal(new Set(bits).size, bits.length, `each flag named once: ${names.join(' ')}`);
  const named = bits.reduce((sum, bit) => sum + bit, 0);
  assert.equal(
    named,
    flags - (flags & UNNAMED_FLAGS),
    `[ ${names.join(' ')} ] is 0x${flags.toString(16)}`,
  );
}

/**
 * One device's `list` text in `layout`, field by field, against the daemon, its threads and the
 * flags GET_DEV_INFO reports.
 */
function checkListing(out: string, id: number, layout: '1.8' | '1.3', flags: number): void {
  const lines = out.split('\n');
  const f = (i: number) => lines[i].trim().split(/\s+/);
  assert.deepEqual(f(0).slice(0, 3), ['dev', 'id', `${id}:`]);
  assert.deepEqual(
    [f(0)[3], f(0)[4], f(0)[5], f(0)[6], f(0)[10], f(0)[11]],
    ['nr_hw_queues', '1', 'queue_depth', '128', 'dev_capacity', '524288000'],
  );
  const status = f(1);
  assert.deepEqual(status.slice(0, 6), ['max', 'rq', 'size', '524288', 'daemon', 'pid']);
  const pid = Number(status[6]);
  assert.deepEqual(daemonPids(), [pid], 'field 7 is the daemon pid');
  const hex = `0x${flags.toString(16)}`;
  if (layout === '1.8') {
    assert.deepEqual(status.slice(7), ['state', 'LIVE'], 'field 9 is the state, and the last');
    const flagsLine = f(2);
    assert.deepEqual(flagsLine.slice(0, 3), ['flags', hex, '['], `GET_DEV_INFO's flags: ${hex}`);
    assert.equal(flagsLine.at(-1), ']');
    assertFlagNames(flagsLine.slice(3, -1), flags);
  } else {
    assert.deepEqual(status.slice(7), ['flags', hex, 'state', 'LIVE'], 'field 11 is the state');
  }
  const rest = lines.slice(layout === '1.8' ? 3 : 2);
  assert.match(rest[0], /^\tublkc: \d+:\d+ ublkb: \d+:\d+ owner: \d+:\d+$/);
  assert.match(rest[1], /^\tqueue 0: tid \d+ affinity\((\d+ )+\)$/);
  const tid = Number(rest[1].trim().split(/\s+/)[3]);
  assert.notEqual(tid, pid, 'the queue runs in its own thread');
  assert.ok(existsSync(`/proc/${pid}/task/${tid}`), 'field 4 is a thread of the daemon');
  assert.equal(rest[2], '\ttarget {"dev_size":268435456000,"name":"null","type":0}');
  assert.deepEqual(rest.slice(3), [''], 'nothing more');
}

test('null: list in both layouts, field by field, flags as the kernel has them; --json parses', async () => {
  const id = addDevice('-t', 'null');
  const flags = await kernelFlags(id);
  const list = (format: string | undefined, ...args: string[]) => {
    const r = ublkWithEnv({ UBLK_LIST_FORMAT: format }, 'list', ...args);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  for (const layout of ['1.8', '1.3'] as const) {
    checkListing(list(layout), id, layout, flags);
    checkListing(list(layout, '-n', String(id)), id, layout, flags);
  }
  checkListing(list(undefined), id, '1.8', flags);
  checkListing(list(''), id, '1.8', flags);
  const json = JSON.parse(ublk('list', '--json').stdout) as {
    dev_id: number;
    state: string;
    flags: number;
  }[];
  assert.equal(json.length, 1);
  assert.equal(json[0].dev_id, id);
  assert.equal(json[0].state, 'LIVE');
  assert.equal(json[0].flags, flags);
  delDevice(id);
  assertNothingLeft();
});

test('features names the kernel bits', () => {
  const r = ublk('features');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ublk_drv features: 0x[0-9a-f]+\n/);
  assert.match(r.stdout, /\tUSER_RECOVERY\s+: 0x8\n/);
  assert.match(r.stdout, /\tGET_DATA\s+: 0x4\n/);
});

test('null: fio randread at depth 128, one queue, and two queues with two jobs', () => {
  const one = addDevice('-t', 'null', '-q', '1');
  const r1 = fio([
    '--name=q1',
    `--filename=/dev/ublkb${one}`,
    '--rw=randread',
    '--bs=4k',
    '--iodepth=128',
    '--ioengine=io_uring',
    '--direct=1',
    '--runtime=3',
    '--time_based',
  ]);
  assert.equal(r1.jobs[0].error, 0);
  assert.ok(r1.jobs[0].read.io_bytes > 0);
  const two = addDevice('-t', 'null', '-q', '2');
  assert.match(ublk('list', '-n', String(two)).stdout, /queue 1: tid \d+/);
  const r2 = fio([
    '--name=q2',
    `--filename=/dev/ublkb${two}`,
    '--rw=randread',
    '--bs=4k',
    '--iodepth=128',
    '--numjobs=2',
    '--ioengine=io_uring',
    '--direct=1',
    '--runtime=3',
    '--time_based',
  ]);
  assert.deepEqual(
    r2.jobs.map((j) => j.error),
    [0, 0],
  );
  assert.ok(r2.jobs.every((j) => j.read.io_bytes > 0));
});

test('NEED_GET_DATA (-g 1) devices serve writes', async () => {
  const id = addDevice('-t', 'null', '-g', '1');
  const flags = await kernelFlags(id);
  assert.ok(
    flags & UBLK_F.NEED_GET_DATA,
    `the kernel granted NEED_GET_DATA: 0x${flags.toString(16)}`,
  );
  const flagsLine = ublk('list', '-n', String(id)).stdout.split('\n')[2];
  assert.ok(flagsLine.startsWith(`\tflags 0x${flags.toString(16)} [ `), flagsLine);
  assert.ok(flagsLine.includes(' NEED_GET_DATA '), flagsLine);
  const r = fio([
    '--name=g',
    `--filename=/dev/ublkb${id}`,
    '--rw=randwrite',
    '--bs=16k',
    '--iodepth=16',
    '--ioengine=io_uring',
    '--direct=1',
    '--size=32m',
  ]);
  assert.equal(r.jobs[0].error, 0);
  assert.equal(r.jobs[0].write.io_bytes, 32 << 20);
});

test('del -a removes every device', () => {
  addDevice('-t', 'null');
  addDevice('-t', 'null', '-q', '2');
  assert.equal(ublk('del', '-a').status, 0);
  assertNothingLeft();
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal} of a --foreground daemon deletes the device and exits 0`, async () => {
    const child = spawnForeground('-t', 'null');
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    await waitFor('the device listing', () => /state LIVE/.test(out));
    assert.equal(ublkNodes().length, 2);
    child.kill(signal);
    assert.equal(await exited, 0);
    assertNothingLeft();
  });
}

test('20 add/del cycles leave no device, process, fd or state entry behind', () => {
  for (let i = 0; i < 20; i++) {
    const id = addDevice('-t', 'null');
    assert.ok(isAlive(daemonPids()[0]));
    delDevice(id);
  }
  assertNothingLeft();
});

/** A failing command: non-zero exit, a one-line message matching `pattern`, nothing created. */
function assertRefused(args: string[], pattern: RegExp, env: NodeJS.ProcessEnv = {}): void {
  const r = ublkWithEnv(env, ...args);
  assert.notEqual(r.status, 0, `${args.join(' ')} should fail`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.deepEqual(ublkNodes(), [], `${args.join(' ')} created no device`);
  assert.deepEqual(stateFiles(), []);
}

test('bad input: a clear one-line error, a non-zero exit, no device', () => {
  assertRefused(['add', '-t', 'nosuch'], /unknown target type 'nosuch'/);
  assertRefused(['add', '-t', 'null', '-d', '0'], /queue depth '0'.*1 to 4096/);
  assertRefused(['add', '-t', 'null', '-d', '4097'], /queue depth '4097'/);
  assertRefused(['add', '-t', 'null', '-q', '0'], /queue count '0'/);
  assertRefused(['add', '-t', 'null', '-q', '99999'], /queue count '99999'/);
  assertRefused(['add', '-t', 'null', '-q', '2x'], /queue count '2x'/);
  assertRefused(['add', '-t', 'null', '-n', 'one'], /device id 'one'/);
  assertRefused(['add', '-t', 'null', '--max_io_buf_bytes', '5000'], /multiple of the page size/);
  assertRefused(['add', '-t', 'null', '--bogus'], /Unknown option '--bogus'/);
  assertRefused(['add'], /use -t TYPE/);
  for (const command of [['add', '-t', 'null'], ['list']]) {
    assertRefused(command, /UBLK_LIST_FORMAT=1\.4 is not a list layout/, {
      UBLK_LIST_FORMAT: '1.4',
    });
  }
  assertRefused(['del', '-n', '77'], /there is no ublk device 77/);
  assertRefused(['list', '-n', '77'], /there is no ublk device 77/);
  assertRefused(['frobnicate'], /unknown command 'frobnicate'/);
});

test('an id already in use is refused and the existing device is untouched', () => {
  const id = addDevice('-t', 'null');
  const r = ublk('add', '-t', 'null', '-n', String(id));
  assert.notEqual(r.status, 0);
  assert.match(r.stderr.trim(), new RegExp(`^ublk: device id ${id} is already in use`));
  assert.equal(r.stderr.trim().split('\n').length, 1);
  assert.match(ublk('list', '-n', String(id)).stdout, /state LIVE/);
  assert.equal(ublkNodes().length, 2);
});

test('not root: refused with a one-line hint', () => {
  for (const args of [['add', '-t', 'null'], ['list'], ['del', '-n', '0']]) {
    const out = sh('sh', [
      '-c',
      `setpriv --reuid=65534 --regid=65534 --clear-groups ${process.execPath} ${CLI} ${args.join(' ')} 2>&1; echo "rc=$?"`,
    ]);
    // One line: root and sudo, then, from a checkout, the VM that runs it as root.
    assert.match(out, /^ublk: .*needs root.*sudo[^\n]*\nrc=1\n$/, out);
    assert.match(out, /rc=1\n$/);
  }
  assert.deepEqual(ublkNodes(), []);
});

test('no ublk module: the message says modprobe ublk_drv', () => {
  assert.deepEqual(ublkNodes(), []);
  sh('rmmod', ['ublk_drv']);
  try {
    assertRefused(['add', '-t', 'null'], /modprobe ublk_drv/);
  } finally {
    sh('modprobe', ['ublk_drv']);
  }
  assert.ok(existsSync('/dev/ublk-control'));
});

test('del --async deletes the device, with DEL_DEV where DEL_DEV_ASYNC is missing', () => {
  const id = addDevice('-t', 'null');
  const r = ublk('del', '--async', '-n', String(id));
  assert.equal(r.status, 0, r.stderr);
  // The daemon usually deletes the device itself once it sees the stop; when it has not yet, a
  // kernel before 6.9 gets DEL_DEV, and says so.
  const [major, minor] = release().split('.').map(Number);
  if (major * 100 + minor < 609)
    assert.match(r.stderr, /^(|ublk: this kernel has no DEL_DEV_ASYNC.*\n)$/);
  else assert.equal(r.stderr, '');
  assertNothingLeft();
});
