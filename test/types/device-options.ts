/**
 * The device options and QueueIo: one DataPath, the options that exclude each other as compile
 * errors, no raw `flags`, fsync and fallocate resolving to void.
 */
// @ts-expect-error TS2305: the UBLK_F bits are not the API: the options name each feature
import { UBLK_F } from 'ublk-ts';
import { createDevice, type DataPath, type QueueIo } from 'ublk-ts';
import { expectType } from './expect.js';

export async function dataPaths(target: string, mode: DataPath): Promise<void> {
  void UBLK_F;
  // use: each data path by name, and one chosen at run time
  await createDevice({ target, dataPath: 'auto' });
  await createDevice({ target, dataPath: 'copy' });
  await createDevice({ target, dataPath: 'user-copy' });
  await createDevice({ target, dataPath: 'zero-copy' });
  await createDevice({ target, dataPath: 'auto-zero-copy' });
  await createDevice({ target, dataPath: 'manual-zero-copy' });
  await createDevice({ target, dataPath: mode });
  // use: batch IO over any data path
  await createDevice({ target, dataPath: 'user-copy', batch: true });
  // use: NEED_GET_DATA with the copy data path, named or by default
  await createDevice({ target, dataPath: 'copy', needGetData: true });
  await createDevice({ target, needGetData: true });
  // use: recovery, plain or with its modes
  await createDevice({ target, recovery: true });
  await createDevice({ target, recovery: { reissue: true } });
  await createDevice({ target, recovery: { failIo: true } });
  // use: an unprivileged device on a data path the kernel allows it
  await createDevice({ target, unprivileged: true, dataPath: 'copy' });
  await createDevice({ target, unprivileged: true, dataPath: 'auto' });
  // use: the remaining flags, each an option of its own
  await createDevice({ target, completeInTask: true, partitionScan: false });

  // @ts-expect-error: 'zerocopy' is the CLI's spelling; the data path is 'zero-copy'
  await createDevice({ target, dataPath: 'zerocopy' });
  // @ts-expect-error: user copy and NEED_GET_DATA exclude each other (get data is copy's)
  await createDevice({ target, dataPath: 'user-copy', needGetData: true });
  // @ts-expect-error: zero copy and NEED_GET_DATA exclude each other
  await createDevice({ target, dataPath: 'zero-copy', needGetData: true });
  // @ts-expect-error: the kernel drops NEED_GET_DATA from batch IO
  await createDevice({ target, batch: true, needGetData: true });
  // @ts-expect-error: no `flags`: each feature is an option (recovery, batch, dataPath...)
  await createDevice({ target, flags: 0x40 });
  // @ts-expect-error: the kernel refuses recovery to an unprivileged device
  await createDevice({ target, unprivileged: true, recovery: true });
  // @ts-expect-error: the kernel refuses user copy to an unprivileged device
  await createDevice({ target, unprivileged: true, dataPath: 'user-copy' });
  // @ts-expect-error: the kernel refuses auto zero copy to an unprivileged device
  await createDevice({ target, unprivileged: true, dataPath: 'auto-zero-copy' });
  // @ts-expect-error: the kernel refuses zero copy to an unprivileged device
  await createDevice({ target, unprivileged: true, dataPath: 'zero-copy' });
  // @ts-expect-error: zero copy is a data path, not an option of its own
  await createDevice({ target, zeroCopy: true });
  // @ts-expect-error: user copy is a data path, not an option of its own
  await createDevice({ target, userCopy: true });
  // @ts-expect-error: batch IO is `batch`
  await createDevice({ target, batchIo: true });
  // @ts-expect-error: reissue is true or false
  await createDevice({ target, recovery: { reissue: 'yes' } });
  // @ts-expect-error: recovery's modes are reissue and failIo
  await createDevice({ target, recovery: { reissu: true } });
}

export async function queueIo(io: QueueIo, fd: number): Promise<void> {
  // use: fsync and fallocate throw on failure and resolve to nothing
  expectType<void>(await io.fsync(fd, { dataOnly: true }));
  expectType<void>(await io.fallocate(fd, 0, 0, 4096));

  // @ts-expect-error: fsync resolves to nothing (it throws on failure), not to a result
  const res: number = await io.fsync(fd);
  // @ts-expect-error: no result to compare with -errno either
  if ((await io.fallocate(fd, 0, 0, 4096)) < 0) throw new Error(`fallocate: ${res}`);
}
