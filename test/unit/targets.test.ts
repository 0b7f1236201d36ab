/**
 * setup() of the loop and mem targets, without a kernel driver: argument checks, their one-line
 * errors, the geometry and capabilities they declare. The IO paths are in test/kernel/.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { UserError } from '../../src/errors.js';
import { mmap, munmap } from '../../src/sys.js';
import { Ring, TMPFS_MAGIC } from '../../src/uring/index.js';
import loop from '../../src/targets/loop.js';
import mem from '../../src/targets/mem.js';
import type { TargetArgs, TargetSetup } from '../../src/targets/define.js';

const env = { recovering: false, startEmpty: false, queues: 1 };
const dir = mkdtempSync(join(tmpdir(), 'ublk-targets-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, size: number): string {
  const path = join(dir, name);
  writeFileSync(path, Buffer.alloc(size));
  return path;
}

async function setupOf(target: typeof loop | typeof mem, args: TargetArgs): Promise<TargetSetup> {
  return (await target.setup(args, env)) as TargetSetup;
}

async function rejects(target: typeof loop | typeof mem, args: TargetArgs, message: RegExp) {
  await assert.rejects(
    async () => setupOf(target, args),
    (err: unknown) => err instanceof UserError && message.test(err.message),
  );
}

test('loop: a file gives its size minus the offset, and the info ublksrv shows', async () => {
  const path = file('ok.img', 4 << 20);
  const setup = await setupOf(loop, { file: path, offset: '2048' });
  try {
    assert.equal(setup.size, 3 << 20);
    assert.deepEqual(Object.keys(setup.info!).sort(), ['backing_file', 'direct_io', 'offset']);
    assert.equal(setup.info!.backing_file, path);
    assert.equal(setup.info!.offset, 2048);
    assert.ok(setup.info!.direct_io === 0 || setup.info!.direct_io === 1);
    const caps = setup.capabilities!;
    assert.equal(caps.volatileCache, true);
    assert.equal(caps.fua, true);
    assert.ok([512, 1024, 2048, 4096].includes(caps.logicalBlockSize!));
    assert.ok(caps.physicalBlockSize! >= caps.logicalBlockSize!);
    assert.equal(typeof (setup.shared as { fd: number }).fd, 'number');
  } finally {
    await setup.close?.();
  }
});

test('loop --buffered_io: direct_io 0 and 512-byte blocks', async () => {
  const setup = await setupOf(loop, { file: file('buffered.img', 1 << 20), buffered_io: true });
  try {
    assert.equal(setup.info!.direct_io, 0);
    assert.equal(setup.capabilities!.logicalBlockSize, 512);
  } finally {
    await setup.close?.();
  }
});

test('loop: close() closes the fd that setup opened', async () => {
  const setup = await setupOf(loop, { file: file('close.img', 1 << 20) });
  const { fd } = setup.shared as { fd: number };
  fstatSync(fd);
  await setup.close?.();
  assert.throws(() => fstatSync(fd), { code: 'EBADF' });
});

test('loop: bad arguments are one-line UserErrors', async () => {
  const directory = join(dir, 'a-dir');
  mkdirSync(directory);
  await rejects(loop, {}, /^loop: no backing file: use -f FILE$/);
  await rejects(loop, { file: join(dir, 'nope.img') }, /^loop: backing file .* does not exist$/);
  await rejects(loop, { file: directory }, /is a directory, not a file or block device$/);
  await rejects(loop, { file: file('empty.img', 0) }, /empty\.img is empty/);
  await rejects(
    loop,
    { file: file('odd.img', 1000) },
    /^loop: the size of .*odd\.img \(1000 bytes\) is not a multiple of the block size 512$/,
  );
  await rejects(
    loop,
    { file: file('small.img', 4096), offset: '8' },
    /--offset 8 sectors is at or beyond the end/,
  );
  await rejects(loop, { file: file('x.img', 4096), offset: '1e3' }, /invalid --offset '1e3'/);
  await rejects(loop, { file: '/dev/null' }, /is not a regular file or a block device/);
});

test('loop: a failed setup leaves no fd open', async () => {
  const path = file('odd2.img', 1000);
  const before = fdCount();
  await rejects(loop, { file: path }, /not a multiple/);
  assert.equal(fdCount(), before);
});

/** The file status flags of one of our fds (octal in /proc/self/fdinfo). */
function statusFlags(fd: number): number {
  return parseInt(
    /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1],
    8,
  );
}

/** One 4 KiB ring read at offset 0 (WRITE: a ring write of `bytes`): result and the bytes read. */
function ringIo(fd: number, write?: Uint8Array): { res: number; bytes: Uint8Array } {
  const mapping = mmap(-1, 0, 4096, true); // aligned, for O_DIRECT
  const ring = Ring.create({ entries: 1 });
  try {
    const bytes = new Uint8Array(mapping.buffer);
    if (write) {
      bytes.set(write);
      ring.sq.prepWrite(fd, mapping.address, 4096, 0, 1);
    } else {
      ring.sq.prepRead(fd, mapping.address, 4096, 0, 1);
    }
    assert.ok(ring.submitAndWait(1) >= 0);
    let res = NaN;
    ring.drain((_userData, r) => (res = r));
    return { res, bytes: bytes.slice() };
  } finally {
    ring.close();
    munmap(mapping.buffer);
  }
}

/** A folder on tmpfs, when /dev/shm is one. */
const shm =
  statfsSync('/dev/shm').type === TMPFS_MAGIC
    ? mkdtempSync('/dev/shm/ublk-targets-unit-')
    : undefined;
after(() => shm && rmSync(shm, { recursive: true, force: true }));

/**
 * Whether this kernel's io_uring serves a tmpfs file opened O_DIRECT and O_NONBLOCK (false where
 * tmpfs refuses O_DIRECT, before 6.6).
 */
function servesNonBlockingTmpfs(folder: string): boolean {
  const path = join(folder, 'probe.img');
  writeFileSync(path, Buffer.alloc(4096));
  let probe: number;
  try {
    probe = openSync(path, fsConstants.O_RDWR | fsConstants.O_DIRECT | fsConstants.O_NONBLOCK);
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'EINVAL', 'O_DIRECT refused');
    return false;
  }
  try {
    return ringIo(probe).res === 4096;
  } finally {
    closeSync(probe);
  }
}

test('loop on a tmpfs file with O_DIRECT: O_NONBLOCK where the ring then serves it, on the same file', async (t) => {
  if (!shm) return t.skip('/dev/shm is no tmpfs here');
  const path = join(shm, 'tmpfs.img');
  writeFileSync(path, Buffer.alloc(1 << 20, 0xa5));
  const servesNonBlocking = servesNonBlockingTmpfs(shm);
  const setup = await setupOf(loop, { file: path });
  try {
    const { fd } = setup.shared as { fd: number };
    assert.equal(fstatSync(fd).ino, statSync(path).ino, 'the backing file itself');
    const flags = statusFlags(fd);
    assert.equal((flags & fsConstants.O_DIRECT) !== 0, setup.info!.direct_io === 1);
    assert.equal(
      (flags & fsConstants.O_NONBLOCK) !== 0,
      setup.info!.direct_io === 1 && servesNonBlocking,
    );
    assert.deepEqual(ringIo(fd).bytes, new Uint8Array(4096).fill(0xa5));
    assert.equal(ringIo(fd, new Uint8Array(4096).fill(0x5a)).res, 4096);
    assert.deepEqual(
      readFileSync(path).subarray(0, 4097),
      Buffer.concat([Buffer.alloc(4096, 0x5a), Buffer.from([0xa5])]),
    );
  } finally {
    await setup.close?.();
  }
});

test('mem: size, capabilities, and a memfd closed by close()', async () => {
  const setup = await setupOf(mem, { size: '64M' });
  assert.equal(setup.size, 64 << 20);
  assert.equal(setup.capabilities!.discard, true);
  assert.equal(setup.capabilities!.writeZeroes, true);
  const { fd } = setup.shared as { fd: number };
  assert.equal(fstatSync(fd).size, 64 << 20);
  assert.equal(fstatSync(fd).blocks, 0, 'nothing allocated yet');
  if (shm) {
    // A memfd is a tmpfs file: O_NONBLOCK (and O_DIRECT) where the ring serves it so.
    assert.equal((statusFlags(fd) & fsConstants.O_NONBLOCK) !== 0, servesNonBlockingTmpfs(shm));
  }
  assert.equal(ringIo(fd, new Uint8Array(4096).fill(0x5a)).res, 4096);
  assert.deepEqual(ringIo(fd).bytes, new Uint8Array(4096).fill(0x5a));
  await setup.close?.();
  assert.throws(() => closeSync(fd), { code: 'EBADF' });
});

test('mem: recovery needs --start_empty, since the data died with the old daemon', async () => {
  await assert.rejects(
    async () => mem.setup({ size: '64M' }, { recovering: true, startEmpty: false, queues: 1 }),
    (err: unknown) => err instanceof UserError && /recover --start_empty/.test(err.message),
  );
  const setup = (await mem.setup(
    { size: '64M' },
    { recovering: true, startEmpty: true, queues: 1 },
  )) as TargetSetup;
  assert.equal(setup.size, 64 << 20);
  await setup.close?.();
});

test('mem: bad sizes are one-line UserErrors', async () => {
  await rejects(mem, {}, /^mem: no size: use --size SIZE/);
  await rejects(mem, { size: 'lots' }, /invalid mem --size 'lots'/);
  await rejects(mem, { size: '1000' }, /not a multiple of 512 bytes/);
  const tooBig = `${Math.ceil(totalmem() / 2 ** 30) + 1}G`;
  await rejects(mem, { size: tooBig }, /is more than this machine's memory/);
});

/** Open fds of this process. */
const fdCount = () => readdirSync('/proc/self/fd').length;
