/**
 * The nbd target's TLS options: which combinations are refused (one line each), and what a
 * certificate directory in qemu's layout gives. The TLS connection itself is tested against
 * nbdkit in the kernel suite (test/kernel/nbd.test.ts).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { loadTlsConfig } from '../../src/targets/nbd/tls.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-tls-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function certificates(name: string, files: string[]): string {
  const at = join(dir, name);
  rmSync(at, { recursive: true, force: true });
  mkdirSync(at);
  for (const file of files) writeFileSync(join(at, file), `${file} PEM`);
  return at;
}

test('without --tls: none, and a TLS option alone is refused', () => {
  assert.equal(loadTlsConfig({}, 'h'), undefined);
  assert.throws(() => loadTlsConfig({ tls_ca: 'ca.pem' }, 'h'), /--tls_ca goes with --tls/);
  assert.throws(() => loadTlsConfig({ tls_hostname: 'x' }, 'h'), /--tls_hostname goes with --tls/);
  assert.throws(() => loadTlsConfig({ no_ktls: true }, 'h'), /--no_ktls goes with --tls/);
});

test('a certificate directory: ca-cert.pem, and the client pair where both are there', () => {
  const caOnly = certificates('ca-only', ['ca-cert.pem']);
  assert.deepEqual(loadTlsConfig({ tls: true, tls_certificates: caOnly }, 'host.example'), {
    ca: 'ca-cert.pem PEM',
    cert: undefined,
    key: undefined,
    hostname: 'host.example',
  });
  const full = certificates('full', ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
  const config = loadTlsConfig({ tls: true, tls_certificates: full, tls_hostname: 'n' }, 'h');
  assert.equal(config?.cert, 'client-cert.pem PEM');
  assert.equal(config?.key, 'client-key.pem PEM');
  assert.equal(config?.hostname, 'n');
  const half = certificates('half', ['ca-cert.pem', 'client-cert.pem']);
  assert.throws(
    () => loadTlsConfig({ tls: true, tls_certificates: half }, 'h'),
    /has only one of client-cert.pem and client-key.pem/,
  );
  const none = certificates('none', []);
  assert.throws(
    () => loadTlsConfig({ tls: true, tls_certificates: none }, 'h'),
    /cannot read the CA certificate .*ca-cert.pem/,
  );
  assert.throws(
    () => loadTlsConfig({ tls: true, tls_certificates: full, tls_ca: 'x' }, 'h'),
    /--tls_certificates DIR or --tls_ca, not both/,
  );
});

test('files one by one; the system CAs without --tls_ca; a Unix socket needs --tls_hostname', () => {
  const files = certificates('files', ['ca.pem', 'c.pem', 'k.pem']);
  const config = loadTlsConfig(
    {
      tls: true,
      tls_ca: join(files, 'ca.pem'),
      tls_cert: join(files, 'c.pem'),
      tls_key: join(files, 'k.pem'),
    },
    'h',
  );
  assert.deepEqual(config, {
    ca: 'ca.pem PEM',
    cert: 'c.pem PEM',
    key: 'k.pem PEM',
    hostname: 'h',
  });
  assert.deepEqual(loadTlsConfig({ tls: true }, 'h'), {
    ca: undefined,
    cert: undefined,
    key: undefined,
    hostname: 'h',
  });
  assert.throws(
    () => loadTlsConfig({ tls: true, tls_cert: join(files, 'c.pem') }, 'h'),
    /--tls_cert and --tls_key go together/,
  );
  assert.throws(() => loadTlsConfig({ tls: true }, undefined), /needs --tls_hostname NAME/);
});
