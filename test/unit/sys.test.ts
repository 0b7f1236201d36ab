import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { constants as fsConstants, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as sys from '../../src/sys.js';
import { evalCExpressions } from './support/cheader.js';

const { O_RDONLY, O_RDWR, O_CREAT, O_NONBLOCK } = fsConstants;
const { O_CLOEXEC } = sys.constants;
const dir = mkdtempSync(join(tmpdir(), 'sys-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const sysModule = fileURLToPath(new URL('../../src/sys.js', import.meta.url));

function assertErrno(fn: () => unknown, code: string, syscall: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(sys.isErrnoError(error, code), `expected ${code}, got ${String(error)}`);
    assert.equal(error.syscall, syscall);
    assert.ok(error.errno > 0);
    assert.match(error.message, new RegExp(`^${syscall}: ${code}`));
    return true;
  });
}

/** Runs an ES module snippet (with `sys` imported) in a fresh node process. */
function runChild(body: string, nodeFlags: string[] = [], timeout = 10_000) {
  const source = `import * as sys from ${JSON.stringify(sysModule)};\n${body}`;
  return spawnSync(process.execPath, [...nodeFlags, '--input-type=module', '-e', source], {
    encoding: 'utf8',
    timeout,
  });
}

test('constants match the C headers', () => {
  const c = evalCExpressions(['fcntl.h', 'sys/eventfd.h', 'sys/prctl.h', 'linux/fs.h'], {
    O_CLOEXEC: 'O_CLOEXEC',
    EFD_CLOEXEC: 'EFD_CLOEXEC',
    EFD_NONBLOCK: 'EFD_NONBLOCK',
    PR_SET_IO_FLUSHER: 'PR_SET_IO_FLUSHER',
    PR_GET_IO_FLUSHER: 'PR_GET_IO_FLUSHER',
    BLKGETSIZE64: 'BLKGETSIZE64',
  });
  for (const [name, value] of c) {
    assert.equal(BigInt(sys.constants[name as keyof typeof sys.constants]), value, name);
  }
  const pageSize = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }));
  assert.equal(sys.constants.PAGE_SIZE, pageSize);
});

test('open of a missing file throws ENOENT naming the call', () => {
  assertErrno(() => sys.open(join(dir, 'missing'), O_RDONLY, 0), 'ENOENT', 'open');
  assert.throws(() => sys.open('a\0b', O_RDONLY, 0), /EINVAL/);
  assert.throws(() => sys.open(42 as unknown as string, O_RDONLY, 0), TypeError);
});

test('open creates with a mode, close releases, double close is EBADF', () => {
  const path = join(dir, 'created');
  const fd = sys.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o640);
  assert.ok(fd >= 0);
  writeSync(fd, 'hello');
  sys.close(fd);
  assert.equal(readFileSync(path, 'utf8'), 'hello');
  assertErrno(() => sys.close(fd), 'EBADF', 'close');
});

test('ErrnoError guard and errnoError', () => {
  const error = sys.errnoError('io_uring_enter', 9);
  assert.ok(sys.isErrnoError(error, 'EBADF'));
  assert.equal(error.errno, 9);
  assert.equal(error.message, 'io_uring_enter: EBADF');
  assert.ok(!sys.isErrnoError(error, 'ENOENT'));
  assert.ok(!sys.isErrnoError(new Error('plain')));
  assert.ok(!sys.isErrnoError('EBADF'));
});

test('io_uring calls: setup throws, enter and register return -errno', () => {
  assertErrno(() => sys.ioUringSetup(0, new Uint8Array(120)), 'EINVAL', 'io_uring_setup');
  assert.throws(() => sys.ioUringSetup(4, new Uint8Array(64)), TypeError);
  assert.equal(sys.ioUringEnter(-1, 0, 0, 0), -9);
  const fd = sys.open(join(dir, 'created'), O_RDONLY, 0);
  try {
    // Not a ring: io_uring_enter says EOPNOTSUPP, io_uring_register ENXIO or EOPNOTSUPP.
    assert.equal(sys.ioUringEnter(fd, 0, 0, 0), -95);
    assert.ok(sys.ioUringRegister(fd, 4, new Int32Array([0]), 1) < 0);
  } finally {
    sys.close(fd);
  }
});

test('anonymous mmap is page aligned and writable; munmap detaches', () => {
  const { buffer, address } = sys.mmap(-1, 0, 3 * sys.constants.PAGE_SIZE, true);
  assert.equal(address % sys.constants.PAGE_SIZE, 0);
  assert.equal(buffer.byteLength, 3 * sys.constants.PAGE_SIZE);
  const bytes = new Uint8Array(buffer);
  const words = new Uint32Array(buffer, 8, 2);
  bytes.fill(0xab);
  assert.equal(sys.addressOf(bytes), address);
  assert.equal(sys.addressOf(words), address + 8);
  assert.equal(sys.addressOf(new DataView(buffer, 100)), address + 100);

  sys.munmap(buffer);
  assert.equal(buffer.byteLength, 0);
  assert.equal(bytes.length, 0);
  assert.equal(words.length, 0);
  assert.equal(bytes[0], undefined); // no access to the unmapped pages
  bytes[0] = 1; // ignored, no fault
  assert.throws(() => new Uint8Array(buffer, 0, 1), TypeError);
  sys.munmap(buffer); // already unmapped: nothing happens
  assert.throws(() => sys.munmap(new ArrayBuffer(8)), TypeError);
});

test('shared file mmap reads and writes the file at an offset', () => {
  const path = join(dir, 'mapped');
  const page = sys.constants.PAGE_SIZE;
  const content = Buffer.alloc(2 * page, 'x');
  content.write('second page', page);
  writeFileSync(path, content);
  const fd = sys.open(path, O_RDWR, 0);
  try {
    const { buffer } = sys.mmap(fd, page, page, true);
    const bytes = new Uint8Array(buffer);
    assert.equal(Buffer.from(bytes.subarray(0, 11)).toString(), 'second page');
    bytes.set(Buffer.from('written'), 0);
    sys.munmap(buffer);
    assert.equal(
      readFileSync(path)
        .subarray(page, page + 11)
        .toString(),
      'writtenpage',
    );
    assertErrno(() => sys.mmap(fd, 1, page, true), 'EINVAL', 'mmap'); // unaligned offset
  } finally {
    sys.close(fd);
  }
  assertErrno(() => sys.mmap(fd, 0, page, false), 'EBADF', 'mmap');
});

test('a dropped mapping is unmapped by its finalizer', () => {
  // 32 x 8 MiB touched and dropped: without the finalizer, RSS stays 256 MiB higher.
  const result = runChild(
    `
    const { readFileSync } = await import('node:fs');
    const rssKb = () => Number(/VmRSS:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
    const before = rssKb();
    for (let i = 0; i < 32; i++) new Uint8Array(sys.mmap(-1, 0, 8 << 20, true).buffer).fill(1);
    const peak = rssKb() - before;
    for (let i = 0; i < 20 && rssKb() - before > 64 << 10; i++) {
      globalThis.gc();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    console.log(peak, rssKb() - before);
  `,
    ['--expose-gc'],
  );
  const [peak, after] = String(result.stdout).trim().split(' ').map(Number);
  assert.ok(peak > 200 << 10, `peak growth ${peak} KiB: the memory was never touched`);
  assert.ok(after < 64 << 10, `RSS still ${after} KiB higher after GC`);
});

test('eventfd counter reads back and resets', () => {
  const fd = sys.eventfd(3, sys.constants.EFD_NONBLOCK | sys.constants.EFD_CLOEXEC);
  try {
    assert.equal(sys.readEventfd(fd), 3);
    assert.equal(sys.readEventfd(fd), 0);
    writeSync(fd, new BigUint64Array([5n]));
    assert.equal(sys.readEventfd(fd), 5);
  } finally {
    sys.close(fd);
  }
  assertErrno(() => sys.eventfd(0, 0xffff), 'EINVAL', 'eventfd');
});

test('watchReadable calls back on the event loop; unwatch is idempotent', async () => {
  const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
  let calls = 0;
  const fired = new Promise<number>((resolve) => {
    const handle = sys.watchReadable(fd, (status) => {
      calls++;
      assert.equal(sys.readEventfd(fd), 7);
      sys.unwatch(handle);
      sys.unwatch(handle);
      resolve(status);
    });
    setTimeout(() => writeSync(fd, new BigUint64Array([7n])), 20);
  });
  // Resolving from the callback proves promise jobs run after it (no other I/O wakes us).
  assert.equal(await fired, 0);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(calls, 1);
  sys.close(fd);
  assert.throws(() => sys.unwatch({} as sys.WatchHandle), TypeError);
});

test('an unref-ed watch lets the process exit, a ref-ed one keeps it alive', () => {
  const script = (ref: boolean): string => `
    const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
    const handle = sys.watchReadable(fd, () => {});
    sys.setWatchRef(handle, ${ref});
  `;
  const started = Date.now();
  const unrefd = runChild(script(false));
  assert.equal(unrefd.status, 0, String(unrefd.stderr));
  assert.ok(Date.now() - started < 5_000);
  const refd = runChild(script(true), [], 1_000);
  assert.equal(refd.status, null, 'a ref-ed watch must keep the process alive');
  assert.equal(refd.signal, 'SIGTERM');
});

test('an exception thrown by a watch callback is an uncaught exception', () => {
  const result = runChild(`
    const fd = sys.eventfd(1, sys.constants.EFD_NONBLOCK);
    sys.watchReadable(fd, () => { throw new Error('boom from callback'); });
  `);
  assert.equal(result.status, 1);
  assert.match(String(result.stderr), /boom from callback/);
});

test('gettid and schedSetaffinity', () => {
  assert.equal(sys.gettid(), process.pid);
  const status = (): string =>
    /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))![1];
  const original = status();
  const cpus = original.split(',').flatMap((range) => {
    const [lo, hi = lo] = range.split('-').map(Number);
    return Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
  });
  try {
    sys.schedSetaffinity(0, [cpus[0]]);
    assert.equal(status(), String(cpus[0]));
  } finally {
    sys.schedSetaffinity(0, cpus);
  }
  assert.equal(status(), original);
  assertErrno(() => sys.schedSetaffinity(0, [100_000]), 'EINVAL', 'sched_setaffinity');
  assert.throws(() => sys.schedSetaffinity(0, [-1]), TypeError);
});

test('prctl sets and reads back a process attribute', () => {
  const c = evalCExpressions(['sys/prctl.h'], {
    PR_SET_DUMPABLE: 'PR_SET_DUMPABLE',
    PR_GET_DUMPABLE: 'PR_GET_DUMPABLE',
  });
  const result = runChild(`
    sys.prctl(${c.get('PR_SET_DUMPABLE')}, 0, 0, 0, 0);
    const cleared = sys.prctl(${c.get('PR_GET_DUMPABLE')}, 0, 0, 0, 0);
    sys.prctl(${c.get('PR_SET_DUMPABLE')}, 1, 0, 0, 0);
    console.log(cleared, sys.prctl(${c.get('PR_GET_DUMPABLE')}, 0, 0, 0, 0));
  `);
  assert.equal(String(result.stdout).trim(), '0 1', String(result.stderr));
  assertErrno(() => sys.prctl(-1, 0, 0, 0, 0), 'EINVAL', 'prctl');
});

function hasCapability(bit: number): boolean {
  const effective = /CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1];
  return ((BigInt(`0x${effective}`) >> BigInt(bit)) & 1n) === 1n;
}

const CAP_SYS_RESOURCE = 24;

// The kernel suite covers the granted case in the VM; a container without CAP_SYS_RESOURCE must
// see the refusal as an EPERM error, which the queue threads tolerate.
test('prctl PR_SET_IO_FLUSHER: set where permitted, EPERM where not', () => {
  const { PR_SET_IO_FLUSHER, PR_GET_IO_FLUSHER } = sys.constants;
  const result = runChild(`
    try {
      sys.prctl(${PR_SET_IO_FLUSHER}, 1, 0, 0, 0);
      console.log(sys.prctl(${PR_GET_IO_FLUSHER}, 0, 0, 0, 0));
    } catch (e) {
      console.log(e.code);
    }
  `);
  const expected = hasCapability(CAP_SYS_RESOURCE) ? '1' : 'EPERM';
  assert.equal(String(result.stdout).trim(), expected, String(result.stderr));
});

test('ioctl with a pointer argument (FIONREAD) and with an integer', () => {
  const c = evalCExpressions(['sys/ioctl.h'], { FIONREAD: 'FIONREAD' });
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const fd = sys.open(fifo, O_RDWR | O_NONBLOCK, 0);
  try {
    writeSync(fd, 'hello');
    const available = new Int32Array(1);
    assert.equal(sys.ioctl(fd, Number(c.get('FIONREAD')), available), 0);
    assert.equal(available[0], 5);
    assertErrno(() => sys.ioctl(fd, sys.constants.BLKGETSIZE64, 0), 'ENOTTY', 'ioctl');
  } finally {
    sys.close(fd);
  }
});

/** A block device this process may open, preferring one with a non-zero size. */
function openBlockDevice(): { fd: number; name: string } | undefined {
  const bySize = readdirSync('/sys/class/block')
    .map((name) => ({ name, size: Number(readFileSync(`/sys/class/block/${name}/size`, 'utf8')) }))
    .sort((a, b) => b.size - a.size);
  for (const { name } of bySize) {
    try {
      return { fd: sys.open(`/dev/${name}`, O_RDONLY | O_CLOEXEC, 0), name };
    } catch (error) {
      if (!sys.isErrnoError(error)) throw error;
    }
  }
  return undefined;
}

test('ioctl BLKGETSIZE64 matches sysfs', () => {
  const device = openBlockDevice();
  assert.ok(device, 'this machine has a block device to open');
  try {
    const size = new BigUint64Array([0xdeadbeefn]);
    assert.equal(sys.ioctl(device.fd, sys.constants.BLKGETSIZE64, size), 0);
    const sectors = BigInt(readFileSync(`/sys/class/block/${device.name}/size`, 'utf8').trim());
    assert.equal(size[0], sectors * 512n);
  } finally {
    sys.close(device.fd);
  }
});

test('majorMinor decodes a dev_t as glibc does, large numbers included', () => {
  assert.equal(sys.majorMinor(0x0103), '1:3'); // /dev/null
  assert.equal(sys.majorMinor(0), '0:0');
  // major 259, minor 300: the minor's high bits sit above the major's low ones (bits 20-31).
  assert.equal(sys.majorMinor((259 << 8) | 44 | (1 << 20)), '259:300');
  // major 4096: a major's bits from the twelfth up stand at bit 44 and above.
  assert.equal(sys.majorMinor(2 ** 44), '4096:0');
});
