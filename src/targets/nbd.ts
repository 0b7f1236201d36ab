import { appendFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import { constants as sysConstants } from '../sys.js';
import { NbdClient, sameExport } from './nbd/client.js';
import {
  describeAddress,
  HandshakeRefused,
  openConnection,
  probeExport,
  type Export,
  type NbdAddress,
} from './nbd/handshake.js';
import {
  describeFlags,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_ROTATIONAL,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from './nbd/protocol.js';
import { loadTlsConfig, type TlsConfig } from './nbd/tls.js';
import { defineTarget, SECTOR, type Capabilities } from './define.js';

/**
 * ublksrv's nbd target: `-t nbd --host HOST [--port PORT] | --unix PATH [--export_name NAME]
 * [--read_only] [--reconnect_timeout SECONDS] [--tls ...]`.
 *
 * Each queue thread opens its own connection (the handshake in Node, then the socket handed to
 * the queue's io_uring, which does every SEND and RECV of the transmission phase; with TLS the
 * kernel does the records where it can, nbd/ktls.ts, else Node's TLS socket in the queue thread
 * does the socket IO, nbd/tls.ts); see nbd/client.ts for how requests are multiplexed and what
 * happens when a connection breaks. The
 * device's capabilities are the export's transmission flags: FLUSH, FUA, TRIM and WRITE_ZEROES
 * only where the server offers them, read-only where it is, its block size constraints.
 */

const DEFAULT_PORT = 10809;
const DEFAULT_RECONNECT_TIMEOUT_S = 30;
/** For the handshake of one connection attempt. */
const CONNECT_TIMEOUT_MS = 10_000;
/** The protocol's default maximum payload, when the server states none: 32 MiB. */
const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

interface NbdShared {
  address: NbdAddress;
  exportName: string;
  readOnly: boolean;
  reconnectTimeoutMs: number;
  expected: Export;
  tls?: TlsConfig;
  /** With TLS: let the kernel encrypt and decrypt the records where it can. */
  kernelTls: boolean;
}

/** Set in the daemon's environment, a file that gets one line per connection event (tests). */
export const NBD_TRACE_ENV = 'UBLK_NBD_TRACE';

function parseAddress(args: { host?: string; port?: string; unix?: string }): NbdAddress {
  if (args.unix !== undefined && args.host !== undefined) {
    throw new UserError('nbd: give either --host HOST [--port PORT] or --unix PATH, not both');
  }
  if (args.unix !== undefined) {
    if (args.port !== undefined) throw new UserError('nbd: --port goes with --host, not --unix');
    if (args.unix === '') throw new UserError('nbd: --unix needs the path of a Unix socket');
    return { path: args.unix };
  }
  if (args.host === undefined || args.host === '') {
    throw new UserError('nbd: no server: use --host HOST [--port PORT] or --unix PATH');
  }
  const port = args.port === undefined ? DEFAULT_PORT : Number(args.port);
  if (!/^\d+$/.test(args.port ?? '1') || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UserError(`nbd: invalid --port '${args.port}': expected 1 to 65535`);
  }
  return { host: args.host, port };
}

function parseReconnectTimeout(text: string | undefined): number {
  if (text === undefined) return DEFAULT_RECONNECT_TIMEOUT_S * 1000;
  const value = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text.trim()) || !Number.isFinite(value)) {
    throw new UserError(`nbd: invalid --reconnect_timeout '${text}': expected seconds, e.g. 30`);
  }
  return value * 1000;
}

/** The ublk capabilities an export's flags and block sizes allow. */
export function capabilitiesOf(exported: Export, readOnly: boolean): Capabilities {
  const flags = exported.flags;
  const page = sysConstants.PAGE_SIZE;
  const minimum = Math.max(exported.blockSize?.minimum ?? 1, SECTOR);
  if (minimum > page || (minimum & (minimum - 1)) !== 0) {
    throw new UserError(
      `nbd: the export's minimum block size ${minimum} is not a power of two up to ${page}`,
    );
  }
  const preferred = Math.min(Math.max(exported.blockSize?.preferred ?? minimum, minimum), page);
  const maximum = exported.blockSize?.maximum ?? DEFAULT_MAX_PAYLOAD;
  const flush = (flags & NBD_FLAG_SEND_FLUSH) !== 0;
  const ro = readOnly || (flags & NBD_FLAG_READ_ONLY) !== 0;
  return {
    logicalBlockSize: minimum,
    physicalBlockSize: (preferred & (preferred - 1)) === 0 ? preferred : minimum,
    readOnly: ro,
    rotational: (flags & NBD_FLAG_ROTATIONAL) !== 0,
    volatileCache: !ro && flush,
    // FUA means nothing to the block layer without a volatile cache.
    fua: !ro && flush && (flags & NBD_FLAG_SEND_FUA) !== 0,
    discard: !ro && (flags & NBD_FLAG_SEND_TRIM) !== 0 ? { granularity: preferred } : false,
    writeZeroes: !ro && (flags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0,
    maxIoBytes: Math.max(minimum, Math.floor(maximum / minimum) * minimum),
  };
}

export default defineTarget({
  name: 'nbd',
  options: {
    host: { type: 'string', description: 'NBD server host name or address (TCP)' },
    port: { type: 'string', description: `TCP port (default ${DEFAULT_PORT})` },
    unix: {
      type: 'string',
      path: true,
      description: 'path of the NBD server Unix socket (instead of --host)',
    },
    export_name: { type: 'string', description: 'export to attach (default: the default export)' },
    read_only: { type: 'boolean', description: 'attach read-only even if the export is writable' },
    reconnect_timeout: {
      type: 'string',
      description: `seconds a broken connection may take to come back before IO fails with EIO (default ${DEFAULT_RECONNECT_TIMEOUT_S})`,
    },
    tls: {
      type: 'boolean',
      description: 'TLS (NBD_OPT_STARTTLS), the server certificate verified (default: no TLS)',
    },
    tls_certificates: {
      type: 'string',
      path: true,
      description:
        'directory of ca-cert.pem, and client-cert.pem with client-key.pem where the server verifies clients (qemu and nbdkit names)',
    },
    tls_ca: {
      type: 'string',
      path: true,
      description: "the CA certificate (PEM) of the server's (default: the system's CAs)",
    },
    tls_cert: { type: 'string', path: true, description: 'a client certificate (PEM)' },
    tls_key: { type: 'string', path: true, description: 'the client certificate key (PEM)' },
    tls_hostname: {
      type: 'string',
      description: "the name the server's certificate must carry (default --host)",
    },
    no_ktls: {
      type: 'boolean',
      description:
        "TLS records in Node, not handed to the kernel's TLS (by default the kernel takes them where it can: TLS 1.3 over TCP with the tls module)",
    },
  },

  async setup(args, env) {
    const address = parseAddress(args);
    const tls = loadTlsConfig(args, args.host);
    const exportName = args.export_name ?? '';
    const readOnly = args.read_only === true;
    const reconnectTimeoutMs = parseReconnectTimeout(args.reconnect_timeout);
    const kernelTls = args.no_ktls !== true;
    const probe = await probeExport(address, exportName, CONNECT_TIMEOUT_MS, tls, kernelTls).catch(
      (err: unknown) => {
        if (err instanceof UserError) throw err;
        throw new UserError(
          `nbd: handshake with ${describeAddress(address)} failed: ${(err as Error).message}`,
        );
      },
    );
    const exported = probe.export;
    if (env.queues > 1 && (exported.flags & NBD_FLAG_CAN_MULTI_CONN) === 0) {
      throw new UserError(
        `nbd: ${describeAddress(address)} does not advertise NBD_FLAG_CAN_MULTI_CONN, so a flush on one of ${env.queues} connections would not cover writes on the others: use -q 1`,
      );
    }
    const capabilities: Capabilities = {
      ...capabilitiesOf(exported, readOnly),
      // Payloads go between the socket and the request's pages on the ring (--auto_zc), unless
      // Node does the TLS records: then the bytes must pass through JavaScript.
      zeroCopy: probe.tlsRecords?.by === 'node' ? false : 'handlers',
    };
    const block = capabilities.logicalBlockSize!;
    const size = Math.floor(exported.size / block) * block;
    if (size === 0) {
      throw new UserError(
        `nbd: the export is ${exported.size} bytes, less than one ${block}-byte block`,
      );
    }
    return {
      size,
      capabilities,
      shared: {
        address,
        exportName,
        readOnly,
        reconnectTimeoutMs,
        expected: exported,
        tls,
        kernelTls,
      } satisfies NbdShared,
      info: {
        server: describeAddress(address),
        export_name: exportName,
        export_size: exported.size,
        export_flags: describeFlags(exported.flags).join(','),
        structured_replies: exported.structured ? 1 : 0,
        ...(exported.tls ? { tls: exported.tls, tls_records: probe.tlsRecords?.by } : {}),
      },
    };
  },

  async queue(
    { address, exportName, reconnectTimeoutMs, expected, tls, kernelTls },
    { io, queueId },
  ) {
    const connect = () => openConnection(address, exportName, CONNECT_TIMEOUT_MS, tls, kernelTls);
    const first = await connect().catch((err: unknown) => {
      if (err instanceof HandshakeRefused) throw err;
      throw new UserError(`nbd: queue ${queueId} cannot connect: ${(err as Error).message}`);
    });
    if (!sameExport(first.export, expected)) {
      throw new UserError(`nbd: queue ${queueId}: the export changed (size or flags) since setup`);
    }
    const log = (line: string) => process.stderr.write(`queue ${queueId}: ${line}\n`);
    if (first.tlsRecords?.by === 'node') log(`nbd: TLS records in Node: ${first.tlsRecords.why}`);
    const traceFile = process.env[NBD_TRACE_ENV];
    const client = new NbdClient(
      {
        io,
        connect,
        expected,
        reconnectTimeoutMs,
        log,
        trace: traceFile
          ? (event) => appendFileSync(traceFile, `${queueId} ${event}\n`)
          : undefined,
      },
      first,
    );
    return {
      read: (buf, offset, data) =>
        client.request(NBD_CMD_READ, 0, offset, data?.length ?? buf.length, buf, data),
      write: (buf, offset, { fua }, data) =>
        client.request(
          NBD_CMD_WRITE,
          fua ? NBD_CMD_FLAG_FUA : 0,
          offset,
          data?.length ?? buf.length,
          buf,
          data,
        ),
      flush: () => client.request(NBD_CMD_FLUSH, 0, 0, 0),
      discard: (offset, length) => client.request(NBD_CMD_TRIM, 0, offset, length),
      writeZeroes: (offset, length, { noUnmap }) =>
        client.request(NBD_CMD_WRITE_ZEROES, noUnmap ? NBD_CMD_FLAG_NO_HOLE : 0, offset, length),
      close: () => client.close(),
    };
  },
});
