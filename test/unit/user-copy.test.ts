/**
 * User copy (UBLK_F_USER_COPY): the /dev/ublkcN position of a request's bytes, the bounce pool,
 * and the state machine's copies around handlers and forwarded IO, over the stand-in ring and a
 * file in place of /dev/ublkcN.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  UBLK_IO,
  UBLK_IO_BUF,
  UBLK_IO_OP,
  UBLK_IO_RES,
  UBLK_QID,
  UBLK_TAG,
  UBLK_U_IO,
  UBLKSRV_IO_BUF_OFFSET,
} from '../../src/ublk/ublk-cmd.js';
import { addressOf } from '../../src/sys.js';
import { Queue } from '../../src/ublk/queue/queue.js';
import { FailureLog } from '../../src/ublk/queue/failure-log.js';
import { TagStates } from '../../src/ublk/queue/tag-states.js';
import type { QueueHandlers } from '../../src/ublk/target/contract.js';
import {
  BOUNCE_CHUNK,
  BOUNCE_POOL_BYTES,
  BouncePool,
  bouncePoolBytes,
  userCopyOffset,
} from '../../src/ublk/queue/user-copy.js';
import {
  forwardedCqe,
  StandInDescriptors,
  StandInRing,
  standInResources,
  type PreparedIo,
} from './support/stand-ins.js';
import { dataPathOf } from '../../src/ublk/device/data-path.js';

const { EBADF } = constants.errno;
const CHAR_FD = 42;

/** The kernel's ublk_pos_to_hwq / _tag / _buf_off, in BigInt. */
function decode(pos: number) {
  const rel = BigInt(pos) - BigInt(UBLKSRV_IO_BUF_OFFSET);
  return {
    qId: Number((rel >> BigInt(UBLK_QID.OFF)) & BigInt(UBLK_QID.BITS_MASK)),
    tag: Number((rel >> BigInt(UBLK_TAG.OFF)) & BigInt(UBLK_TAG.BITS_MASK)),
    offset: Number(rel & BigInt(UBLK_IO_BUF.BITS_MASK)),
  };
}

test('userCopyOffset: what the kernel decodes back to the queue, tag and byte', () => {
  assert.equal(userCopyOffset(0, 0, 0), 0x8000_0000);
  assert.equal(userCopyOffset(0, 1, 0), 0x8000_0000 + 0x200_0000);
  assert.equal(userCopyOffset(1, 0, 0), 0x8000_0000 + 2 ** 41);
  for (const [qId, tag, offset] of [
    [0, 0, 0],
    [1, 2, 512],
    [3, 4095, 2 ** 25 - 1],
    [17, 65535, 4096],
    [4094, 65535, 2 ** 25 - 1],
  ]) {
    const pos = userCopyOffset(qId, tag, offset);
    assert.ok(Number.isSafeInteger(pos), `${qId}/${tag}/${offset}`);
    assert.deepEqual(decode(pos), { qId, tag, offset });
  }
});

test('bouncePoolBytes: 4 MiB, at least one largest request, at most depth of them', () => {
  assert.equal(bouncePoolBytes(128, 512 * 1024), BOUNCE_POOL_BYTES);
  assert.equal(bouncePoolBytes(2, 512 * 1024), 1024 * 1024);
  assert.equal(bouncePoolBytes(128, 8 << 20), 8 << 20);
  assert.equal(bouncePoolBytes(1, 4096), BOUNCE_CHUNK);
});

test('BouncePool: first fit, freed runs reused, no room is -1', () => {
  const pool = new BouncePool(8 * BOUNCE_CHUNK, 4);
  assert.equal(pool.chunks, 8);
  assert.equal(BouncePool.chunksFor(1), 1);
  assert.equal(BouncePool.chunksFor(BOUNCE_CHUNK), 1);
  assert.equal(BouncePool.chunksFor(BOUNCE_CHUNK + 1), 2);
  assert.equal(pool.alloc(3), 0);
  assert.equal(pool.alloc(1), 3);
  assert.equal(pool.alloc(4), 4);
  assert.equal(pool.alloc(1), -1);
  pool.free(0, 3);
  assert.equal(pool.alloc(4), -1, 'no run of 4');
  assert.equal(pool.alloc(2), 0);
  assert.equal(pool.alloc(1), 2);
  pool.free(3, 1);
  pool.free(4, 4);
  assert.equal(pool.alloc(5), 3);
});

test('BouncePool: waiters are granted in arrival order, the head first', () => {
  const pool = new BouncePool(4 * BOUNCE_CHUNK, 4);
  assert.equal(pool.alloc(3), 0);
  pool.wait(7, 4);
  pool.wait(8, 1);
  assert.equal(pool.waiting, 2);
  assert.equal(pool.grantWaiter(), -1, 'the head needs 4, and 1 is free: nobody passes it');
  pool.free(0, 3);
  assert.equal(pool.grantWaiter(), 7);
  assert.equal(pool.grantedChunk, 0);
  assert.equal(pool.grantWaiter(), -1);
  pool.free(0, 4);
  assert.equal(pool.grantWaiter(), 8);
  assert.equal(pool.waiting, 0);
  assert.equal(pool.grantWaiter(), -1);
});

/**
 * What stands in for /dev/ublkcN: a sparse temporary file, read and written at the same positions
 * (above 2 GiB), so that the copies are the real pread/pwrite calls.
 */
function standInCharDevice(flags: 'r+' | 'r' | 'w' = 'r+') {
  const dir = mkdtempSync(join(tmpdir(), 'ublk-user-copy-'));
  const path = join(dir, 'ublkc');
  writeFileSync(path, '');
  const fd = openSync(path, flags);
  after(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true });
  });
  return {
    fd,
    /** Puts bytes in the request (qId 2, tag) as the kernel holds them. */
    put(tag: number, data: Uint8Array) {
      const writer = openSync(path, 'r+');
      writeSync(writer, data, 0, data.length, userCopyOffset(2, tag, 0));
      closeSync(writer);
    },
    /** What the daemon stored in the request (qId 2, tag). */
    get(tag: number, length: number): Uint8Array {
      const out = new Uint8Array(length);
      const reader = openSync(path, 'r');
      readSync(reader, out, 0, length, userCopyOffset(2, tag, 0));
      closeSync(reader);
      return out;
    },
  };
}

/** TagStates with user copy over a stand-in ring; every step runs synchronously. */
function userCopyTags(
  handlers: QueueHandlers,
  poolBytes: number,
  depth = 4,
  charFlags?: 'r+' | 'r' | 'w',
) {
  const ring = new StandInRing();
  const descs = new StandInDescriptors();
  const char = standInCharDevice(charFlags);
  const sent: { cmdOp: number; tag: number; result: number }[] = [];
  const logged: string[] = [];
  const bytes = new Uint8Array(poolBytes);
  const base = addressOf(bytes);
  const tags = new TagStates(
    {
      queueId: 2,
      depth,
      bufferBytes: 256 * 1024,
      encodedOpcodes: false,
      dataPath: dataPathOf('user-copy'),
      charFd: char.fd,
    },
    descs,
    { bytes, address: base },
    { sendIoCmd: (cmdOp, tag, result) => void sent.push({ cmdOp, tag, result }) },
    new FailureLog({ devId: 0, queueId: 2, write: (line) => void logged.push(line) }),
    { sq: ring.sq, makeRoom: () => undefined },
  );
  tags.start(handlers);
  sent.length = 0;
  const prepared = (fn: () => void): PreparedIo[] => {
    const before = ring.targetIo.length;
    fn();
    return ring.targetIo.slice(before);
  };
  const request = (tag: number, op: number, startSector: number, nrSectors: number) => {
    descs.request(tag, { op, startSector, nrSectors });
    return prepared(() => tags.complete(tag, UBLK_IO_RES.OK));
  };
  /** Where `address` is in the pool. */
  const at = (address: number) => address - base;
  return { tags, ring, char, sent, logged, bytes, request, prepared, at };
}

const commit = (tag: number, result: number) => ({
  cmdOp: UBLK_IO.COMMIT_AND_FETCH_REQ,
  tag,
  result,
});

test('user copy, JS handler: a WRITE is read from /dev/ublkcN into a bounce buffer first', () => {
  const written: string[] = [];
  const uc = userCopyTags(
    { write: (buf, offset) => void written.push(`${buf[0]}x${buf.length}@${offset}`) },
    BOUNCE_POOL_BYTES,
  );
  uc.char.put(3, new Uint8Array(4096).fill(9));
  assert.deepEqual(uc.request(3, UBLK_IO_OP.WRITE, 16, 8), [], 'no ring IO: the copy is pread');
  assert.deepEqual(written, ['9x4096@8192']);
  assert.deepEqual(uc.sent, [commit(3, 4096)]);
  assert.equal(uc.tags.ringIoInFlight, 0);
});

test('user copy, JS handler: a READ fills the bounce buffer, which is written to /dev/ublkcN before the commit', () => {
  const uc = userCopyTags({ read: (buf) => void buf.fill(0xab) }, BOUNCE_POOL_BYTES);
  assert.deepEqual(uc.request(1, UBLK_IO_OP.READ, 0, 16), []);
  assert.deepEqual(uc.sent, [commit(1, 8192)]);
  assert.ok(uc.char.get(1, 8192).every((b) => b === 0xab));
});

test('user copy: a failed copy fails only its request, logged, and frees its buffer', () => {
  // Opened write-only: every pread of it fails with EBADF.
  const uc = userCopyTags({ write: () => undefined }, BOUNCE_CHUNK, 2, 'w');
  const sent = () => uc.sent.map((c) => [c.tag, c.result]);
  assert.deepEqual(uc.request(0, UBLK_IO_OP.WRITE, 0, 8), []);
  assert.deepEqual(sent(), [[0, -EBADF]]);
  assert.match(uc.logged.join('\n'), /user copy/);
  uc.sent.length = 0;
  // The buffer is free again: a second request gets it (and fails the same way).
  assert.deepEqual(uc.request(1, UBLK_IO_OP.WRITE, 8, 8), []);
  assert.deepEqual(sent(), [[1, -EBADF]]);
});

test('user copy: requests beyond the pool wait, then run in arrival order as buffers free', async () => {
  let finish: (() => void)[] = [];
  const uc = userCopyTags(
    { read: () => new Promise<void>((resolve) => finish.push(resolve)) },
    2 * BOUNCE_CHUNK,
  );
  assert.deepEqual(uc.request(0, UBLK_IO_OP.READ, 0, 64), [], 'tag 0: 32 KiB, the whole pool');
  assert.deepEqual(uc.request(1, UBLK_IO_OP.READ, 0, 8), []);
  assert.deepEqual(uc.request(2, UBLK_IO_OP.READ, 0, 8), []);
  assert.equal(finish.length, 1, 'only tag 0 reached its handler');
  finish[0]();
  finish = [];
  await null;
  await null;
  assert.deepEqual(uc.sent, [commit(0, 32 * 1024)]);
  assert.equal(finish.length, 2, 'tags 1 and 2 got a chunk each once tag 0 was committed');
});

test('user copy, forwarded (loop): WRITE loads then writes the file from the bounce buffer; READ reads the file then stores', () => {
  const uc = userCopyTags({ forward: { fd: 5, offset: 1 << 20 } }, BOUNCE_POOL_BYTES);
  uc.char.put(2, new Uint8Array(4096).fill(7));
  const [write] = uc.request(2, UBLK_IO_OP.WRITE, 8, 8);
  assert.deepEqual(
    [write.kind, write.fd, write.offset, write.length],
    ['write', 5, (1 << 20) + 4096, 4096],
  );
  const start = uc.at(write.address!);
  assert.ok(
    uc.bytes.subarray(start, start + 4096).every((b) => b === 7),
    'the data, loaded',
  );
  uc.prepared(() => forwardedCqe(uc.tags.forwarded, write.userData, 4096));
  assert.deepEqual(uc.sent, [commit(2, 4096)]);

  const [read] = uc.request(3, UBLK_IO_OP.READ, 0, 8);
  assert.deepEqual([read.kind, read.fd, read.offset, read.length], ['read', 5, 1 << 20, 4096]);
  uc.bytes.fill(0xcd, uc.at(read.address!), uc.at(read.address!) + 4096);
  assert.deepEqual(
    uc.prepared(() => forwardedCqe(uc.tags.forwarded, read.userData, 4096)),
    [],
  );
  assert.ok(
    uc.char.get(3, 4096).every((b) => b === 0xcd),
    'the data, stored',
  );
  assert.deepEqual(uc.sent, [commit(2, 4096), commit(3, 4096)]);
  assert.equal(uc.tags.ringIoInFlight, 0);
});

test('user copy: a FLUSH needs no buffer', () => {
  const uc = userCopyTags({ read: () => undefined, flush: () => undefined }, BOUNCE_POOL_BYTES);
  assert.deepEqual(uc.request(0, UBLK_IO_OP.FLUSH, 0, 0), []);
  assert.deepEqual(uc.sent, [commit(0, 0)]);
});

test('user copy and manual zero copy: FETCH gives the kernel no buffer address', async () => {
  for (const mode of [
    { dataPath: dataPathOf('user-copy') },
    { dataPath: dataPathOf('manual-zero-copy') },
  ]) {
    const ring = new StandInRing();
    const descs = new StandInDescriptors();
    const queue = new Queue(
      {
        devId: 1,
        queueId: 0,
        depth: 2,
        bufferBytes: 65536,
        charFd: CHAR_FD,
        encodedOpcodes: true,
        ...mode,
      },
      standInResources(ring, descs, BOUNCE_POOL_BYTES),
    );
    queue.start({ read: () => undefined });
    assert.deepEqual(
      ring.sent().map((c) => c.cmdOp),
      [UBLK_U_IO.FETCH_REQ, UBLK_U_IO.FETCH_REQ],
    );
    for (const tag of [0, 1]) {
      assert.deepEqual(
        ring.commandAddresses.get(tag),
        { sqeAddr: 0, buffer: 0 },
        JSON.stringify(mode),
      );
    }
    // STOP_DEV: every tag aborted, and the queue's loop ends.
    for (const tag of [0, 1]) ring.complete(tag, UBLK_IO_RES.ABORT);
    await queue.done;
  }
});
