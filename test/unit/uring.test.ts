import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import * as sys from '../../src/sys.js';
import { CompletionQueue } from '../../src/uring/completion-queue.js';
import { mapRing } from '../../src/uring/ring-memory.js';
import { setupRing } from '../../src/uring/setup.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  IORING_FSYNC_DATASYNC,
  IORING_OP_URING_CMD,
  IORING_ENTER_GETEVENTS,
  IORING_FEAT_SINGLE_MMAP,
  IORING_SETUP_CQE32,
  IORING_SETUP_SQE128,
  IOSQE_IO_LINK,
  IoBuffer,
  POLLIN,
  Ring,
  SubmissionQueue,
} from '../../src/uring/index.js';

const EBADF = osConstants.errno.EBADF;
const dir = mkdtempSync(join(tmpdir(), 'uring-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Cqe {
  userData: number;
  res: number;
  flags: number;
}

/** Submits what is prepared, waits for `count` completions and returns them. */
function complete(ring: Ring, count: number): Cqe[] {
  const cqes: Cqe[] = [];
  while (cqes.length < count) {
    const submitted = ring.submitAndWait(count - cqes.length, 5000);
    assert.ok(submitted >= 0, `io_uring_enter: ${submitted}, ${cqes.length} of ${count} CQEs`);
    ring.drain((userData, res, flags) => cqes.push({ userData, res, flags }));
  }
  return cqes;
}

function withRing(options: Parameters<typeof Ring.create>[0], body: (ring: Ring) => void): void {
  const ring = Ring.create(options);
  try {
    body(ring);
  } finally {
    ring.close();
  }
}

function tempFile(name: string, content: Buffer): { path: string; fd: number } {
  const path = join(dir, name);
  writeFileSync(path, content);
  return { path, fd: openSync(path, 'r+') };
}

test('NOP round trip carries user_data up to 2^53 - 1', () => {
  const values = [0, 1, 0xffff_ffff, 0x1_0000_0000, 123_456_789_012_345, Number.MAX_SAFE_INTEGER];
  withRing({ entries: 8 }, (ring) => {
    for (const value of values) assert.ok(ring.sq.prepNop(value));
    const cqes = complete(ring, values.length);
    assert.deepEqual(
      cqes.map((c) => c.userData),
      values,
    );
    assert.ok(cqes.every((c) => c.res === 0 && c.flags === 0));
    assert.equal(ring.inFlight, 0);
    assert.equal(ring.cqReady(), 0);
  });
});

test('a full SQ refuses more SQEs until submitted', () => {
  withRing({ entries: 4 }, (ring) => {
    assert.equal(ring.sq.entries, 4);
    for (let i = 0; i < 4; i++) assert.ok(ring.sq.prepNop(i));
    assert.equal(ring.sq.spaceLeft(), 0);
    assert.equal(ring.sq.prepNop(4), false);
    assert.equal(ring.sq.prepUringCmd(0, 0, 4), null);
    assert.equal(ring.submit(), 4);
    assert.equal(ring.sq.spaceLeft(), 4);
    assert.ok(ring.sq.prepNop(4));
    assert.equal(complete(ring, 5).length, 5);
  });
});

test('READ through the ring matches fs reads byte for byte', () => {
  const content = randomBytes(64 * 1024 + 123);
  const { fd } = tempFile('read', content);
  const buffer = IoBuffer.allocate(16 * 1024);
  try {
    withRing({ entries: 8 }, (ring) => {
      const reads = [
        { offset: 0, length: 4096 },
        { offset: 4096, length: 8192 },
        { offset: 12_345, length: 1000 },
        { offset: content.length - 100, length: 4096 }, // short read at EOF
        { offset: content.length + 10, length: 4096 }, // past EOF
      ];
      for (const { offset, length } of reads) {
        buffer.bytes.fill(0xee);
        assert.ok(ring.sq.prepRead(fd, buffer.address, length, offset, offset));
        const [cqe] = complete(ring, 1);
        const expected = Buffer.alloc(length);
        const n = readSync(fd, expected, 0, length, offset);
        assert.equal(cqe.userData, offset);
        assert.equal(cqe.res, n);
        assert.ok(Buffer.from(buffer.bytes.subarray(0, n)).equals(expected.subarray(0, n)));
        assert.equal(buffer.bytes[n], 0xee, 'nothing written past the result');
      }
    });
  } finally {
    buffer.free();
    closeSync(fd);
  }
});

test('WRITE through the ring lands at the right offsets', () => {
  const content = randomBytes(32 * 1024);
  const { path, fd } = tempFile('write', content);
  const buffer = IoBuffer.allocate(8192);
  try {
    withRing({ entries: 8 }, (ring) => {
      const expected = Buffer.from(content);
      const first = randomBytes(8192);
      buffer.bytes.set(first);
      assert.ok(ring.sq.prepWrite(fd, buffer.address, 8192, 4096, 1));
      first.copy(expected, 4096);
      // A write from JS-heap memory, unaligned, extending the file.
      const second = Buffer.from(randomBytes(3000));
      assert.ok(ring.sq.prepWrite(fd, sys.addressOf(second), 3000, content.length - 1000, 2));
      const extended = Buffer.concat([expected.subarray(0, content.length - 1000), second]);
      const cqes = complete(ring, 2).sort((a, b) => a.userData - b.userData);
      assert.deepEqual(
        cqes.map((c) => [c.userData, c.res]),
        [
          [1, 8192],
          [2, 3000],
        ],
      );
      assert.deepEqual(readFileSync(path), extended);
    });
  } finally {
    buffer.free();
    closeSync(fd);
  }
});

test('10,000 NOPs in batches through small rings complete exactly once each', () => {
  const total = 10_000;
  for (const [entries, batch] of [
    [64, 64],
    [256, 256],
    [128, 100],
  ]) {
    withRing({ entries }, (ring) => {
      const seen = new Uint8Array(total);
      let next = 0;
      let completed = 0;
      const onCqe = (userData: number, res: number): void => {
        assert.equal(res, 0);
        seen[userData - 1_000_000]++;
        completed++;
      };
      while (completed < total) {
        let prepared = 0;
        while (prepared < batch && next < total && ring.sq.prepNop(1_000_000 + next)) {
          next++;
          prepared++;
        }
        assert.ok(ring.submitAndWait(1) >= 0);
        ring.drain(onCqe);
      }
      assert.equal(next, total);
      assert.ok(
        seen.every((count) => count === 1),
        `entries ${entries}: some user_data missing or repeated`,
      );
    });
  }
});

test('CQEs that overflow a full CQ are all delivered, once', () => {
  withRing({ entries: 8, cqEntries: 8 }, (ring) => {
    const seen: number[] = [];
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 8; i++) assert.ok(ring.sq.prepNop(round * 8 + i));
      assert.equal(ring.submit(), 8);
    }
    assert.equal(ring.cqReady(), 8); // the other 24 wait in the kernel's overflow list
    ring.drain((userData) => seen.push(userData));
    assert.deepEqual(
      seen.sort((a, b) => a - b),
      Array.from({ length: 32 }, (_, i) => i),
    );
    assert.equal(ring.inFlight, 0);
  });
});

test('URING_CMD SQEs are laid out as the kernel reads them', () => {
  const cmdOp = 0xc020_7504;
  const userData = 0x12_3456_789a;
  for (const [flags, sqeSize, cmdSize] of [
    [IORING_SETUP_SQE128, 128, 80],
    [0, 64, 16],
  ]) {
    withRing({ entries: 4, flags }, (ring) => {
      assert.ok(ring.sq.prepNop(0)); // so that the command lands in slot 1
      const cmd = ring.sq.prepUringCmd(7, cmdOp, userData);
      assert.ok(cmd);
      assert.equal(cmd.byteLength, cmdSize);
      assert.equal(ring.sq.sqeMemory.length, 4 * sqeSize);
      for (let i = 0; i < cmdSize; i++) assert.equal(cmd.getUint8(i), 0);
      for (let i = 0; i < cmdSize; i++) cmd.setUint8(i, i + 1);

      const sqe = Buffer.from(ring.sq.sqeMemory.subarray(sqeSize, 2 * sqeSize));
      assert.equal(sqe.readUInt8(0), IORING_OP_URING_CMD);
      assert.equal(sqe.readUInt8(1), 0); // flags
      assert.equal(sqe.readUInt16LE(2), 0); // ioprio
      assert.equal(sqe.readInt32LE(4), 7); // fd
      assert.equal(sqe.readUInt32LE(8), cmdOp);
      assert.equal(sqe.readUInt32LE(12), 0); // __pad1
      assert.deepEqual(sqe.subarray(16, 32), Buffer.alloc(16)); // addr, len, uring_cmd_flags
      assert.equal(sqe.readBigUInt64LE(32), BigInt(userData));
      assert.deepEqual(sqe.subarray(40, 48), Buffer.alloc(8));
      assert.deepEqual(
        [...sqe.subarray(48)],
        Array.from({ length: cmdSize }, (_, i) => i + 1),
      );
    });
  }
});

test('a URING_CMD reaches the kernel and a reused slot starts zeroed', () => {
  const { fd } = tempFile('cmd', Buffer.alloc(16));
  try {
    withRing({ entries: 1, flags: IORING_SETUP_SQE128 }, (ring) => {
      const cmd = ring.sq.prepUringCmd(fd, 1, 5);
      assert.ok(cmd);
      cmd.setBigUint64(0, 0xffff_ffff_ffff_ffffn);
      const [cqe] = complete(ring, 1);
      // Regular files have no uring_cmd handler.
      assert.deepEqual(cqe, { userData: 5, res: -95, flags: 0 });
      const again = ring.sq.prepUringCmd(fd, 1, 6);
      assert.equal(again, cmd, 'the same slot gives the same premade view');
      assert.equal(again.getBigUint64(0), 0n);
      complete(ring, 1);
    });
  } finally {
    closeSync(fd);
  }
});

test('FSYNC and FDATASYNC complete on a file', () => {
  const { fd } = tempFile('fsync', randomBytes(4096));
  try {
    withRing({ entries: 4 }, (ring) => {
      assert.ok(ring.sq.prepFsync(fd, 0, 1));
      assert.ok(ring.sq.prepFsync(fd, IORING_FSYNC_DATASYNC, 2));
      const cqes = complete(ring, 2);
      assert.deepEqual(cqes.map((c) => c.res).sort(), [0, 0]);
    });
  } finally {
    closeSync(fd);
  }
});

test('FALLOCATE extends, preallocates and punches holes', () => {
  const content = randomBytes(64 * 1024);
  const { path, fd } = tempFile('fallocate', content);
  try {
    withRing({ entries: 4 }, (ring) => {
      assert.ok(ring.sq.prepFallocate(fd, 0, 64 * 1024, 64 * 1024, 1));
      assert.deepEqual(complete(ring, 1)[0], { userData: 1, res: 0, flags: 0 });
      assert.equal(fstatSync(fd).size, 128 * 1024);

      const blocks = fstatSync(fd).blocks;
      assert.ok(ring.sq.prepFallocate(fd, FALLOC_FL_KEEP_SIZE, 128 * 1024, 1 << 20, 2));
      assert.equal(complete(ring, 1)[0].res, 0);
      assert.equal(fstatSync(fd).size, 128 * 1024);
      assert.ok(fstatSync(fd).blocks >= blocks + (1 << 20) / 512);

      const hole = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      assert.ok(ring.sq.prepFallocate(fd, hole, 8192, 16384, 3));
      assert.equal(complete(ring, 1)[0].res, 0);
      const expected = Buffer.concat([content, Buffer.alloc(64 * 1024)]);
      expected.fill(0, 8192, 8192 + 16384);
      assert.deepEqual(readFileSync(path), expected);
    });
  } finally {
    closeSync(fd);
  }
});

test('POLL_ADD reports readiness in res', () => {
  const fd = sys.eventfd(1, sys.constants.EFD_NONBLOCK);
  try {
    withRing({ entries: 2 }, (ring) => {
      assert.ok(ring.sq.prepPollAdd(fd, POLLIN, 9));
      const [cqe] = complete(ring, 1);
      assert.equal(cqe.userData, 9);
      assert.equal(cqe.res & POLLIN, POLLIN);
    });
  } finally {
    sys.close(fd);
  }
});

test('a bad fd fails in the CQE, and a linked SQE is then cancelled', () => {
  const buffer = IoBuffer.allocate(4096);
  const badFd = 999_999; // beyond any open descriptor
  try {
    withRing({ entries: 4 }, (ring) => {
      assert.ok(ring.sq.prepRead(badFd, buffer.address, 4096, 0, 1, IOSQE_IO_LINK));
      assert.ok(ring.sq.prepNop(2));
      const cqes = complete(ring, 2).sort((a, b) => a.userData - b.userData);
      assert.deepEqual(
        cqes.map((c) => [c.userData, c.res]),
        [
          [1, -EBADF],
          [2, -125], // ECANCELED
        ],
      );
    });
  } finally {
    buffer.free();
  }
});

test('CQSIZE and SQE128 setups report their sizes', () => {
  withRing({ entries: 3, cqEntries: 100, flags: IORING_SETUP_SQE128 }, (ring) => {
    assert.equal(ring.sq.entries, 4);
    assert.equal(ring.sq.sqeMemory.length, 4 * 128);
    // the CQ accepts 100 completions without overflow
    for (let round = 0; round < 25; round++) {
      for (let i = 0; i < 4; i++) ring.sq.prepNop(round * 4 + i);
      assert.equal(ring.submit(), 4);
    }
    assert.equal(ring.cqReady(), 100);
  });
});

test('CQE32 rings deliver CQEs at the doubled stride', () => {
  withRing({ entries: 8, flags: IORING_SETUP_CQE32 }, (ring) => {
    for (let i = 0; i < 8; i++) ring.sq.prepNop(0x1_0000_0000 + i);
    const cqes = complete(ring, 8);
    assert.deepEqual(
      cqes.map((c) => [c.userData - 0x1_0000_0000, c.res, c.flags]),
      Array.from({ length: 8 }, (_, i) => [i, 0, 0]),
    );
  });
});

test('rings also work with separate SQ and CQ mappings (kernels without SINGLE_MMAP)', () => {
  const { fd, params } = setupRing(4, 0, undefined);
  const memory = mapRing(
    fd,
    { ...params, features: params.features & ~IORING_FEAT_SINGLE_MMAP },
    64,
    16,
  );
  try {
    assert.notEqual(memory.sqRing, memory.cqRing);
    const sq = new SubmissionQueue(memory.sqRing, memory.sqes, params, 64);
    const cq = new CompletionQueue(memory.cqRing, params, 16);
    assert.ok(sq.prepNop(31));
    assert.equal(sys.ioUringEnter(fd, sq.publish(), 1, IORING_ENTER_GETEVENTS), 1);
    const seen: number[] = [];
    assert.equal(
      cq.drain((userData) => seen.push(userData)),
      1,
    );
    assert.deepEqual(seen, [31]);
  } finally {
    memory.unmap();
    sys.close(fd);
  }
  assert.equal(memory.cqRing.byteLength, 0);
});

test('close unmaps and detaches the ring memory; closing twice is safe', () => {
  const ring = Ring.create({ entries: 4 });
  const memory = ring.sq.sqeMemory;
  assert.equal(memory.length, 4 * 64);
  ring.close();
  assert.equal(memory.length, 0);
  assert.equal(memory.buffer.byteLength, 0);
  assert.throws(() => ring.sq.spaceLeft(), TypeError);
  assert.equal(sys.ioUringEnter(ring.fd, 0, 0, 0), -EBADF);
  ring.close();
});

test('a wait with a timeout returns -ETIME, after the timeout', () => {
  const fd = sys.eventfd(0, sys.constants.EFD_NONBLOCK);
  try {
    withRing({ entries: 2 }, (ring) => {
      assert.ok(ring.sq.prepPollAdd(fd, POLLIN, 1));
      assert.equal(ring.submitAndWait(1, 100), 1); // the submission counts, not the timeout
      const started = performance.now();
      assert.equal(ring.submitAndWait(1, 150), -osConstants.errno.ETIME);
      const waited = performance.now() - started;
      assert.ok(waited >= 140 && waited < 2000, `waited ${waited} ms`);
      writeSync(fd, new BigUint64Array([1n]));
      assert.equal(ring.submitAndWait(1, 5000), 0);
      assert.equal(ring.cqReady(), 1);
    });
  } finally {
    sys.close(fd);
  }
});

test('a TIMEOUT SQE is a timer on the ring: its CQE (-ETIME) comes after the time, not before', () => {
  withRing({ entries: 2 }, (ring) => {
    // struct __kernel_timespec { 0 s, 60 ms }, off the JS heap.
    const timespec = new BigInt64Array(new ArrayBuffer(16));
    timespec[1] = 60_000_000n;
    assert.ok(ring.sq.prepTimeout(sys.addressOf(timespec), 7));
    const started = performance.now();
    const [cqe] = complete(ring, 1);
    const waited = performance.now() - started;
    assert.deepEqual([cqe.userData, cqe.res], [7, -osConstants.errno.ETIME]);
    assert.ok(waited >= 55 && waited < 2000, `waited ${waited} ms`);
  });
});

test('setup errors throw with the errno', () => {
  assert.throws(
    () => Ring.create({ entries: 0 }),
    (error: unknown) => sys.isErrnoError(error, 'EINVAL'),
  );
});

test('IoBuffer is page aligned and free() detaches it', () => {
  const buffer = IoBuffer.allocate(10_000);
  assert.equal(buffer.address % sys.constants.PAGE_SIZE, 0);
  assert.equal(buffer.bytes.length, 10_000);
  buffer.bytes.fill(1);
  buffer.free();
  assert.equal(buffer.bytes.length, 0);
  buffer.free();
});
