/**
 * The nbd target against real NBD servers in the guest (nbdkit's memory and file plugins,
 * qemu-nbd on a qcow2 image) over loopback TCP and Unix sockets; what our device wrote is read
 * back from the server side (nbdcopy, qemu-img compare). Then the server going away (killed and
 * restarted during fio verify; gone for good), and a fake server in this process that corrupts
 * one field of one reply at a time.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test, type TestContext } from 'node:test';
import { NBD_TRACE_ENV } from '../../src/targets/nbd.js';
import { UBLK_F } from '../../src/ublk/ublk-cmd.js';
import {
  assertNothingLeft,
  delAll,
  delDevice,
  kernelFeatures,
  RUN_DIR,
  sh,
  ublk,
  waitFor,
} from './support/cli.js';
import {
  FakeNbdThread,
  patternByte,
  SIMPLE_CORRUPTIONS,
  STRUCTURED_CORRUPTIONS,
} from './support/fake-nbd.js';
import { completedIos, jobErrors, killFio, startFio } from './support/recovery.js';
import {
  assertNoDevice,
  assertSameBytes,
  fioSummary,
  fioVerify,
  listedFlags,
  readAt,
  withDevice,
  writeAt,
} from './support/targets.js';

const MiB = 2 ** 20;
const DAEMON_LOG = join(RUN_DIR, 'daemon.log');
const dir = mkdtempSync(join(tmpdir(), 'nbd-test-'));
const servers = new Set<ChildProcess>();
/** Whether this kernel lends request pages to the server (UBLK_F_AUTO_BUF_REG, 6.16). */
const lendsPages = (kernelFeatures() & UBLK_F.AUTO_BUF_REG) !== 0;

after(() => {
  killFio();
  delAll();
  for (const s of servers) s.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const logLength = () => (existsSync(DAEMON_LOG) ? readFileSync(DAEMON_LOG, 'utf8').length : 0);
const logSince = (start: number) => readFileSync(DAEMON_LOG, 'utf8').slice(start);

/** nbdkit in the foreground, killed with the test; resolves once it listens (its pid file). */
async function nbdkit(listen: string[], plugin: string[]): Promise<ChildProcess> {
  const pidFile = join(dir, `nbdkit-${Date.now()}-${Math.random()}.pid`);
  const child = spawn('nbdkit', ['-f', '-P', pidFile, ...listen, ...plugin], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  servers.add(child);
  child.once('exit', () => servers.delete(child));
  await waitFor('nbdkit to listen', () => existsSync(pidFile), 30_000);
  return child;
}

async function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

/** Random bytes written through the device at `offset`; returns them. */
function writeRandom(dev: string, offset: number, length: number): Buffer {
  const data = randomBytes(length);
  writeAt(dev, offset, data);
  return data;
}

/** The whole export as the server serves it, through nbdcopy. */
function serverBytes(uri: string): Buffer {
  const out = join(dir, 'export.raw');
  sh('nbdcopy', [uri, out]);
  const bytes = readFileSync(out);
  rmSync(out);
  return bytes;
}

test('nbdkit memory over TCP: list, fio verify QD1/QD64 with mixed block sizes, data read back by nbdcopy', async (t) => {
  const server = await nbdkit(['-i', '127.0.0.1', '-p', '10809'], ['memory', '128M']);
  try {
    let written: Buffer | undefined;
    await withDevice(['-t', 'nbd', '--host', '127.0.0.1'], async (id, dev, added) => {
      assert.equal(added.target.name, 'nbd');
      assert.equal(added.target.type, 3, "ublksrv's number for nbd");
      assert.equal(added.target.dev_size, 128 * MiB);
      assert.equal(added.target.server, '127.0.0.1:10809');
      assert.equal(added.target.structured_replies, 1);
      assert.match(String(added.target.export_flags), /flush,fua,trim,write_zeroes/);
      assert.equal(
        readFileSync(`/sys/block/ublkb${id}/queue/write_cache`, 'utf8').trim(),
        'write back',
      );
      await t.test('fio verify, iodepth 1, 4k-256k', (s) => {
        s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 1, size: 8 * MiB })));
      });
      await t.test('fio verify, iodepth 64, 4k-256k', (s) => {
        s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 64, size: 32 * MiB, offset: 8 * MiB })));
      });
      written = writeRandom(dev, 64 * MiB, 16 * MiB);
      // WRITE_ZEROES and DISCARD reach the server (nbdkit's memory reads zeroes back).
      sh('blkdiscard', ['-z', '-o', String(80 * MiB), '-l', String(MiB), dev]);
      sh('blkdiscard', ['-o', String(81 * MiB), '-l', String(MiB), dev]);
    });
    const bytes = serverBytes('nbd://127.0.0.1:10809');
    assertSameBytes(
      bytes.subarray(64 * MiB, 80 * MiB),
      written!,
      'what the device wrote, read by nbdcopy',
    );
    assert.ok(
      bytes.subarray(80 * MiB, 82 * MiB).every((b) => b === 0),
      'zeroed and discarded ranges',
    );
    assertNoDevice();
  } finally {
    await stop(server);
  }
});

test('nbdkit file over a Unix socket, -q 2 with 2 fio jobs; the file holds what the device wrote', async (t) => {
  const file = join(dir, 'disk.raw');
  sh('truncate', ['-s', '160M', file]);
  const sock = join(dir, 'file.sock');
  const server = await nbdkit(['-U', sock], ['file', file]);
  try {
    let written: Buffer | undefined;
    await withDevice(['-t', 'nbd', '--unix', sock, '-q', '2'], async (_id, dev, added) => {
      assert.equal(added.nr_hw_queues, 2);
      await t.test('fio verify, 2 jobs of iodepth 32, each on its own 32 MiB', (s) => {
        s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 32, size: 32 * MiB, numjobs: 2 })));
      });
      await t.test('fio verify, iodepth 64, bssplit 4k/512k', (s) => {
        const r = fioVerify(dev, {
          iodepth: 64,
          size: 16 * MiB,
          offset: 64 * MiB,
          bssplit: '4k/40:16k/30:128k/20:512k/10',
        });
        s.diagnostic(fioSummary(r));
      });
      written = writeRandom(dev, 100 * MiB, 24 * MiB);
    });
    const bytes = serverBytes(`nbd+unix:///?socket=${sock}`);
    assertSameBytes(bytes.subarray(100 * MiB, 124 * MiB), written!, 'nbdcopy from the server');
    assertSameBytes(
      readFileSync(file).subarray(100 * MiB, 124 * MiB),
      written!,
      'the backing file',
    );
  } finally {
    await stop(server);
  }
});

/**
 * qemu-nbd serving a new 96 MiB qcow2 image on a Unix socket, and `ublk add -t nbd --unix` on it
 * with `options`: fio verify at QD1 and QD64, random data at 48 MiB, then the whole device read
 * with dd into one buffer, so each hole past 64 MiB (the image's unallocated clusters, which
 * qemu-nbd sends as hole chunks) is read into bytes that held data. qemu-img compares the image
 * with what the device showed.
 */
async function qcow2RoundTrip(t: TestContext, name: string, options: string[] = []) {
  const image = join(dir, `${name}.qcow2`);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', image, '96M']);
  const sock = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  sh('qemu-nbd', [
    '--fork',
    `--pid-file=${pidFile}`,
    `--socket=${sock}`,
    '--format=qcow2',
    '--shared=4',
    // Without it qemu-nbd exits when its first client (setup's probe) disconnects.
    '--persistent',
    image,
  ]);
  const qemuPid = Number(readFileSync(pidFile, 'utf8'));
  const shown = join(dir, `${name}-shown.raw`);
  try {
    let written: Buffer | undefined;
    await withDevice(['-t', 'nbd', '--unix', sock, ...options], async (id, dev, added) => {
      assert.equal(added.target.dev_size, 96 * MiB);
      if (options.includes('--auto_zc')) {
        assert.equal(listedFlags(id) & UBLK_F.AUTO_BUF_REG, UBLK_F.AUTO_BUF_REG, 'listed');
      }
      await t.test('fio verify, iodepth 1', (s) => {
        s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 1, size: 8 * MiB })));
      });
      await t.test('fio verify, iodepth 64', (s) => {
        s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 64, size: 32 * MiB, offset: 8 * MiB })));
      });
      written = writeRandom(dev, 48 * MiB, 16 * MiB);
      sh('dd', [`if=${dev}`, `of=${shown}`, 'bs=1M', 'iflag=direct', 'status=none']);
    });
    const bytes = readFileSync(shown);
    assertSameBytes(bytes.subarray(48 * MiB, 64 * MiB), written!, 'read back');
    assert.ok(
      bytes.subarray(64 * MiB).every((b) => b === 0),
      'holes read as zeros',
    );
  } finally {
    if (existsSync(`/proc/${qemuPid}`)) process.kill(qemuPid, 'SIGTERM');
    await waitFor('qemu-nbd to exit', () => !existsSync(`/proc/${qemuPid}`), 30_000);
  }
  // qemu-img reads the qcow2 itself: every byte the device showed is in the image.
  sh('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', shown, image]);
}

test('qemu-nbd on a qcow2 image: fio verify; qemu-img compare of the image with what the device showed', (t) =>
  qcow2RoundTrip(t, 'qemu'));

if (lendsPages) {
  test('zero copy (--auto_zc, and -z, which is auto zero copy here): payloads between the socket and the lent pages; qemu-nbd with holes, nbdkit file with -q 2', async (t) => {
    await t.test('qemu-nbd, qcow2', (s) => qcow2RoundTrip(s, 'qemu-zc', ['--auto_zc']));
    const file = join(dir, 'zc.raw');
    sh('truncate', ['-s', '96M', file]);
    const sock = join(dir, 'zc-file.sock');
    const server = await nbdkit(['-U', sock], ['file', file]);
    try {
      let written: Buffer | undefined;
      await withDevice(['-t', 'nbd', '--unix', sock, '-q', '2', '-z'], async (id, dev) => {
        assert.equal(listedFlags(id) & UBLK_F.AUTO_BUF_REG, UBLK_F.AUTO_BUF_REG, 'listed');
        await t.test('nbdkit file, fio verify, 2 jobs of iodepth 32', (s) => {
          s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 32, size: 24 * MiB, numjobs: 2 })));
        });
        written = writeRandom(dev, 64 * MiB, 16 * MiB);
      });
      assertSameBytes(readFileSync(file).subarray(64 * MiB, 80 * MiB), written!, 'the file');
    } finally {
      await stop(server);
    }
  });
} else {
  test('zero copy (--auto_zc, -z) on a kernel without UBLK_F_AUTO_BUF_REG: refused in one line, nothing left', async () => {
    const server = await nbdkit(['-i', '127.0.0.1', '-p', '10813'], ['memory', '16M']);
    try {
      for (const [option, name] of [
        ['--auto_zc', '--auto_zc'],
        ['-z', '-z'],
      ]) {
        const r = ublk('add', '-t', 'nbd', '--host', '127.0.0.1', '--port', '10813', option);
        assert.notEqual(r.status, 0);
        // nbd moves the data itself: only the auto form, never manual zero copy.
        assert.match(
          r.stderr.trim(),
          new RegExp(
            `^[^\\n]*zero copy \\(${name}\\) needs UBLK_F_AUTO_BUF_REG \\(Linux 6\\.16\\+\\)[^\\n]*$`,
          ),
        );
        assertNothingLeft();
      }
    } finally {
      await stop(server);
    }
  });
}

for (const tls of [false, true]) {
  const over = tls ? 'TLS with the kernel doing the records' : 'plain TCP';
  test(`the server killed and restarted during fio verify (${over}): 0 verify errors, the drop logged`, async () => {
    const file = join(dir, 'restart.raw');
    sh('truncate', ['-s', '64M', file]);
    if (tls) sh('modprobe', ['tls']);
    const certs = tls ? certificates('restart-tls') : '';
    const listen = [
      '-i',
      '127.0.0.1',
      '-p',
      '10811',
      ...(tls ? ['--tls=require', `--tls-certificates=${certs}`] : []),
    ];
    const client = tls ? ['--tls', '--tls_certificates', certs] : [];
    let server = await nbdkit(listen, ['file', file]);
    const logStart = logLength();
    try {
      await withDevice(
        [
          '-t',
          'nbd',
          '--host',
          '127.0.0.1',
          '--port',
          '10811',
          '--reconnect_timeout',
          '60',
          ...client,
        ],
        async (id, dev, added) => {
          if (tls) assert.equal(added.target.tls_records, 'kernel');
          // TLS runs at a third of plain TCP's speed under emulation: a shorter run.
          const size = (tls ? 24 : 48) * MiB;
          const before = completedIos(id);
          const fio = startFio(dir, 'restart', [
            `--filename=${dev}`,
            '--ioengine=io_uring',
            '--direct=1',
            '--rw=randwrite',
            '--bsrange=4k-128k',
            '--iodepth=16',
            `--size=${size}`,
            '--verify=crc32c',
            '--do_verify=1',
            '--verify_fatal=1',
          ]);
          await waitFor('fio to be writing', () => completedIos(id) - before > 100, 60_000);
          await stop(server, 'SIGKILL');
          await sleep(2000);
          assert.ok(fio.running(), 'fio waits for the server rather than failing');
          server = await nbdkit(listen, ['file', file]);
          const { status, report, stderr } = await fio.finished(5 * 60_000);
          assert.equal(status, 0, stderr);
          assert.deepEqual(jobErrors(report), [0]);
          assert.equal(report.jobs[0].write.io_bytes, size);
          assert.equal(report.jobs[0].read.io_bytes, size, 'all verified');
        },
      );
      assert.match(
        logSince(logStart),
        /nbd: connection dropped \(.*\); \d+ request\(s\) will be sent again/,
      );
    } finally {
      await stop(server);
    }
  });
}

test('the server gone past --reconnect_timeout: EIO, a log line, and a clean del', async () => {
  const server = await nbdkit(['-i', '127.0.0.1', '-p', '10812'], ['memory', '32M']);
  const r = ublk(
    'add',
    '-t',
    'nbd',
    '--host',
    '127.0.0.1',
    '--port',
    '10812',
    '--reconnect_timeout',
    '3',
  );
  assert.equal(r.status, 0, r.stderr);
  const id = Number(/^dev id (\d+):/m.exec(r.stdout)![1]);
  const dev = `/dev/ublkb${id}`;
  const logStart = logLength();
  writeAt(dev, 0, Buffer.alloc(65536, 7));
  // Before the kill: the client's bound runs from when it sees the drop, after this.
  const started = Date.now();
  await stop(server, 'SIGKILL');
  const dd = spawnSync(
    'dd',
    [`if=${dev}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct', 'status=none'],
    { encoding: 'utf8' },
  );
  assert.notEqual(dd.status, 0, 'the read fails');
  assert.match(dd.stderr, /Input\/output error/);
  assert.ok(Date.now() - started >= 2500, 'after the reconnect bound');
  const again = spawnSync(
    'dd',
    [`if=${dev}`, 'of=/dev/null', 'bs=4096', 'count=1', 'skip=8', 'iflag=direct', 'status=none'],
    { encoding: 'utf8' },
  );
  assert.match(again.stderr, /Input\/output error/, 'and so does the next one');
  await waitFor(
    'the log line',
    () => /no connection to the server within --reconnect_timeout 3 s/.test(logSince(logStart)),
    10_000,
  );
  delDevice(id);
  assertNothingLeft();
});

test('user errors: no server, TLS options, -q 2 without multi-conn, both --host and --unix; nothing left behind', async () => {
  const cases: [string[], RegExp][] = [
    [
      ['--host', '127.0.0.1', '--port', '10899'],
      /connection to 127.0.0.1:10899 refused: is the NBD server running/,
    ],
    [['--unix', join(dir, 'nothing.sock')], /no Unix socket/],
    [
      ['--unix', join(dir, 'nothing.sock'), '--tls'],
      /--tls over a Unix socket needs --tls_hostname/,
    ],
    [['--host', '127.0.0.1', '--tls_ca', 'ca.pem'], /--tls_ca goes with --tls/],
    [['--host', 'h', '--unix', 'p'], /either --host HOST \[--port PORT\] or --unix PATH, not both/],
    [[], /no server: use --host HOST/],
  ];
  for (const [args, message] of cases) {
    const r = ublk('add', '-t', 'nbd', ...args);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stdout}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  const fake = new FakeNbdThread(
    { size: 16 * MiB, structured: true, flags: 1 | 4 },
    { host: '127.0.0.1', port: 10813 },
  );
  await fake.listening();
  try {
    const r = ublk('add', '-t', 'nbd', '--host', '127.0.0.1', '--port', '10813', '-q', '2');
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /does not advertise NBD_FLAG_CAN_MULTI_CONN, so a flush on one of 2 connections would not cover writes on the others: use -q 1/,
    );
  } finally {
    await fake.close();
  }
  assertNothingLeft();
});

for (const structured of [true, false]) {
  const kinds = structured ? STRUCTURED_CORRUPTIONS : SIMPLE_CORRUPTIONS;
  test(`fuzzing, ${structured ? 'structured' : 'simple'} replies: each corrupt field drops the connection, never a wrong byte`, async () => {
    const port = structured ? 10814 : 10815;
    const fake = new FakeNbdThread({ size: 32 * MiB, structured }, { host: '127.0.0.1', port });
    await fake.listening();
    const trace = join(dir, `trace-${port}`);
    process.env[NBD_TRACE_ENV] = trace; // inherited by `ublk add` and so by its daemon
    try {
      await withDevice(
        ['-t', 'nbd', '--host', '127.0.0.1', '--port', String(port)],
        async (_id, dev) => {
          delete process.env[NBD_TRACE_ENV];
          // Whatever the kernel reads when the disk appears (partition scan) is done by now.
          await sleep(1000);
          const startConnections = fake.connections;
          for (const [round, kind] of kinds.entries()) {
            const offset = (round + 1) * MiB;
            await fake.corruptNextRead(kind);
            const got = readAt(dev, offset, 65536);
            const want = Buffer.alloc(65536);
            for (let i = 0; i < want.length; i++) want[i] = patternByte(offset + i);
            assertSameBytes(got, want, `${kind}: the data read`);
            assert.equal(fake.applied, round + 1, `${kind} was sent`);
            assert.equal(
              fake.connections,
              startConnections + round + 1,
              `${kind}: the connection was dropped and made again`,
            );
          }
          const drops = readFileSync(trace, 'utf8')
            .split('\n')
            .filter((l) => / dropped /.test(l));
          assert.equal(drops.length, kinds.length, drops.join('\n'));
          // Writes still land where they should after all that.
          const data = randomBytes(256 * 1024);
          writeAt(dev, 8 * MiB, data);
          assertSameBytes(
            fake.data.subarray(8 * MiB, 8 * MiB + data.length),
            data,
            'a write after the fuzzing',
          );
        },
      );
    } finally {
      delete process.env[NBD_TRACE_ENV];
      await fake.close();
    }
  });
}

test('read-only: --read_only, and an export the server marks read-only', async () => {
  const writable = await nbdkit(['-i', '127.0.0.1', '-p', '10816'], ['memory', '16M']);
  const readOnly = await nbdkit(['-i', '127.0.0.1', '-p', '10817', '-r'], ['memory', '16M']);
  try {
    for (const args of [
      ['--port', '10816', '--read_only'],
      ['--port', '10817'],
    ]) {
      await withDevice(['-t', 'nbd', '--host', '127.0.0.1', ...args], (id, dev) => {
        assert.equal(readFileSync(`/sys/block/ublkb${id}/ro`, 'utf8').trim(), '1');
        const w = spawnSync(
          'dd',
          ['if=/dev/zero', `of=${dev}`, 'bs=4096', 'count=1', 'oflag=direct', 'status=none'],
          { encoding: 'utf8' },
        );
        assert.notEqual(w.status, 0, 'a write is refused');
        assert.equal(readAt(dev, 0, 4096).length, 4096);
      });
    }
  } finally {
    await stop(writable);
    await stop(readOnly);
  }
});

/**
 * A CA, and a server certificate it signed for 127.0.0.1 (P-256 keys: RSA key generation takes
 * seconds under emulation), in nbdkit's --tls-certificates layout
 * (ca-cert.pem, server-cert.pem, server-key.pem); the client needs ca-cert.pem only. `other` gets a
 * CA of its own, which signed nothing the server has.
 */
function certificates(name: string): string {
  const out = join(dir, name);
  sh('mkdir', ['-p', out]);
  const openssl = (...args: string[]) => sh('openssl', args);
  openssl(
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=test CA',
    '-keyout',
    join(out, 'ca-key.pem'),
    '-out',
    join(out, 'ca-cert.pem'),
  );
  openssl(
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-subj',
    '/CN=127.0.0.1',
    '-keyout',
    join(out, 'server-key.pem'),
    '-out',
    join(out, 'server.csr'),
  );
  const ext = join(out, 'san.cnf');
  writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(
    'x509',
    '-req',
    '-in',
    join(out, 'server.csr'),
    '-CA',
    join(out, 'ca-cert.pem'),
    '-CAkey',
    join(out, 'ca-key.pem'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    ext,
    '-out',
    join(out, 'server-cert.pem'),
  );
  return out;
}

test('TLS: nbdkit --tls=require, STARTTLS then TLS 1.3, records by the kernel and by Node; fio verify through each; the refusals', async (t) => {
  // The kernel's TLS layer is a module (both kernels build it): what ublk add finds loaded.
  sh('modprobe', ['tls']);
  const certs = certificates('tls');
  const otherCa = certificates('tls-other');
  const tlsServer = ['--tls=require', `--tls-certificates=${certs}`];
  const server = await nbdkit(['-i', '127.0.0.1', '-p', '10818', ...tlsServer], ['memory', '64M']);
  const plain = await nbdkit(['-i', '127.0.0.1', '-p', '10819'], ['memory', '16M']);
  const tlsArgs = ['-t', 'nbd', '--host', '127.0.0.1', '--port', '10818', '--tls'];
  try {
    // The server accepts nothing but TLS: what verifies went through the kernel's records
    // (the ring's SEND and RECV on the socket), then through Node's.
    for (const [records, extra] of [
      ['kernel', []],
      ['node', ['--no_ktls']],
    ] as const) {
      const args = [...tlsArgs, '--tls_certificates', certs, ...extra];
      await withDevice(args, async (_id, dev, added) => {
        assert.equal(added.target.tls, 'TLSv1.3');
        assert.equal(added.target.tls_records, records);
        assert.equal(added.target.dev_size, 64 * MiB);
        await t.test(`records by ${records}: fio verify, iodepth 32, 4k-256k`, (s) => {
          s.diagnostic(fioSummary(fioVerify(dev, { iodepth: 32, size: 16 * MiB })));
        });
        const data = writeRandom(dev, 40 * MiB, 4 * MiB);
        assertSameBytes(readAt(dev, 40 * MiB, 4 * MiB), data, `read back, records by ${records}`);
      });
    }
    // The CA as a file of its own gives the same.
    await withDevice([...tlsArgs, '--tls_ca', join(certs, 'ca-cert.pem')], (_id, dev) => {
      assert.equal(readAt(dev, 0, 4096).length, 4096);
    });
    const cases: [string[], RegExp][] = [
      [
        ['-t', 'nbd', '--host', '127.0.0.1', '--port', '10818'],
        /127.0.0.1:10818 requires TLS for the default export: add --tls/,
      ],
      [
        [
          '-t',
          'nbd',
          '--host',
          '127.0.0.1',
          '--port',
          '10819',
          '--tls',
          '--tls_certificates',
          certs,
        ],
        /127.0.0.1:10819 does not offer TLS \(NBD_OPT_STARTTLS: .*\): drop --tls/,
      ],
      [
        [...tlsArgs, '--tls_certificates', otherCa],
        /TLS with 127.0.0.1:10818 failed: .*certificate/i,
      ],
      [
        [...tlsArgs, '--tls_certificates', certs, '--tls_hostname', 'elsewhere.example'],
        /TLS with 127.0.0.1:10818 failed: .*elsewhere.example/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = ublk('add', ...args);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stdout}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    }
    assertNothingLeft();
  } finally {
    await stop(server);
    await stop(plain);
  }
});
