/**
 * The nbd target's client against an NBD server in this process, its socket IO on a real
 * io_uring: handshake, reads and writes multiplexed, a corrupt reply dropping the connection (the
 * request then served right on a new one), and the reconnect bound.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { NbdClient } from '../../src/targets/nbd/client.js';
import { openConnection, probeExport } from '../../src/targets/nbd/handshake.js';
import { capabilitiesOf } from '../../src/targets/nbd.js';
import {
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_SEND_FLUSH,
} from '../../src/targets/nbd/protocol.js';
import {
  FakeNbdServer,
  patternByte,
  SIMPLE_CORRUPTIONS,
  STRUCTURED_CORRUPTIONS,
} from '../kernel/support/fake-nbd.js';
import { RingSocketIo } from './support/ring-io.js';

const SIZE = 4 * 2 ** 20;
let port = 0;

async function fixture(structured: boolean) {
  const server = new FakeNbdServer({ size: SIZE, structured });
  port = 20000 + Math.floor(Math.random() * 20000);
  await server.listen({ host: '127.0.0.1', port });
  const address = { host: '127.0.0.1', port };
  const ring = new RingSocketIo();
  const log: string[] = [];
  const connect = () => openConnection(address, '', 2000);
  const first = await connect();
  const client = new NbdClient(
    {
      io: ring.io,
      connect,
      expected: first.export,
      reconnectTimeoutMs: 1500,
      log: (l) => log.push(l),
    },
    first,
  );
  const done = async () => {
    client.close();
    ring.close();
    await server.close();
  };
  return { server, ring, client, log, done, exported: first.export, address };
}

function expected(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = patternByte(offset + i);
  return b;
}

after(() => undefined);

for (const structured of [true, false]) {
  test(`${structured ? 'structured' : 'simple'} replies: reads, writes, flush, many in flight`, async () => {
    const f = await fixture(structured);
    try {
      assert.equal(f.exported.structured, structured);
      assert.equal(f.exported.size, SIZE);
      const bufs = Array.from({ length: 64 }, () => f.ring.buffer(65536));
      await Promise.all(bufs.map((b, i) => f.client.request(NBD_CMD_READ, 0, i * 65536, 65536, b)));
      bufs.forEach((b, i) =>
        assert.ok(Buffer.from(b).equals(expected(i * 65536, 65536)), `read ${i}`),
      );
      const w = f.ring.buffer(300 * 1024);
      w.fill(0xab);
      await f.client.request(NBD_CMD_WRITE, 0, 8192, w.length, w);
      await f.client.request(NBD_CMD_FLUSH, 0, 0, 0);
      assert.ok(f.server.data.subarray(8192, 8192 + w.length).every((x) => x === 0xab));
      const r = f.ring.buffer(w.length);
      await f.client.request(NBD_CMD_READ, 0, 8192, r.length, r);
      assert.ok(r.every((x) => x === 0xab));
      assert.equal(f.server.connections, 1);
      assert.deepEqual(f.log, []);
    } finally {
      await f.done();
    }
  });

  const kinds = structured ? STRUCTURED_CORRUPTIONS : SIMPLE_CORRUPTIONS;
  test(`${structured ? 'structured' : 'simple'} replies: each corrupt reply drops the connection, the read is served right`, async () => {
    const f = await fixture(structured);
    try {
      const buf = f.ring.buffer(16384);
      for (const [round, kind] of kinds.entries()) {
        buf.fill(0xee);
        const offset = 65536 * (round + 1);
        f.server.corruptNextRead(kind);
        await f.client.request(NBD_CMD_READ, 0, offset, buf.length, buf);
        assert.ok(Buffer.from(buf).equals(expected(offset, buf.length)), `${kind}: right data`);
        assert.equal(f.server.connections, round + 2, `${kind}: one new connection`);
      }
      assert.deepEqual(f.server.applied, kinds);
      assert.equal(f.log.length, kinds.length, f.log.join('\n'));
    } finally {
      await f.done();
    }
  });
}

for (const structured of [true, false]) {
  test(`${structured ? 'structured' : 'simple'} replies, zero copy: payloads between the socket and lent pages, holes zeroed, corrupt replies dropped`, async () => {
    const f = await fixture(structured);
    try {
      const reads = Array.from({ length: 32 }, () => f.ring.pages(65536));
      await Promise.all(
        reads.map((p, i) => f.client.request(NBD_CMD_READ, 0, i * 65536, 65536, undefined, p.data)),
      );
      reads.forEach((p, i) =>
        assert.ok(Buffer.from(p.bytes).equals(expected(i * 65536, 65536)), `read ${i}`),
      );
      // Written: one half zeros, which a structured reply then sends as a hole.
      const w = f.ring.pages(256 * 1024);
      w.bytes.fill(0xab, 0, 128 * 1024);
      await f.client.request(NBD_CMD_WRITE, 0, 8192, w.data.length, undefined, w.data);
      assert.ok(Buffer.from(f.server.data.subarray(8192, 8192 + w.data.length)).equals(w.bytes));
      const r = f.ring.pages(w.data.length);
      r.bytes.fill(0xee);
      await f.client.request(NBD_CMD_READ, 0, 8192, r.data.length, undefined, r.data);
      assert.ok(Buffer.from(r.bytes).equals(w.bytes), 'read back, hole included');
      const kinds = structured ? STRUCTURED_CORRUPTIONS : SIMPLE_CORRUPTIONS;
      const c = f.ring.pages(16384);
      for (const [round, kind] of kinds.entries()) {
        c.bytes.fill(0xee);
        const offset = 2 ** 20 + 65536 * round;
        f.server.corruptNextRead(kind);
        await f.client.request(NBD_CMD_READ, 0, offset, c.data.length, undefined, c.data);
        assert.ok(Buffer.from(c.bytes).equals(expected(offset, c.data.length)), `${kind}`);
      }
      assert.equal(f.server.connections, kinds.length + 1);
    } finally {
      await f.done();
    }
  });
}

test('past --reconnect_timeout requests fail with EIO and a log line; a server back later is used again', async () => {
  const f = await fixture(true);
  try {
    const buf = f.ring.buffer(4096);
    await f.server.close();
    const started = Date.now();
    await assert.rejects(f.client.request(NBD_CMD_READ, 0, 0, 4096, buf), { errno: 5 });
    assert.ok(Date.now() - started >= 1400, 'waited for the bound');
    assert.ok(
      f.log.some((l) => /no connection to the server within --reconnect_timeout/.test(l)),
      f.log.join('\n'),
    );
    await assert.rejects(f.client.request(NBD_CMD_READ, 0, 0, 4096, buf), { errno: 5 });
    const again = new FakeNbdServer({ size: SIZE, structured: true });
    await again.listen({ host: '127.0.0.1', port });
    for (let i = 0; ; i++) {
      try {
        await f.client.request(NBD_CMD_READ, 0, 0, 4096, buf);
        break;
      } catch (err) {
        if (i > 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    assert.ok(Buffer.from(buf).equals(expected(0, 4096)));
    await again.close();
  } finally {
    await f.done();
  }
});

test('capabilities follow the transmission flags; multi-conn is reported', async () => {
  const server = new FakeNbdServer({
    size: SIZE,
    structured: true,
    flags: 1 | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN,
  });
  const p = 20000 + Math.floor(Math.random() * 20000);
  await server.listen({ host: '127.0.0.1', port: p });
  try {
    const e = (await probeExport({ host: '127.0.0.1', port: p }, 'x', 2000)).export;
    assert.equal(e.flags & NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_CAN_MULTI_CONN);
    const caps = capabilitiesOf(e, false);
    assert.equal(caps.volatileCache, true);
    assert.equal(caps.fua, false);
    assert.equal(caps.discard, false);
    assert.equal(caps.writeZeroes, false);
    assert.equal(caps.logicalBlockSize, 512);
    assert.equal(caps.physicalBlockSize, 4096);
    assert.equal(capabilitiesOf(e, true).volatileCache, false);
    assert.equal(capabilitiesOf(e, true).readOnly, true);
  } finally {
    await server.close();
  }
});
