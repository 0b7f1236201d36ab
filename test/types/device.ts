/**
 * createDevice and recoverDevice as a program that embeds ublk-ts calls them: the options a new
 * user gets wrong are refused at compile time, the ones the README shows compile.
 */
import {
  createDevice,
  isErrnoError,
  isUserError,
  recoverDevice,
  UserError,
  type Device,
  type DeviceOptions,
  type RecoverOptions,
  type UserErrorCode,
} from 'ublk-ts';
import { expectTrue, expectType, type Exact } from './expect.js';

export async function deviceOptions(): Promise<void> {
  // use: a built-in target by name, with its arguments and the queue geometry
  const device = await createDevice({ target: 'loop', args: { file: '/tmp/disk.img' }, queues: 2 });
  // use: every other option that keeps its meaning
  const options: DeviceOptions = {
    target: 'mem',
    args: { size: '64M' },
    id: 3,
    queues: 1,
    depth: 128,
    maxIoBufBytes: 512 * 1024,
    ioScheduler: 'mq-deadline',
    logEveryFailure: true,
  };
  await createDevice(options);

  // @ts-expect-error TS2561: `queue` is a typo for `queues`
  await createDevice({ target: 'loop', queue: 2 });
  // @ts-expect-error TS2322: queues is a number, not a string
  await createDevice({ target: 'loop', queues: '2' });
  // @ts-expect-error TS2322: depth is a number
  await createDevice({ target: 'loop', depth: '128' });
  // @ts-expect-error TS2322: a target is a name, a path, a URL or a Target, not a number
  await createDevice({ target: 42 });
  // @ts-expect-error TS2345: the target is not optional
  await createDevice({ queues: 2 });
  // @ts-expect-error TS2322: target arguments are strings or booleans, as on the command line
  await createDevice({ target: 'mem', args: { size: 64 } });
  // @ts-expect-error TS2554: createDevice takes one options object
  await createDevice('loop', { file: '/tmp/disk.img' });

  // use: what a device offers
  expectType<string>(device.path);
  expectType<number>(device.id);
  expectType<Promise<void>>(device.stop());
  expectType<Promise<void>>(device.resize(1 << 30));
  expectTrue<Exact<Awaited<Device['closed']>, 'deleted' | 'handed-over'>>(true);
  // @ts-expect-error TS2339: createDevice is async: the device comes from `await`
  void createDevice({ target: 'null' }).path;
  // @ts-expect-error TS2540: a device's id is read-only
  device.id = 4;
  // @ts-expect-error TS2339: stop() is the way to delete a device
  await device.delete();
}

export async function errors(): Promise<void> {
  try {
    await createDevice({ target: 'loop', args: { file: '/tmp/disk.img' } });
  } catch (err) {
    // use: a failure the user can fix, and a failed system call, told apart
    if (isUserError(err)) expectType<UserErrorCode>(err.code);
    if (isErrnoError(err, 'ENOENT')) expectType<number>(err.errno);
    if (err instanceof UserError) expectType<string>(err.message);
    // @ts-expect-error TS18046: an error caught is unknown until recognised
    void err.code;
  }
  // @ts-expect-error TS2322: a UserError's code is one of ERROR_CODES
  void new UserError('bad size', { code: 'EINVAL' });
}

export async function recoverOptions(): Promise<void> {
  // use: a dead daemon's device taken over, with the target and arguments it was added with
  const device = await recoverDevice(0, { target: 'loop', args: { file: '/tmp/disk.img' } });
  expectType<Device>(device);
  // use: the other recover options
  const options: RecoverOptions = { target: 'mem', startEmpty: true, waitMs: 5000 };
  await recoverDevice(1, options);

  // @ts-expect-error TS2353: the data path is the device's, decided when it was added
  await recoverDevice(0, { target: 'loop', dataPath: 'copy' });
  // @ts-expect-error TS2353: the queues are the device's, decided when it was added
  await recoverDevice(0, { target: 'loop', queues: 2 });
  // @ts-expect-error TS2554: recoverDevice needs the id of the device to recover
  await recoverDevice({ target: 'loop' });
}
