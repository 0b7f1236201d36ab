/**
 * defineTarget as a target module's author uses it: setup's arguments typed from the declared
 * options, queue's `shared` typed from what setup shares, the handlers' results checked.
 */
import { defineTarget, SECTOR, UserError, type QueueHandlers, type QueueIo } from 'ublk-ts';
import { expectTrue, expectType, type Exact } from './expect.js';

// use: a complete target, its options, shared value and handlers all typed
export const fileTarget = defineTarget({
  name: 'file',
  options: {
    file: { type: 'string', short: 'f', description: 'backing file', path: true },
    readonly: { type: 'boolean', description: 'refuse writes' },
  },
  setup(args, env) {
    expectType<string | undefined>(args.file);
    expectType<boolean | undefined>(args.readonly);
    expectType<boolean>(env.recovering);
    expectType<number>(env.queues);
    if (args.file === undefined) throw new UserError('file: --file is required');
    return {
      size: 1 << 30,
      capabilities: { readOnly: args.readonly, volatileCache: true, logicalBlockSize: 4096 },
      shared: { path: args.file, fd: 3 },
      info: { file: args.file },
    };
  },
  queue(shared, ctx) {
    expectTrue<Exact<typeof shared, { path: string; fd: number }>>(true);
    const { io } = ctx;
    return {
      async read(buf, offset) {
        return io.readFully(shared.fd, buf, offset);
      },
      async write(buf, offset, flags) {
        await io.writeFully(shared.fd, buf, offset);
        expectType<boolean>(flags.fua);
      },
      flush() {},
      discard(offset, length) {
        return length / SECTOR + offset * 0;
      },
    };
  },
});

// use: a forwarding target: no handler for reads and writes
export const forwardTarget = defineTarget({
  name: 'forward',
  setup: () => ({ size: 1 << 20, shared: 3, capabilities: { zeroCopy: true } }),
  queue: (fd) => ({ forward: { fd, offset: 0, sync: true } }),
});

// use: a queue() whose handlers depend on what setup shares, one object or another
export const branchTarget = defineTarget({
  name: 'branches',
  setup: (_args, env) => ({
    size: 4096,
    shared: env.queues,
    capabilities: { volatileCache: true },
  }),
  queue: (queues) =>
    queues > 1 ? { read() {}, flush() {} } : { read() {}, flush() {}, close() {} },
});

export const misuses = [
  defineTarget({
    name: 'string-read',
    setup: () => ({ size: 4096 }),
    queue: () => ({
      // @ts-expect-error TS2322: a handler returns a byte count or nothing, not data
      read: () => 'x',
    }),
  }),

  defineTarget({
    name: 'async-string-read',
    setup: () => ({ size: 4096 }),
    queue: () => ({
      // @ts-expect-error TS2322: the same from an async handler
      read: async () => 'x',
    }),
  }),

  defineTarget({
    name: 'shared-mismatch',
    // @ts-expect-error TS2353: setup shares a path, the queue reads an fd
    setup: () => ({ size: 4096, shared: { path: '/tmp/disk.img' } }),
    queue: (shared: { fd: number }) => ({ forward: { fd: shared.fd, offset: 0 } }),
  }),

  defineTarget({
    name: 'typed-options',
    options: { sectors: { type: 'string', description: 'size in sectors' } },
    setup(args) {
      // @ts-expect-error TS2322: a string option's value is a string, not a number
      const sectors: number | undefined = args.sectors;
      // @ts-expect-error TS2551: `sector` is not one of the declared options
      void args.sector;
      return { size: (sectors ?? 8) * SECTOR };
    },
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'flag-option',
    options: { verbose: { type: 'boolean', description: 'log each request' } },
    setup(args) {
      // @ts-expect-error TS2367: a boolean option is true or false, not the string 'yes'
      if (args.verbose === 'yes') console.log('verbose');
      return { size: 4096 };
    },
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'option-type',
    // @ts-expect-error TS2322: an option is a string or a boolean, as parseArgs knows them
    options: { count: { type: 'number', description: 'how many' } },
    setup: () => ({ size: 4096 }),
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'no-size',
    // @ts-expect-error TS2322: setup must say how big the device is
    setup: () => ({ shared: 1 }),
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'capability-typo',
    setup: () => ({
      size: 4096,
      // @ts-expect-error TS2561: `volatilecache` is a typo for `volatileCache`
      capabilities: { volatilecache: true },
    }),
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'block-size',
    // @ts-expect-error TS2322: the block size is a number of bytes
    setup: () => ({ size: 4096, capabilities: { logicalBlockSize: '4096' } }),
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'write-flags',
    setup: () => ({ size: 4096 }),
    queue: () => ({
      read() {},
      write(_buf, _offset, flags) {
        // @ts-expect-error TS2339: a write's flags say fua, nothing else
        if (flags.sync) return 0;
      },
    }),
  }),

  defineTarget({
    name: 'forward-offset',
    setup: () => ({ size: 4096, shared: 3 }),
    // @ts-expect-error TS2741: a forward says where in the fd the device starts
    queue: (fd) => ({ forward: { fd } }),
  }),

  defineTarget({
    name: 'sync-queue',
    setup: () => ({ size: 4096 }),
    queue: (_shared, ctx) => ({
      // @ts-expect-error TS2339: IO on the queue's ring is a promise: await it
      read: (buf, offset) => ctx.io.read(3, buf, offset).length,
    }),
  }),

  defineTarget({
    name: 'handler-typo',
    setup: () => ({ size: 4096, capabilities: { volatileCache: true } }),
    queue: () => ({
      read() {},
      // @ts-expect-error TS2322: `flsuh` is a typo for `flush`, which would never be called
      flsuh() {},
    }),
  }),

  defineTarget({
    name: 'async-handler-typo',
    setup: async () => ({ size: 4096, capabilities: { discard: true } }),
    // @ts-expect-error TS2322: the same from an async queue(): `dicsard` is not a handler
    queue: async () => ({ read() {}, dicsard() {} }),
  }),

  defineTarget({
    name: 'setup-field-typo',
    setup: () => ({
      size: 4096,
      // @ts-expect-error TS2322: `capabilites` is a typo for `capabilities`, which would be ignored
      capabilites: { readOnly: true },
    }),
    queue: () => ({ read() {} }),
  }),

  defineTarget({
    name: 'branch-typo',
    setup: (_args, env) => ({ size: 4096, shared: env.queues }),
    // @ts-expect-error TS2322: each branch's keys are checked: `clsoe` is a typo for `close`
    queue: (queues) => (queues > 1 ? { read() {} } : { read() {}, clsoe() {} }),
  }),

  // @ts-expect-error TS2345: a target has a name
  defineTarget({ setup: () => ({ size: 4096 }), queue: () => ({}) }),
];

export async function queueIo(io: QueueIo, fd: number, buf: Uint8Array): Promise<void> {
  // use: the raw calls resolve with the kernel's result, the whole-buffer ones throw
  expectType<number>(await io.read(fd, buf, 0));
  expectType<number>(await io.readFully(fd, buf, 0));
  expectType<void>(await io.writeFully(fd, buf, 0));
  expectType<Uint8Array>(io.allocate(4096));
  // @ts-expect-error TS2345: offsets are numbers of bytes
  await io.read(fd, buf, 0n);
}

// use: handlers written apart from defineTarget, typed by QueueHandlers
export const handlers: QueueHandlers = {
  read: (buf) => buf.length,
  writeZeroes: async (_offset, _length, flags) => {
    expectType<boolean>(flags.noUnmap);
  },
};
