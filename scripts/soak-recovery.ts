/**
 * Recovery soak: CYCLES times (default 20) over, on a fresh loop device with recovery and reissue,
 *
 *   ublk add -t loop -f FILE -r 1 -i 1 -q 2
 *   fio randwrite with crc32c verification, and while it runs: kill -9 the daemon, ublk recover
 *   fio --verify_only: every block read back and checked once more
 *   ublk del
 *
 * and after each cycle: no /dev/ublk[bc]N, no daemon, no state file, no open /dev/ublkcN. Any data
 * error or leak ends the soak with exit status 1. Needs root and ublk_drv: run it in the test VM,
 *
 *   npm run vm -- node dist/scripts/soak-recovery.js [CYCLES]
 *
 * (about 90 s a cycle under emulation; UBLK_VM_TIMEOUT bounds the whole run, 3300 s by default).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  CLI,
  daemonPids,
  stateFiles,
  ublk,
  ublkcFds,
  ublkNodes,
  waitFor,
  type Run,
} from '../test/kernel/support/cli.js';
import { completedIos } from '../test/kernel/support/recovery.js';

const MiB = 2 ** 20;
const SIZE = 32 * MiB;

function log(message: string): void {
  process.stdout.write(`soak: ${message}\n`);
}

function must(what: string, r: Run): string {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** What assertNothingLeft checks, as the list of what was found. */
function leaks(): string[] {
  const left: [string, (string | number)[]][] = [
    ['device nodes', ublkNodes()],
    ['daemons', daemonPids()],
    ['state files', stateFiles()],
    ['fds on /dev/ublkcN', ublkcFds()],
  ];
  return left
    .filter(([, items]) => items.length > 0)
    .map(([what, items]) => `${what} ${items.join(' ')}`);
}

interface FioResult {
  status: number | null;
  errors: number[];
  written: number;
  read: number;
  output: string;
}

/** fio over the device's first SIZE bytes: write and verify, or (verifyOnly) verify again. */
function startFio(dev: string, verifyOnly: boolean): Promise<FioResult> {
  const child = spawn(
    'fio',
    [
      '--name=soak',
      `--filename=${dev}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--rw=randwrite',
      '--bsrange=4k-64k',
      '--iodepth=32',
      `--size=${SIZE}`,
      '--verify=crc32c',
      '--verify_fatal=1',
      '--output-format=json',
      ...(verifyOnly ? ['--verify_only'] : ['--rate=1m', '--verify_backlog=128']),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 10 * 60_000);
  return new Promise((resolve) =>
    child.once('close', (status) => {
      clearTimeout(timer);
      let errors = [-1];
      let written = 0;
      let read = 0;
      try {
        const report = JSON.parse(output.slice(output.indexOf('{'))) as {
          jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[];
        };
        errors = report.jobs.map((j) => j.error);
        written = report.jobs.reduce((n, j) => n + j.write.io_bytes, 0);
        read = report.jobs.reduce((n, j) => n + j.read.io_bytes, 0);
      } catch {
        // no report: counted as an error below
      }
      resolve({ status, errors, written, read, output });
    }),
  );
}

/** No error, every byte verified, and (unless verify_only, which fio counts as written) written. */
function checkFio(what: string, r: FioResult, verifyOnly: boolean): void {
  const wrote = verifyOnly || r.written === SIZE;
  if (r.status !== 0 || r.errors.some((e) => e !== 0) || !wrote || r.read !== SIZE) {
    throw new Error(
      `${what}: status ${r.status}, errors ${r.errors.join(' ')}, wrote ${r.written}, verified ${r.read} of ${SIZE}\n${r.output.slice(-3000)}`,
    );
  }
}

async function cycle(n: number, file: string): Promise<void> {
  const started = Date.now();
  rmSync(file, { force: true });
  spawnSync('truncate', ['-s', String(2 * SIZE), file]);
  const added = must('add', ublk('add', '-t', 'loop', '-f', file, '-r', '1', '-i', '1', '-q', '2'));
  const id = Number(/^dev id (\d+):/.exec(added)?.[1]);
  const dev = `/dev/ublkb${id}`;
  const [pid] = daemonPids();
  let fioDone = false;
  const fio = startFio(dev, false).finally(() => (fioDone = true));
  await waitFor('fio IO', () => completedIos(id) > 100, 60_000);
  if (fioDone) throw new Error('fio ended before the kill');
  process.kill(pid, 'SIGKILL');
  await waitFor(`daemon ${pid} gone`, () => !daemonPids().includes(pid), 30_000);
  const recovered = must('recover', ublk('recover', '-n', String(id)));
  if (!/ state LIVE\n/.test(recovered))
    throw new Error(`recover printed no LIVE device:\n${recovered}`);
  const first = await fio;
  checkFio('fio write+verify across the kill', first, false);
  checkFio('fio verify_only after recovery', await startFio(dev, true), true);
  must('del', ublk('del', '-n', String(id)));
  const left = leaks();
  if (left.length) throw new Error(`left behind: ${left.join('; ')}`);
  log(
    `cycle ${n}: device ${id}, killed daemon ${pid} mid-write, recovered; ${SIZE / MiB} MiB written and verified twice, 0 errors, nothing left (${((Date.now() - started) / 1000).toFixed(0)} s)`,
  );
}

async function main(): Promise<number> {
  const cycles = Number(process.argv[2] ?? 20);
  if (!Number.isInteger(cycles) || cycles < 1)
    throw new Error(`bad cycle count ${process.argv[2]}`);
  const before = leaks();
  if (before.length) throw new Error(`not a clean start: ${before.join('; ')}`);
  const dir = mkdtempSync('/tmp/ublk-soak-');
  const started = Date.now();
  try {
    for (let n = 1; n <= cycles; n++) await cycle(n, join(dir, 'backing.img'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  log(
    `${cycles} cycles passed: 0 data errors, no leaks (${((Date.now() - started) / 1000).toFixed(0)} s)`,
  );
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`FAILED: ${(err as Error).message}`);
    spawnSync(process.execPath, [CLI, 'del', '-a'], { stdio: 'inherit' });
    process.exit(1);
  },
);
