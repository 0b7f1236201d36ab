/**
 * The control plane of current ublk, through the CLI as a user types it: fail-IO recovery (-e 1),
 * quiesce + recover (a server upgrade), update_size, del --safe, --no_auto_part_scan and
 * unprivileged devices. Each test asks the kernel what it has (GET_FEATURES, or what ADD_DEV
 * grants before 6.5) and checks the feature where the kernel grants it, or the one-line refusal
 * that names the kernel that has it, with nothing left behind, where it does not: 6.1 runs the
 * refusals, 7.3 the features.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import { Control } from '../../src/ublk/control/control.js';
import { hasFlag, kernelFeatures } from '../../src/ublk/control/feature-flags.js';
import {
  addDevice,
  assertNothingLeft,
  CLI,
  daemonPids,
  delAll,
  delDevice,
  sh,
  stateFiles,
  ublk,
  waitFor,
  type Run,
} from './support/cli.js';
import {
  assertVerified,
  completedIos,
  killFio,
  startFio,
  startVerifyAcrossRecovery,
  theDaemon,
} from './support/recovery.js';
import { listed } from './support/targets.js';

const MiB = 2 ** 20;
let features = 0;
let dir: string;
const has = (flag: number) => hasFlag(features, flag);

before(async () => {
  const control = Control.open();
  try {
    features = await kernelFeatures(control);
  } finally {
    control.close();
  }
  dir = mkdtempSync('/tmp/ublk-control-plane-');
  // Like /tmp: the test users write their fio reports here too.
  chmodSync(dir, 0o1777);
});
afterEach(() => {
  killFio();
  delAll();
});
after(() => {
  delAll();
  rmSync(dir, { recursive: true, force: true });
});

/** A command that must fail with one line on stderr matching `pattern`. */
function refused(r: Run, pattern: RegExp): void {
  assert.notEqual(r.status, 0, `should fail: ${r.stdout}`);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr.trimEnd(), pattern);
}

/** A sparse file of `bytes`, for loop devices. */
function backingFile(name: string, bytes: number): string {
  const file = join(dir, name);
  writeFileSync(file, '');
  truncateSync(file, bytes);
  return file;
}

/** dd between a file and the device with O_DIRECT on the device's side, bounded in time. */
function dd(args: string[], timeoutMs = 60_000) {
  const started = Date.now();
  const r = spawnSync('dd', [...args, 'bs=1M', 'status=none'], { timeout: timeoutMs });
  return { status: r.status, ms: Date.now() - started, timedOut: r.error !== undefined };
}

function sameBytes(a: string, b: string): boolean {
  return readFileSync(a).equals(readFileSync(b));
}

test('fail-IO recovery (-e 1): FAIL_IO on kill -9, reads fail fast, recover keeps the data', async () => {
  const file = backingFile('fail-io.img', 64 * MiB);
  if (!has(UBLK_F.USER_RECOVERY_FAIL_IO)) {
    refused(
      ublk('add', '-t', 'loop', '-f', file, '-e', '1'),
      /^ublk: this kernel's ublk driver does not support USER_RECOVERY_FAIL_IO \(Linux 6\.13\+\)$/,
    );
    assertNothingLeft();
    return;
  }
  const id = addDevice('-t', 'loop', '-f', file, '-e', '1');
  const data = join(dir, 'fail-io.data');
  writeFileSync(data, randomBytes(4 * MiB));
  assert.equal(dd([`if=${data}`, `of=/dev/ublkb${id}`, 'oflag=direct', 'conv=fsync']).status, 0);
  const pid = theDaemon();
  process.kill(pid, 'SIGKILL');
  const killedAt = Date.now();
  await waitFor('FAIL_IO', () => listed(id).state === 'FAIL_IO', 30_000);
  const failIoAfter = Date.now() - killedAt;
  const read = dd(
    [`if=/dev/ublkb${id}`, `of=${join(dir, 'fail-io.none')}`, 'iflag=direct', 'count=1'],
    20_000,
  );
  assert.ok(!read.timedOut, 'a read without a daemon does not wait');
  assert.notEqual(read.status, 0, 'a read without a daemon fails (EIO)');
  assert.ok(read.ms < 10_000, `and fails fast: ${read.ms} ms`);
  const r = ublk('recover', '-n', String(id));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /state LIVE/);
  const back = join(dir, 'fail-io.back');
  assert.equal(dd([`if=/dev/ublkb${id}`, `of=${back}`, 'iflag=direct', 'count=4']).status, 0);
  assert.ok(sameBytes(back, data), 'the data written before the kill is intact');
  assert.ok(failIoAfter < 30_000, `FAIL_IO after ${failIoAfter} ms`);
  delDevice(id);
  assertNothingLeft();
});

test('quiesce: the daemon hands the device to `recover` during fio verify, 0 errors', async () => {
  const file = backingFile('quiesce.img', 64 * MiB);
  const id = addDevice('-t', 'loop', '-f', file, '-r', '1', '-q', '2');
  const pid = theDaemon();
  if (!has(UBLK_F.QUIESCE)) {
    refused(
      ublk('quiesce', '-n', String(id)),
      /^ublk: quiesce needs UBLK_F_QUIESCE \(Linux 6\.16\+\), which this kernel's ublk driver lacks$/,
    );
    assert.equal(listed(id).state, 'LIVE');
    assert.deepEqual(daemonPids(), [pid], 'the daemon still serves it');
    delDevice(id);
    assertNothingLeft();
    return;
  }
  // The run outlasts quiesce + recover.
  const size = 32 * MiB;
  const fio = startVerifyAcrossRecovery(dir, 'quiesce', id, { size, sizes: '--bsrange=4k-64k' });
  await waitFor('fio IO', () => completedIos(id) > 100, 60_000);
  const q = ublk('quiesce', '-n', String(id));
  assert.equal(q.status, 0, q.stderr);
  assert.equal(q.stdout, `dev id ${id}: state QUIESCED\n`);
  // QUIESCED once it closed /dev/ublkcN; its exit comes after.
  await waitFor('the old daemon to exit', () => !daemonPids().includes(pid), 30_000);
  assert.deepEqual(stateFiles(), [`${id}.json`], 'its record stays for recover');
  assert.ok(fio.running(), 'fio waits, its IO held');
  const r = ublk('recover', '-n', String(id));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /state LIVE/);
  await assertVerified(fio, size);
  delDevice(id);
  const plain = addDevice('-t', 'null');
  refused(
    ublk('quiesce', '-n', String(plain)),
    /^ublk: device \d+ was added without recovery \(-r 1\), so it cannot be quiesced/,
  );
  delDevice(plain);
  assertNothingLeft();
});

test('update_size: blockdev sees the new size', () => {
  const id = addDevice('-t', 'null');
  const size = () => Number(sh('blockdev', ['--getsize64', `/dev/ublkb${id}`]).trim());
  const before = size();
  assert.equal(before, 250 * 2 ** 30);
  const r = ublk('update_size', '-n', String(id), '--size', '1G');
  if (!has(UBLK_F.UPDATE_SIZE)) {
    refused(
      r,
      /^ublk: resizing a device \(update_size\) needs UBLK_F_UPDATE_SIZE \(Linux 6\.16\+\), which this kernel's ublk driver lacks$/,
    );
    assert.equal(size(), before, 'the size did not change');
  } else {
    assert.equal(r.status, 0, r.stderr);
    assert.equal(size(), 2 ** 30);
    assert.equal(listed(id).dev_capacity, 2 ** 30 / 512);
    refused(ublk('update_size', '-n', String(id), '--size', '1000'), /multiple of its block size/);
  }
  delDevice(id);
  assertNothingLeft();
});

test('del --safe: refused (EBUSY) while the disk is open, the device still served; closed, it goes', () => {
  const id = addDevice('-t', 'null');
  const disk = `/dev/ublkb${id}`;
  if (!has(UBLK_F.SAFE_STOP_DEV)) {
    refused(
      ublk('del', '-n', String(id), '--safe'),
      /^ublk: del --safe needs UBLK_F.SAFE_STOP_DEV \(Linux 7\.0\+\), which this kernel's ublk driver lacks$/,
    );
    assert.equal(listed(id).state, 'LIVE');
    delDevice(id);
    assertNothingLeft();
    return;
  }
  const fd = openSync(disk, 'r');
  try {
    refused(
      ublk('del', '-n', String(id), '--safe'),
      new RegExp(`^ublk: device ${id} is open \\(EBUSY\\): not deleted`),
    );
    assert.equal(listed(id).state, 'LIVE');
    assert.equal(dd([`if=${disk}`, 'of=/dev/null', 'iflag=direct', 'count=1']).status, 0, 'served');
  } finally {
    closeSync(fd);
  }
  const r = ublk('del', '-n', String(id), '--safe');
  assert.equal(r.status, 0, r.stderr);
  assertNothingLeft();
});

/** An MBR with one Linux partition from sector 2048 to the end. */
function writeMbr(file: string, sectors: number): void {
  const mbr = Buffer.alloc(512);
  const entry = 446;
  mbr[entry + 4] = 0x83;
  mbr.writeUInt32LE(2048, entry + 8);
  mbr.writeUInt32LE(sectors - 2048, entry + 12);
  mbr.writeUInt16LE(0xaa55, 510);
  const fd = openSync(file, 'r+');
  try {
    writeFileSync(fd, mbr);
  } finally {
    closeSync(fd);
  }
}

test('--no_auto_part_scan: no ublkbNp1 with it, one without; rereadpt still reads the table', async () => {
  const file = backingFile('parts.img', 32 * MiB);
  writeMbr(file, (32 * MiB) / 512);
  if (!has(UBLK_F.NO_AUTO_PART_SCAN)) {
    refused(
      ublk('add', '-t', 'loop', '-f', file, '--no_auto_part_scan'),
      /^ublk: this kernel's ublk driver does not support NO_AUTO_PART_SCAN \(Linux 7\.0\+\)$/,
    );
    assertNothingLeft();
    return;
  }
  const partition = (id: number) => `/sys/block/ublkb${id}/ublkb${id}p1`;
  const scanned = addDevice('-t', 'loop', '-f', file);
  const addedAt = Date.now();
  // 7.x scans partitions in a work item after START_DEV.
  await waitFor('ublkbNp1', () => existsSync(partition(scanned)), 30_000);
  const scanMs = Date.now() - addedAt;
  delDevice(scanned);
  const unscanned = addDevice('-t', 'loop', '-f', file, '--no_auto_part_scan');
  await new Promise((resolve) => setTimeout(resolve, Math.max(5_000, 3 * scanMs)));
  assert.ok(!existsSync(partition(unscanned)), 'no partition scan at start');
  sh('blockdev', ['--rereadpt', `/dev/ublkb${unscanned}`]);
  assert.ok(existsSync(partition(unscanned)), 'the table is there to read on demand');
  delDevice(unscanned);
  assertNothingLeft();
});

interface User {
  uid: number;
  name: string;
  /** Runs a command as this user. */
  prefix: string[];
}

/** A non-root user of the guest (its /etc is a writable overlay), made once. */
function makeUser(name: string, uid: number): User {
  const known = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  if (known.status !== 0) {
    // A group of its own (-U): the kernel gives the device the owner's gid too.
    sh('useradd', ['-M', '-U', '-u', String(uid), '-s', '/bin/sh', name]);
  }
  const gid = Number(sh('id', ['-g', name]).trim());
  return {
    uid,
    name,
    prefix: ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--'],
  };
}

function ublkAs(user: User, ...args: string[]): Run {
  const [file, ...argv] = user.prefix;
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: '/tmp', TMPDIR: '/tmp' };
  delete env.UBLK_RUN_DIR;
  delete env.XDG_RUNTIME_DIR;
  const r = spawnSync(file, [...argv, process.execPath, CLI, ...args], {
    encoding: 'utf8',
    timeout: 10 * 60_000,
    env,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A user's run dir, as `ublk` picks it for them (see runDir). */
const userRunDir = (user: User) => join('/tmp', `ublk-${user.uid}`, 'ublksrvd');

/**
 * What udev does for a new ublk node with our rule (udev/99-ublk-dev.rules): runs `ublk chown %k`
 * as root. The VM has no udev daemon, so a shell loop watches /dev instead: in a process of its
 * own, since the test's event loop is blocked while a `ublk` command runs.
 */
const UDEV_LOOP = `prev=" "
while :; do
  cur=" $(cd /dev && ls -d ublk[bc][0-9]* 2>/dev/null | grep -E '^ublk[bc][0-9]+$' | tr '\\n' ' ')"
  for name in $cur; do
    case "$prev" in *" $name "*) ;; *) "$NODE" "$CLI" chown "$name" & ;; esac
  done
  prev="$cur"
  sleep 0.1
done`;

function emulateUdev(): () => void {
  const child = spawn('sh', ['-c', UDEV_LOOP], {
    stdio: 'ignore',
    env: { ...process.env, NODE: process.execPath, CLI },
  });
  return () => child.kill('SIGKILL');
}

test('unprivileged devices: a user adds, serves, lists and deletes their own, and cannot touch others', async () => {
  const alice = makeUser('ublkalice', 4201);
  const bob = makeUser('ublkbob', 4202);
  const control = '/dev/ublk-control';
  const mode = statSync(control).mode & 0o777;
  // The rule's MODE="0666": every user may send control commands; the kernel checks each.
  chmodSync(control, 0o666);
  const stopUdev = emulateUdev();
  try {
    if (!has(UBLK_F.UNPRIVILEGED_DEV)) {
      const line =
        /^ublk: an unprivileged device \(--unprivileged\) needs UBLK_F_UNPRIVILEGED_DEV \(Linux 6\.3\+\), which this kernel's ublk driver lacks$/;
      refused(ublk('add', '-t', 'null', '--unprivileged'), line);
      refused(ublkAs(alice, 'add', '-t', 'null', '--unprivileged'), line);
      assertNothingLeft();
      assert.ok(
        !existsSync(userRunDir(alice)) ||
          readdirSync(userRunDir(alice)).every((n) => !n.endsWith('.json')),
      );
      return;
    }
    const home = join(dir, 'alice');
    sh('mkdir', ['-p', home]);
    chownSync(home, alice.uid, Number(sh('id', ['-g', alice.name]).trim()));
    const image = join(home, 'disk.img');
    writeFileSync(image, '');
    truncateSync(image, 64 * MiB);
    chownSync(image, alice.uid, statSync(home).gid);
    const rootDevice = addDevice('-t', 'null');
    // null stores nothing, so it is read; loop is written and verified.
    const cases = [
      { target: ['-t', 'null'], io: ['--rw=randread'] },
      {
        target: ['-t', 'loop', '-f', image],
        io: ['--rw=randwrite', '--verify=crc32c', '--verify_fatal=1'],
      },
    ];
    for (const { target, io } of cases) {
      const add = ublkAs(alice, 'add', ...target, '--unprivileged');
      assert.equal(add.status, 0, add.stderr);
      const id = Number(/^dev id (\d+):/m.exec(add.stdout)![1]);
      const owner = `owner: ${alice.uid}:${statSync(home).gid}`;
      assert.ok(add.stdout.includes(owner), add.stdout);
      // The 1.8 layout's own line: `\tflags 0x... [ NAME ... ]`.
      const flags = Number(/^\tflags (0x[0-9a-f]+) \[/m.exec(add.stdout)![1]);
      assert.ok(hasFlag(flags, UBLK_F.UNPRIVILEGED_DEV), `flags ${flags.toString(16)}`);
      await waitFor(
        '/dev/ublkbN given to its owner',
        () => statSync(`/dev/ublkb${id}`).uid === alice.uid,
        60_000,
      );
      const fio = startFio(
        dir,
        `unpriv-${target[1]}`,
        [
          `--filename=/dev/ublkb${id}`,
          '--ioengine=io_uring',
          '--direct=1',
          '--bs=4k',
          '--iodepth=16',
          '--size=4m',
          ...io,
        ],
        alice.prefix,
      );
      const { status, report, stderr } = await fio.finished(5 * 60_000);
      assert.equal(status, 0, stderr);
      assert.deepEqual(
        report.jobs.map((j) => j.error),
        [0],
      );
      const list = ublkAs(alice, 'list');
      assert.equal(list.status, 0, list.stderr);
      assert.deepEqual(
        [...list.stdout.matchAll(/^dev id (\d+):/gm)].map((m) => Number(m[1])),
        [id],
        "alice's list shows her device only",
      );
      const notYours = /^ublk: .*failed: (EACCES|EPERM): it is not yours/;
      refused(ublkAs(bob, 'del', '-n', String(id)), notYours);
      refused(ublkAs(bob, 'recover', '-n', String(id)), notYours);
      assert.equal(listed(id).state, 'LIVE', "bob's del changed nothing");
      refused(ublkAs(alice, 'del', '-n', String(rootDevice)), notYours);
      // DEL_DEV_ASYNC is not open to unprivileged devices: --async says so and uses DEL_DEV.
      const async = target[1] === 'loop';
      const del = ublkAs(alice, 'del', ...(async ? ['--async'] : []), '-n', String(id));
      assert.equal(del.status, 0, del.stderr);
      if (async) {
        assert.match(
          del.stderr,
          /^ublk: device \d+ is unprivileged, for which the kernel has no DEL_DEV_ASYNC; deleted with DEL_DEV$/m,
        );
      }
      assert.ok(!existsSync(`/dev/ublkc${id}`), 'deleted');
    }
    assert.deepEqual(
      readdirSync(userRunDir(alice)).filter((n) => n.endsWith('.json')),
      [],
      "no record left in alice's run dir",
    );
    delDevice(rootDevice);
    assertNothingLeft();
  } finally {
    stopUdev();
    chmodSync(control, mode);
  }
});
