/**
 * setup() of the loop and mem targets, without a kernel driver: argument checks, their one-line
 * errors, the geometry and capabilities they declare. The IO paths are in test/kernel/.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { UserError } from '../../src/errors.js';
import loop from '../../src/targets/loop.js';
import mem from '../../src/targets/mem.js';
import type { TargetArgs, TargetSetup } from '../../src/targets/target.js';

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

test('mem: size, capabilities, and a memfd closed by close()', async () => {
  const setup = await setupOf(mem, { size: '64M' });
  assert.equal(setup.size, 64 << 20);
  assert.equal(setup.capabilities!.discard, true);
  assert.equal(setup.capabilities!.writeZeroes, true);
  const { fd } = setup.shared as { fd: number };
  assert.equal(fstatSync(fd).size, 64 << 20);
  assert.equal(fstatSync(fd).blocks, 0, 'nothing allocated yet');
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
