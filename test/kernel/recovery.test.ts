/**
 * When the daemon dies: `kill -9` of a daemon under load, with and without the kernel's user
 * recovery (`-r 1`, `-i 1`), `ublk recover`, and teardown while IO is in flight (`del`, SIGTERM),
 * all through the CLI as a user types it. What 6.1 does (drivers/block/ublk_drv.c): a monitor
 * every 5 s notices a dead queue thread; without recovery it fails the IO the daemon owned and
 * removes the disk (DEAD); with recovery it quiesces the device (QUIESCED), failing (-r 1) or
 * requeuing (-i 1) the requests the dead daemon owned and holding every other until a new daemon
 * serves them.
 *
 * Every `ublk` command costs several seconds of Node start-up under emulation, so each test makes
 * one device and checks several things on it. fio runs as a child process in the background, with
 * a deadline: an IO that hangs fails the test instead of hanging it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import {
  addDevice,
  assertNothingLeft,
  daemonPids,
  delAll,
  delDevice,
  RUN_DIR,
  stateFiles,
  ublk,
  waitFor,
} from './support/cli.js';
import {
  assertVerified,
  completedIos,
  jobErrors,
  killDaemon,
  killFio,
  recover,
  startFio,
  startVerifyAcrossRecovery,
  theDaemon,
} from './support/recovery.js';

const DAEMON_LOG = join(RUN_DIR, 'daemon.log');
const SLUGGISH = new URL('./fixtures/sluggish.js', import.meta.url).pathname;
const MiB = 2 ** 20;
/** kill -9 rounds of the no-recovery test (the issue asks for 4; each costs about a minute). */
const ROUNDS = Number(process.env.UBLK_RECOVERY_ROUNDS ?? 4);

let dir: string;
before(() => {
  dir = mkdtempSync('/tmp/ublk-recovery-test-');
});
afterEach(() => {
  killFio();
  delAll();
});
after(() => {
  killFio();
  delAll();
  rmSync(dir, { recursive: true, force: true });
});

interface Listing {
  state: string;
  daemon_pid: number;
  queues: { tid: number }[];
}

/** `ublk list -n ID --json`, parsed. */
function listing(id: number): Listing {
  const r = ublk('list', '-n', String(id), '--json');
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as Listing[])[0];
}

test(`no recovery: kill -9 under fio, ${ROUNDS} rounds: DEAD within 30 s, fio fails, del cleans`, async () => {
  for (let round = 1; round <= ROUNDS; round++) {
    const id = addDevice('-t', 'null', '-q', '2');
    const pid = theDaemon();
    const fio = startFio(dir, `dead-${round}`, [
      `--filename=/dev/ublkb${id}`,
      '--rw=randread',
      '--bs=4k',
      '--iodepth=32',
      '--numjobs=2',
      '--ioengine=io_uring',
      '--direct=1',
      '--time_based',
      '--runtime=600',
    ]);
    await waitFor('fio IO', () => completedIos(id) > 2000, 60_000);
    process.kill(pid, 'SIGKILL');
    const killedAt = Date.now();
    let seen: Listing | undefined;
    await waitFor(
      'state DEAD',
      () => (seen = listing(id)).state === 'DEAD',
      30_000 - (Date.now() - killedAt),
    );
    const { status, report } = await fio.finished(60_000);
    assert.notEqual(status, 0, 'fio failed');
    assert.ok(
      jobErrors(report).some((e) => e !== 0),
      `fio saw errors: ${jobErrors(report).join(' ')}`,
    );
    assert.deepEqual(
      seen!.queues.map((q) => q.tid),
      [0, 0],
      'a dead daemon has no queue threads',
    );
    assert.ok(!existsSync(`/dev/ublkb${id}`), 'the disk is gone');
    assert.deepEqual(stateFiles(), [`${id}.json`], 'the record stays until del');
    delDevice(id);
    assertNothingLeft();
  }
});

test('recovery with reissue on loop: 3 kill -9 / recover during one fio verify run, no error', async (t) => {
  const file = join(dir, 'reissue.img');
  writeFileSync(file, '');
  truncateSync(file, 256 * MiB);
  const id = addDevice('-t', 'loop', '-f', file, '-r', '1', '-i', '1', '-q', '2');
  let pid = theDaemon();
  // Most of the run is still ahead at the third kill: it needs some 45 s of the device LIVE.
  const size = 16 * MiB;
  const fioStart = Date.now();
  const fio = startVerifyAcrossRecovery(dir, 'reissue', id, { size, sizes: '--bsrange=4k-64k' });
  for (let kill = 1; kill <= 3; kill++) {
    const before = completedIos(id);
    await waitFor('fio IO', () => completedIos(id) > before + 50, 60_000);
    assert.ok(fio.running(), `fio still runs at kill ${kill}`);
    const killedAt = Date.now();
    await killDaemon(pid);
    pid = recover(id, pid);
    t.diagnostic(
      `kill ${kill} at ${((killedAt - fioStart) / 1000).toFixed(0)} s of fio, LIVE again after ${((Date.now() - killedAt) / 1000).toFixed(0)} s`,
    );
  }
  await assertVerified(fio, size);
  t.diagnostic(`fio took ${((Date.now() - fioStart) / 1000).toFixed(0)} s`);
  delDevice(id);
  assertNothingLeft();
});

test('recovery without reissue: the IO the dead daemon held fails; the device survives', async () => {
  // Every request is held 100 ms, so the daemon owns requests whenever it is killed.
  const id = addDevice('-t', SLUGGISH, '--delay_ms', '100', '-r', '1');
  const pid = theDaemon();
  const fio = startFio(dir, 'no-reissue', [
    `--filename=/dev/ublkb${id}`,
    '--rw=randread',
    '--bs=4k',
    '--iodepth=16',
    '--ioengine=io_uring',
    '--direct=1',
    '--time_based',
    '--runtime=600',
  ]);
  await waitFor('fio IO', () => completedIos(id) > 100, 60_000);
  await killDaemon(pid);
  let held: Listing | undefined;
  await waitFor('QUIESCED', () => (held = listing(id)).state === 'QUIESCED', 60_000);
  assert.deepEqual(
    held!.queues.map((q) => q.tid),
    [0],
    'no queue thread while no daemon',
  );
  // IO that comes after the death is held, not failed. The first fio cannot show it: whether it
  // still has IO outstanding once its held requests fail depends on how fast it reaped them, so a
  // second one starts now, with no daemon, and must wait until one serves it.
  const later = startFio(dir, 'no-reissue-later', [
    `--filename=/dev/ublkb${id}`,
    '--rw=randrw',
    '--bs=4k',
    '--iodepth=16',
    '--ioengine=io_uring',
    '--direct=1',
    '--size=1m',
  ]);
  const ios = completedIos(id);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.ok(later.running(), 'IO sent while QUIESCED waits for a daemon');
  assert.equal(completedIos(id), ios, 'and none of it completes without one');
  recover(id, pid);
  const { status, report } = await fio.finished(60_000);
  assert.notEqual(status, 0, 'fio failed');
  assert.deepEqual(jobErrors(report), [5], 'with EIO, the requests the daemon held');
  // The held IO is served by the new daemon, and the device keeps working.
  const after = await later.finished(60_000);
  assert.equal(after.status, 0, after.stderr);
  assert.deepEqual(jobErrors(after.report), [0]);
  delDevice(id);
  assertNothingLeft();
});

test('recovery with reissue: the requests the dead daemon held are served by the next one', async () => {
  // As above, the daemon holds 16 requests at any moment; with -i 1 none of them fails.
  const id = addDevice('-t', SLUGGISH, '--delay_ms', '100', '-i', '1');
  const pid = theDaemon();
  const fio = startFio(dir, 'reissue-held', [
    `--filename=/dev/ublkb${id}`,
    '--rw=randread',
    '--bs=4k',
    '--iodepth=16',
    '--ioengine=io_uring',
    '--direct=1',
    '--size=8m',
  ]);
  await waitFor('fio IO', () => completedIos(id) > 100, 60_000);
  assert.ok(fio.running(), 'fio runs at the kill');
  await killDaemon(pid);
  recover(id, pid);
  const { status, report, stderr } = await fio.finished(5 * 60_000);
  assert.equal(status, 0, stderr);
  assert.deepEqual(jobErrors(report), [0], 'no IO failed');
  assert.equal(report.jobs[0].read.io_bytes, 8 * MiB, 'every read done');
  delDevice(id);
  assertNothingLeft();
});

test('kill, recover, kill again while fio waits, del: fio ends with errors, nothing left', async () => {
  const id = addDevice('-t', 'null', '-r', '1', '-i', '1', '-q', '2');
  let pid = theDaemon();
  const fio = startFio(dir, 'kill-twice', [
    `--filename=/dev/ublkb${id}`,
    '--rw=randread',
    '--bs=4k',
    '--iodepth=32',
    '--ioengine=io_uring',
    '--direct=1',
    '--time_based',
    '--runtime=600',
  ]);
  await waitFor('fio IO', () => completedIos(id) > 1000, 60_000);
  await killDaemon(pid);
  pid = recover(id, pid);
  const before = completedIos(id);
  await waitFor('fio IO after recovery', () => completedIos(id) > before + 1000, 60_000);
  // No wait for the kernel's monitor: del races it, with fio's IO held or in flight.
  process.kill(pid, 'SIGKILL');
  delDevice(id);
  const { status } = await fio.finished(60_000);
  assert.notEqual(status, 0, 'fio failed once the device was gone');
  assertNothingLeft();
});

test('del during fio on 4 queues, and SIGTERM during fio: no hang, nothing left', async () => {
  for (const how of ['del', 'SIGTERM'] as const) {
    // 6.1 clamps nr_hw_queues to the CPU count: 4 queues on a machine with at least 4 CPUs.
    const id = addDevice('-t', 'null', '-q', '4', '-r', how === 'del' ? '0' : '1');
    const fio = startFio(dir, `teardown-${how}`, [
      `--filename=/dev/ublkb${id}`,
      '--rw=randrw',
      '--bs=4k',
      '--iodepth=32',
      '--numjobs=4',
      '--ioengine=io_uring',
      '--direct=1',
      '--time_based',
      '--runtime=600',
    ]);
    await waitFor('fio IO', () => completedIos(id) > 2000, 60_000);
    if (how === 'del') {
      delDevice(id);
    } else {
      const pid = theDaemon();
      process.kill(pid, 'SIGTERM');
      await waitFor('the daemon to exit', () => !daemonPids().includes(pid), 60_000);
    }
    const { status, report } = await fio.finished(60_000);
    assert.notEqual(status, 0, `${how}: fio failed once the device was gone`);
    assert.equal(report.jobs.length, 4);
    assertNothingLeft();
  }
});

test('a queue thread that throws ends the daemon with a message; a target module recovers', async () => {
  const crashAt = 7 * MiB;
  const id = addDevice('-t', SLUGGISH, '--crash_at', String(crashAt), '-r', '1');
  const pid = theDaemon();
  const logBefore = existsSync(DAEMON_LOG) ? readFileSync(DAEMON_LOG, 'utf8').length : 0;
  // The read that crashes the thread fails (without reissue, the dead daemon's requests do).
  const dd = startDd(id, crashAt);
  await waitFor('the daemon to exit', () => !daemonPids().includes(pid), 30_000);
  const log = readFileSync(DAEMON_LOG, 'utf8').slice(logBefore);
  assert.match(log, new RegExp(`ublk daemon ${pid}: device ${id} failed, daemon exiting`));
  assert.match(log, /queue 0 thread failed: Error: injected crash reading byte 7340032/);
  await waitFor('QUIESCED', () => listing(id).state === 'QUIESCED', 60_000);
  assert.notEqual(await dd, 0, 'the read in flight failed');
  // The record names the module; recover loads it again with the same options.
  recover(id, pid);
  assert.equal(await startDd(id, 0), 0, 'a read elsewhere works');
  delDevice(id);
  assertNothingLeft();
});

/** dd of one 4 KiB block at `offset` of /dev/ublkbID with O_DIRECT; resolves with its status. */
function startDd(id: number, offset: number): Promise<number | null> {
  const child = spawn(
    'dd',
    [
      `if=/dev/ublkb${id}`,
      'of=/dev/null',
      'bs=4096',
      'count=1',
      `skip=${offset / 4096}`,
      'iflag=direct',
      'status=none',
    ],
    { stdio: 'ignore' },
  );
  return new Promise((resolve) => child.once('exit', resolve));
}

// -e 1 (FAIL_IO), granted or refused by what the kernel reports, is in control-plane.test.ts.
test('refusals: recover of what cannot be recovered; stale records do no harm', async () => {
  const refused = (args: string[], pattern: RegExp) => {
    const r = ublk(...args);
    assert.notEqual(r.status, 0, `${args.join(' ')} should fail`);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr}`);
    assert.match(r.stderr, pattern);
  };
  refused(['recover', '-n', '9'], /^ublk: there is no ublk device 9$/m);
  // Stale records: a crashed daemon's of a device that no longer exists, and a torn one.
  writeFileSync(
    join(RUN_DIR, '40.json'),
    JSON.stringify({
      devId: 40,
      pid: 999999,
      queues: [],
      target: {},
      targetSource: '',
      options: {},
    }),
  );
  writeFileSync(join(RUN_DIR, '41.json'), '{"devId": 41, "pi');
  const id = addDevice('-t', 'null');
  const pid = theDaemon();
  refused(
    ['recover', '-n', String(id)],
    /was added without recovery \(-r 1\), so it cannot be recovered: remove it with 'ublk del -n \d+'$/m,
  );
  const recovering = addDevice('-t', 'null', '-r', '1');
  refused(
    ['recover', '-n', String(recovering)],
    new RegExp(`^ublk: device ${recovering} is LIVE and its daemon \\(pid \\d+\\) is running`),
  );
  const list = ublk('list');
  assert.equal(list.status, 0, list.stderr);
  assert.deepEqual(
    [...list.stdout.matchAll(/^dev id (\d+):/gm)].map((m) => Number(m[1])),
    [id, recovering],
  );
  assert.deepEqual(stateFiles().sort(), [`${id}.json`, `${recovering}.json`].sort());
  assert.ok(daemonPids().includes(pid));
  assert.equal(ublk('del', '-a').status, 0);
  assertNothingLeft();
});
