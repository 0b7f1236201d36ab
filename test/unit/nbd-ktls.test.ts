/**
 * What kernel TLS is given: the keys, IVs and record numbers derived from a real TLS 1.3
 * connection (Node on both ends, over loopback), for each cipher the kernel offloads. The check
 * is that the next record each way, sent after the derivation, decrypts with the derived key as
 * the derived record number: what the kernel would do with it. The kernel's side (setsockopt,
 * ring IO on the socket) is tested in the VM (test/kernel/nbd.test.ts); this machine has no tls
 * module.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect as netConnect, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { connect as tlsConnect, createServer, type TLSSocket } from 'node:tls';
import {
  collectSecrets,
  cryptoInfo,
  decrypts,
  directionState,
  expandLabel,
  offloadableCipher,
  RecordTap,
  type DirectionState,
} from '../../src/targets/nbd/ktls.js';
import {
  TLS_1_3_VERSION,
  TLS_CIPHER_AES_GCM_128,
  TLS12_CRYPTO_INFO_AES_GCM_128,
  TLS12_CRYPTO_INFO_CHACHA20_POLY1305,
} from '../../src/uring/index.js';
import { LOCALHOST_CERT, LOCALHOST_KEY } from './support/localhost-cert.js';

/** Resolves with the next `length` bytes of plaintext on a socket. */
async function read(socket: TLSSocket, length: number): Promise<string> {
  let text = '';
  while (text.length < length) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    text += chunk.toString('latin1');
  }
  return text;
}

async function derive(suite: string) {
  const server = createServer({
    key: LOCALHOST_KEY,
    cert: LOCALHOST_CERT,
    ciphers: suite,
    minVersion: 'TLSv1.3',
  });
  const served: TLSSocket[] = [];
  // The server's side of an option exchange: greets, then answers each 4-byte request.
  server.on('secureConnection', (socket: TLSSocket) => {
    served.push(socket);
    socket.write('greeting');
    socket.on('data', (chunk: Buffer) => socket.write(`re:${chunk.toString('latin1')}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const raw = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
  await once(raw, 'connect');
  const tap = new RecordTap(raw);
  const secrets = new Map<string, Buffer>();
  const secure = tlsConnect({ socket: tap, ca: LOCALHOST_CERT, servername: 'localhost' });
  collectSecrets(secure, secrets);
  await once(secure, 'secureConnect');
  assert.equal(await read(secure, 8), 'greeting');
  secure.write('opt1');
  assert.equal(await read(secure, 7), 're:opt1');
  secure.write('opt2');
  assert.equal(await read(secure, 7), 're:opt2');
  const cipher = offloadableCipher(secure);
  assert.notEqual(typeof cipher, 'string', String(cipher));
  if (typeof cipher === 'string') throw new Error(cipher);
  const tx = directionState(cipher, secrets.get('CLIENT_TRAFFIC_SECRET_0'), tap.sent);
  const rx = directionState(cipher, secrets.get('SERVER_TRAFFIC_SECRET_0'), tap.received);
  if (typeof tx === 'string' || typeof rx === 'string') throw new Error(`${tx} / ${rx}`);
  return {
    tx,
    rx,
    tap,
    secure,
    close: async () => {
      secure.destroy();
      for (const socket of served) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

/** The record after the ones counted decrypts as record `state.seq`, and not as its neighbours. */
function assertNextRecord(records: Buffer[], counted: number, state: DirectionState): void {
  assert.equal(records.length, counted + 1, 'one more record each way');
  const next = records[counted];
  const { cipher, key, iv, seq } = state;
  assert.ok(decrypts(cipher, key, iv, seq, next), `record ${seq} decrypts`);
  assert.ok(!decrypts(cipher, key, iv, seq + 1, next));
  if (seq > 0) assert.ok(!decrypts(cipher, key, iv, seq - 1, next));
}

for (const suite of [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
]) {
  test(`${suite}: the derived keys and record numbers are the ones the next records use`, async () => {
    const { tx, rx, tap, secure, close } = await derive(suite);
    try {
      // The client sent its two options after the handshake; the server its greeting, two
      // answers, and its session tickets.
      assert.equal(tx.seq, 2);
      assert.ok(rx.seq >= 3, `rx ${rx.seq}`);
      const sentBefore = tap.sent.records.length;
      const receivedBefore = tap.received.records.length;
      secure.write('more');
      assert.equal(await read(secure, 7), 're:more');
      assertNextRecord(tap.sent.records, sentBefore, tx);
      assertNextRecord(tap.received.records, receivedBefore, rx);
    } finally {
      await close();
    }
  });
}

test('the kernel struct: salt, IV, key and the big-endian record number where the header has them', () => {
  const state: DirectionState = {
    cipher: {
      node: 'aes-128-gcm',
      hash: 'sha256',
      keyBytes: 16,
      type: TLS_CIPHER_AES_GCM_128,
      layout: TLS12_CRYPTO_INFO_AES_GCM_128,
    },
    key: Buffer.alloc(16, 0xaa),
    iv: Buffer.from('000102030405060708090a0b', 'hex'),
    seq: 0x0102,
  };
  const info = cryptoInfo(state);
  const at = TLS12_CRYPTO_INFO_AES_GCM_128;
  assert.equal(info.length, at.size);
  assert.equal(info.readUInt16LE(at.version), TLS_1_3_VERSION);
  assert.equal(info.readUInt16LE(at.cipherType), TLS_CIPHER_AES_GCM_128);
  assert.equal(info.subarray(at.salt, at.salt + 4).toString('hex'), '00010203');
  assert.equal(info.subarray(at.iv, at.iv + 8).toString('hex'), '0405060708090a0b');
  assert.deepEqual(info.subarray(at.key, at.key + 16), state.key);
  assert.equal(info.subarray(at.recSeq, at.recSeq + 8).toString('hex'), '0000000000000102');
  // ChaCha20-Poly1305 has no salt: the whole IV is the iv field.
  const chacha = cryptoInfo({
    ...state,
    cipher: { ...state.cipher, layout: TLS12_CRYPTO_INFO_CHACHA20_POLY1305 },
    key: Buffer.alloc(32, 0xbb),
  });
  const c = TLS12_CRYPTO_INFO_CHACHA20_POLY1305;
  assert.equal(chacha.subarray(c.iv, c.iv + 12).toString('hex'), '000102030405060708090a0b');
});

test('HKDF-Expand-Label matches RFC 8448 (simple 1-RTT handshake, server handshake key and IV)', () => {
  // RFC 8448 section 3: server_handshake_traffic_secret, and the key and IV derived from it.
  const secret = Buffer.from(
    'b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38',
    'hex',
  );
  assert.equal(
    expandLabel('sha256', secret, 'key', 16).toString('hex'),
    '3fce516009c21727d0f2e4e86ee403bc',
  );
  assert.equal(expandLabel('sha256', secret, 'iv', 12).toString('hex'), '5d313eb2671276ee13000b30');
});
