/**
 * The benchmark's inside: runs as root where ublk exists (the test VM, or a ublk host), sets up
 * every device, runs fio on each, and prints the report as one `@@bench-report@@ {json}` line.
 * Progress goes to stderr.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { basename } from 'node:path';
import { UBLK_F } from '../src/ublk/ublk-cmd.js';
import { fio as runFio, run } from './fio.js';
import { WORKLOADS, type BenchReport, type MemoryReport, type Run } from './workloads.js';

const CLI = new URL('../bundle/cli/main.js', import.meta.url).pathname;
/** Our CLI, as each device is added with it. */
const OURS = [process.execPath, CLI];
const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const option = (name: string) => {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : undefined;
};
const peer = option('--peer');
/** The kernel's own C server, built for this kernel on the host (bench/kublk.ts). */
const kublk = option('--kublk');
/** Only the nbd rows (ours against the kernel's nbd client). */
const nbdOnly = argv.includes('--nbd-only');
// A full run: medians of 3 runs of 4 s; a quick one: 1 run of 2 s, for a check, not a figure.
const runtimeSec = quick ? 2 : 4;
/** Every workload runs on every device once per round, so that ratios pair runs close in time. */
const ROUNDS = quick ? 1 : 3;
const FILE_SIZE = quick ? '256M' : '1G';

/** The backing file of every ublk loop device, ours and the C servers' (they run in turn). */
const ULOOP_FILE = '/tmp/bench-uloop.img';
/** Copy mode, for the rows that compare it with zero copy or run where zero copy is not the point. */
const COPY = '--no_auto_zc';

/** kublk, where it was built and this kernel runs it (its `features` needs GET_FEATURES, 6.5+). */
function kublkRuns(): string | undefined {
  if (!kublk) return undefined;
  const r = spawnSync(kublk, ['features'], { encoding: 'utf8' });
  if (r.status === 0) return kublk;
  progress(`kublk does not run on this kernel (features: exit ${r.status}): no C rows`);
  return undefined;
}

/** What this kernel's ublk driver reports (GET_FEATURES; 0 where it has none, as 6.1). */
function kernelFeatures(cli: string[]): number {
  const text = run(cli[0], [...cli.slice(1), 'features']);
  return Number(/^ublk_drv features: (0x[0-9a-f]+)$/m.exec(text)?.[1] ?? 0);
}

/**
 * The data-path modes, by the UBLK_F flag each needs: ours and kublk's options for it. Copy mode
 * is ours with zero copy turned off (the default where the kernel has it).
 */
const MODES: {
  name: string;
  feature: number;
  ours: string[];
  kublk: string[];
  targets: ('null' | 'loop' | 'mem')[];
}[] = [
  { name: 'copy', feature: 0, ours: ['--no_auto_zc'], kublk: [], targets: ['null', 'loop', 'mem'] },
  {
    name: 'user_copy',
    feature: UBLK_F.USER_COPY,
    ours: ['--usercopy'],
    kublk: ['-u'],
    targets: ['loop'],
  },
  {
    // Manual buffer registration: kublk's -z. Ours is --manual_zc (our -z is ublksrv's, which
    // picks automatic registration where the kernel has it); a build before --manual_zc had -z.
    name: 'manual_zc',
    feature: UBLK_F.SUPPORT_ZERO_COPY,
    ours: ['--manual_zc'],
    kublk: ['-z'],
    targets: ['loop'],
  },
  {
    name: 'auto_zc',
    feature: UBLK_F.AUTO_BUF_REG,
    ours: ['--auto_zc'],
    kublk: ['--auto_zc'],
    targets: ['null', 'loop', 'mem'],
  },
  // Batch IO (kublk's -b, ublksrv's -b/--batch-io) in copy mode and with auto zero copy.
  {
    name: 'batch',
    feature: UBLK_F.BATCH_IO,
    ours: ['-b', '--no_auto_zc'],
    kublk: ['-b'],
    targets: ['null', 'loop'],
  },
  {
    name: 'batch_auto_zc',
    feature: UBLK_F.BATCH_IO | UBLK_F.AUTO_BUF_REG,
    ours: ['-b', '--auto_zc'],
    kublk: ['-b', '--auto_zc'],
    targets: ['null', 'loop'],
  },
];

/** The mode without per-tag IO buffers this kernel has: auto zero copy, else user copy, else copy. */
function leanMode(features: number): { name: string; ours: string[] } {
  const lean = ['auto_zc', 'user_copy'].map((name) => MODES.find((m) => m.name === name)!);
  return lean.find((m) => (features & m.feature) === m.feature) ?? MODES[0];
}

const benchStart = Date.now();
/** Kernels still to run after this one (bench.ts says), for the time left in all. */
const kernelsAfter = Number(option('--kernels-after') ?? 0);
/**
 * The fio seconds this kernel's run will take and how many have passed: the time left is the time
 * so far scaled by what is left of them (device set-up and fills scale about alike).
 */
const plan = { totalSec: 0, doneSec: 0, runs: 0, doneRuns: 0 };

/** What adding, filling and deleting a device costs, about, in the emulated VM. */
const SETUP_SEC = 4;

/** Adds a phase to the plan: each device runs every workload every round, daemons warm up first. */
function planPhase(devices: number, daemons: number, workloads: number): void {
  plan.totalSec += daemons * (1 + SETUP_SEC) + devices * workloads * ROUNDS * runtimeSec;
  plan.runs += devices * workloads * ROUNDS;
}

function minutes(sec: number): string {
  return sec < 90 ? `${Math.max(0, Math.round(sec))} s` : `${Math.round(sec / 60)} min`;
}

function eta(): string {
  if (plan.totalSec === 0) return '';
  const elapsed = (Date.now() - benchStart) / 1000;
  // Before the first run, the planned seconds and a fifth more for the rest of the set-up.
  const thisKernel =
    plan.doneSec > 0 ? (elapsed * plan.totalSec) / plan.doneSec : plan.totalSec * 1.2 + elapsed;
  const left = Math.max(0, thisKernel - elapsed);
  const all = kernelsAfter > 0 ? `, ~${minutes(left + kernelsAfter * thisKernel)} in all` : '';
  return ` [run ${plan.doneRuns}/${plan.runs}, ~${minutes(left)} left on this kernel${all}]`;
}

/** Progress with the time since the start and an estimate of the time left. */
function progress(message: string): void {
  const at = ((Date.now() - benchStart) / 1000).toFixed(0).padStart(4);
  process.stderr.write(`bench: Linux ${release()}, ${at} s: ${message}${eta()}\n`);
}

/**
 * A quick run keeps every mode on loop, null in copy mode only, and neither mem nor TLS: it
 * keeps both kernels to a check of some minutes.
 */
function targetsOf(mode: (typeof MODES)[number]): (typeof mode)['targets'] {
  if (!quick) return mode.targets;
  return mode.targets.filter((t) => t === 'loop' || (t === 'null' && mode.name === 'copy'));
}

interface Device {
  name: string;
  path: string;
  baseline?: string;
  /** The C server's device in the same mode, which this one is also compared with. */
  peer?: string;
  pid?: number;
  cleanup: () => void;
}

/** Adds a device with a ublk CLI (ours, or a peer's) and returns its path and daemon. */
function ublkDevice(name: string, cli: string[], args: string[], baseline: string): Device {
  const out = run(cli[0], [...cli.slice(1), 'add', ...args]);
  const id = Number(/dev id (\d+):/.exec(out)?.[1]);
  const pid = Number(/daemon pid (\d+)/.exec(out)?.[1]);
  if (!Number.isInteger(id)) throw new Error(`${name}: no device id in: ${out}`);
  noScheduler(`/dev/ublkb${id}`);
  return {
    name,
    path: `/dev/ublkb${id}`,
    baseline,
    pid: pid > 0 ? pid : undefined,
    cleanup: () => run(cli[0], [...cli.slice(1), 'del', '-n', String(id)]),
  };
}

/**
 * The same block layer path for every device: no I/O scheduler (null_blk with two queues and
 * loop have none by default, ublk with one queue gets mq-deadline on Linux 6.1 unless its daemon
 * says otherwise, as ours does and a peer may not).
 */
function noScheduler(devicePath: string): void {
  writeFileSync(`/sys/block/${basename(devicePath)}/queue/scheduler`, 'none');
}

function cpuTicks(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

function fio(
  device: Device,
  workloadArgs: string[],
  seconds = runtimeSec,
): Omit<Run, 'device' | 'workload' | 'round'> {
  const before = device.pid ? cpuTicks(device.pid) : 0;
  const started = Date.now();
  const side = runFio('bench', device.path, workloadArgs, seconds);
  const elapsed = (Date.now() - started) / 1000;
  const pct = side.clat_ns.percentile ?? {};
  return {
    iops: side.iops,
    mbps: (side.bw * 1024) / 1e6,
    meanUs: side.clat_ns.mean / 1000,
    p50us: pct['50.000000'] / 1000,
    p99us: pct['99.000000'] / 1000,
    daemonCpu: device.pid ? ((cpuTicks(device.pid) - before) / 100 / elapsed) * 100 : undefined,
  };
}

/**
 * The daemon's RSS, and how much of it is the per-tag IO buffers: anonymous read-write maps of a
 * whole number of queues' buffers (the kernel merges adjacent ones, as two queues' buffers).
 */
function memoryOf(device: Device, queues: number): MemoryReport {
  const bufferKiB = (128 * 512 * 1024) / 1024;
  let rss = 0;
  let buffers = 0;
  let anonymousRw = false;
  let size = 0;
  for (const line of readFileSync(`/proc/${device.pid}/smaps`, 'utf8').split('\n')) {
    // A map's first line: "start-end perms offset dev inode [path]".
    const header = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      anonymousRw = header[1] === 'rw-p' && header[2] === '';
      continue;
    }
    const m = /^(Size|Rss):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    if (m[1] === 'Size') size = Number(m[2]);
    else {
      rss += Number(m[2]);
      if (anonymousRw && size > 0 && size % bufferKiB === 0) buffers += Number(m[2]);
    }
  }
  return { device: device.name, queues, rssMiB: rss / 1024, ioBufferBudgetMiB: buffers / 1024 };
}

function makeFile(path: string): void {
  run('fio', [
    '--name=fill',
    `--filename=${path}`,
    '--rw=write',
    '--bs=1M',
    `--size=${FILE_SIZE}`,
    '--output-format=terse',
  ]);
}

/**
 * Every workload on every device, round after round, after a short run on each daemon so that
 * its JIT has warmed up.
 */
function runRounds(devices: Device[], workloads: typeof WORKLOADS, runs: Run[]): void {
  for (const d of devices.filter((d) => d.pid)) {
    progress(`warming up ${d.name}`);
    fio(d, workloads[0].args, 1);
    plan.doneSec += 1 + SETUP_SEC;
  }
  for (let round = 1; round <= ROUNDS; round++) {
    for (const w of workloads) {
      for (const d of devices) {
        progress(`round ${round}/${ROUNDS}: ${w.name} on ${d.name}`);
        const run = { device: d.name, baseline: d.baseline, peer: d.peer, workload: w.name, round };
        runs.push({ ...run, ...fio(d, w.args) });
        plan.doneSec += runtimeSec;
        plan.doneRuns++;
      }
    }
  }
}

/** The workloads the nbd rows run: what the network target is for. */
const NBD_WORKLOADS = ['4k randread QD32', '64k seqread QD8'];
const NBDKIT_PID = '/tmp/bench-nbdkit.pid';
const NBDKIT_TLS_PID = '/tmp/bench-nbdkit-tls.pid';
const TLS_DIR = '/tmp/bench-tls';

/** A CA and a server certificate it signed for 127.0.0.1, as nbdkit's --tls-certificates wants. */
function tlsCertificates(): void {
  run('mkdir', ['-p', TLS_DIR]);
  const at = (name: string) => `${TLS_DIR}/${name}`;
  const ca = ['-CA', at('ca-cert.pem'), '-CAkey', at('ca-key.pem'), '-CAcreateserial'];
  const newKey = [
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '2',
  ];
  run('openssl', [
    'req',
    '-x509',
    ...newKey,
    '-subj',
    '/CN=bench CA',
    '-keyout',
    at('ca-key.pem'),
    '-out',
    at('ca-cert.pem'),
  ]);
  run('openssl', [
    'req',
    ...newKey,
    '-subj',
    '/CN=127.0.0.1',
    '-keyout',
    at('server-key.pem'),
    '-out',
    at('server.csr'),
  ]);
  writeFileSync(at('san.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  run('openssl', [
    'x509',
    '-req',
    '-in',
    at('server.csr'),
    ...ca,
    '-days',
    '2',
    '-extfile',
    at('san.cnf'),
    '-out',
    at('server-cert.pem'),
  ]);
}

/**
 * Ours over TLS on an nbdkit export that requires it: the records encrypted by the kernel (kTLS,
 * the ring doing the socket IO as without TLS), and by Node's TLS in the queue thread.
 */
function tlsDevices(nbd: string[], cleanups: (() => void)[]): Device[] {
  tlsCertificates();
  run('modprobe', ['tls']);
  const tlsServer = ['--tls=require', `--tls-certificates=${TLS_DIR}`];
  run(
    'nbdkit',
    ['-P', NBDKIT_TLS_PID, '-i', '127.0.0.1', '-p', '10810', ...tlsServer].concat([
      'memory',
      FILE_SIZE,
    ]),
  );
  cleanups.push(() => run('kill', [readFileSync(NBDKIT_TLS_PID, 'utf8').trim()]));
  const tls = [...nbd, '--port', '10810', '--tls', '--tls_certificates', TLS_DIR];
  const devices = [
    { ...ublkDevice('ublk-ts nbd ktls', OURS, tls, 'nbd (kernel)'), peer: 'ublk-ts nbd' },
    {
      ...ublkDevice('ublk-ts nbd tls node', OURS, [...tls, '--no_ktls'], 'nbd (kernel)'),
      peer: 'ublk-ts nbd',
    },
  ];
  for (const d of devices) makeFile(d.path);
  return devices;
}

/**
 * Our nbd target against the kernel's nbd driver (nbd-client), both on one nbdkit memory export
 * over loopback TCP, filled first so that reads are not of holes.
 */
function nbdRows(runs: Run[], cleanups: (() => void)[]): void {
  progress('nbd: nbdkit memory export, kernel nbd client, ublk-ts nbd');
  run('nbdkit', ['-P', NBDKIT_PID, '-i', '127.0.0.1', '-p', '10809', 'memory', FILE_SIZE]);
  cleanups.push(() => run('kill', [readFileSync(NBDKIT_PID, 'utf8').trim()]));
  run('modprobe', ['nbd', 'nbds_max=1']);
  cleanups.push(() => run('rmmod', ['nbd']));
  run('nbd-client', ['-N', 'bench', '127.0.0.1', '10809', '/dev/nbd0']);
  cleanups.push(() => run('nbd-client', ['-d', '/dev/nbd0']));
  noScheduler('/dev/nbd0');
  makeFile('/dev/nbd0');
  const nbd = ['-t', 'nbd', '--host', '127.0.0.1'];
  const devices: Device[] = [
    { name: 'nbd (kernel)', path: '/dev/nbd0', cleanup: () => undefined },
    // An older build beside ours (--peer), on the same export: ours is compared with it too.
    ...(peer ? [ublkDevice('peer nbd', [peer], nbd, 'nbd (kernel)')] : []),
    {
      ...ublkDevice('ublk-ts nbd', OURS, [...nbd, COPY], 'nbd (kernel)'),
      peer: peer ? 'peer nbd' : undefined,
    },
    // Payloads between the socket and the request's pages, where the kernel lends them.
    ...((kernelFeatures(OURS) & UBLK_F.AUTO_BUF_REG) !== 0
      ? [
          {
            ...ublkDevice('ublk-ts nbd auto_zc', OURS, [...nbd, '--auto_zc'], 'nbd (kernel)'),
            peer: 'ublk-ts nbd',
          },
        ]
      : []),
  ];
  if (!quick) devices.push(...tlsDevices(nbd, cleanups));
  try {
    runRounds(
      devices,
      WORKLOADS.filter((w) => NBD_WORKLOADS.includes(w.name)),
      runs,
    );
  } finally {
    for (const d of devices.slice(1)) d.cleanup();
  }
}

/** Counts the fio runs every phase below will make (keep in step with them). */
function planAll(features: number, c: string | undefined): void {
  const autoZc = (features & UBLK_F.AUTO_BUF_REG) !== 0;
  const nbd = 2 + (peer ? 1 : 0) + (autoZc ? 1 : 0) + (quick ? 0 : 2);
  planPhase(nbd, nbd - 1, NBD_WORKLOADS.length);
  if (nbdOnly) return;
  let main = 2 + (peer ? 2 : 0);
  for (const mode of MODES.filter((m) => (features & m.feature) === m.feature)) {
    for (const t of targetsOf(mode)) main += c && t !== 'mem' ? 2 : 1;
  }
  planPhase(main, main - 2, WORKLOADS.filter((w) => !w.twoQueues).length);
  const q2 = 5 + (c ? 3 : 0);
  planPhase(q2, q2 - 1, WORKLOADS.filter((w) => w.twoQueues).length);
}

function main(): BenchReport {
  const devices: Device[] = [];
  const runs: Run[] = [];
  const memory: MemoryReport[] = [];
  const cleanups: (() => void)[] = [];
  const c = kublkRuns();
  const features = kernelFeatures(OURS);
  const help = spawnSync(OURS[0], [...OURS.slice(1), 'help'], { encoding: 'utf8' });
  if (!/--manual_zc/.test(`${help.stdout}${help.stderr}`)) {
    MODES.find((m) => m.name === 'manual_zc')!.ours = ['-z'];
  }
  planAll(features, c);
  progress(`${plan.runs} fio runs of ${runtimeSec} s planned, ${ROUNDS} round(s)`);
  try {
    nbdRows(runs, cleanups);
    if (nbdOnly) return report(runs, memory);
    // The nbd exports hold up to 2 GiB of the guest's memory: gone before the other devices come,
    // or the guest evicts the daemons' file pages and their RSS means nothing.
    runCleanups(cleanups);
    progress('setting up kernel baselines: null_blk, loop over a tmpfs file');
    run('modprobe', ['null_blk', 'nr_devices=1', 'queue_mode=2', 'submit_queues=2']);
    cleanups.push(() => run('rmmod', ['null_blk']));
    devices.push({ name: 'null_blk', path: '/dev/nullb0', cleanup: () => undefined });
    noScheduler('/dev/nullb0');
    run('modprobe', ['loop']);
    makeFile('/tmp/bench-kloop.img');
    makeFile(ULOOP_FILE);
    const loopDev = run('losetup', ['-f', '--show', '/tmp/bench-kloop.img']).trim();
    cleanups.push(() => run('losetup', ['-d', loopDev]));
    noScheduler(loopDev);
    devices.push({ name: 'loop (kernel)', path: loopDev, cleanup: () => undefined });
    const depth = ['-q', '1', '-d', '128'];
    // Each data-path mode the kernel has, ours beside kublk's in the same mode (kublk has no mem).
    const ourTarget = {
      null: ['-t', 'null'],
      loop: ['-t', 'loop', '-f', ULOOP_FILE],
      mem: ['-t', 'mem', '--size', FILE_SIZE],
    };
    for (const mode of MODES.filter((m) => (features & m.feature) === m.feature)) {
      const suffix = mode.name === 'copy' ? '' : ` ${mode.name}`;
      for (const t of targetsOf(mode)) {
        const baseline = t === 'loop' ? 'loop (kernel)' : 'null_blk';
        const kublkName = c && t !== 'mem' ? `kublk ${t}${suffix}` : undefined;
        if (kublkName) {
          const backing = t === 'loop' ? [ULOOP_FILE] : [];
          devices.push(
            ublkDevice(kublkName, [c!], ['-t', t, ...depth, ...mode.kublk, ...backing], baseline),
          );
        }
        devices.push({
          ...ublkDevice(`ublk-ts ${t}${suffix}`, OURS, [...ourTarget[t], ...mode.ours], baseline),
          peer: kublkName,
        });
      }
    }
    if (peer) {
      devices.push(ublkDevice('peer null', [peer], ['-t', 'null'], 'null_blk'));
      devices.push(
        ublkDevice('peer loop', [peer], ['-t', 'loop', '-f', ULOOP_FILE], 'loop (kernel)'),
      );
    }
    const oneQueue = WORKLOADS.filter((w) => !w.twoQueues);
    runRounds(devices, oneQueue, runs);
    for (const d of devices.filter((d) => d.pid)) memory.push(memoryOf(d, 1));
    for (const d of devices.splice(2)) d.cleanup();

    // The memory of a queue: null with one and two queues after the same runs, in the mode with
    // no per-tag buffers where the kernel has one (the mode the memory targets are stated for).
    const lean = leanMode(features);
    const step = [1, 2].map((q) =>
      ublkDevice(
        `ublk-ts null -q ${q} ${lean.name}`,
        OURS,
        ['-t', 'null', '-q', `${q}`, ...lean.ours],
        'null_blk',
      ),
    );
    const q2 = [
      devices[0],
      ublkDevice('ublk-ts null -q 2', OURS, ['-t', 'null', '-q', '2', COPY], 'null_blk'),
      ublkDevice(
        'ublk-ts mem -q 2',
        OURS,
        ['-t', 'mem', '--size', FILE_SIZE, '-q', '2', COPY],
        'null_blk',
      ),
    ];
    if (c) {
      // UBLK_F_PER_IO_DAEMON measured on the C server: does serving one queue from two threads
      // (its --per_io_tasks) beat one thread, or two queues, with two fio jobs on 2 vCPUs?
      q2.push(
        ublkDevice('kublk null -q 2', [c], ['-t', 'null', '-q', '2', '-d', '128'], 'null_blk'),
        ublkDevice('kublk null -q 1', [c], ['-t', 'null', '-q', '1', '-d', '128'], 'null_blk'),
        ublkDevice(
          'kublk null -q 1 --nthreads 2 --per_io_tasks',
          [c],
          ['-t', 'null', '-q', '1', '-d', '128', '--nthreads', '2', '--per_io_tasks'],
          'null_blk',
        ),
      );
      q2[1].peer = 'kublk null -q 2';
    }
    q2.push(...step);
    devices.push(...q2.slice(1));
    runRounds(
      q2,
      WORKLOADS.filter((w) => w.twoQueues),
      runs,
    );
    memory.push(memoryOf(q2[1], 2));
    step.forEach((d, i) => memory.push({ ...memoryOf(d, i + 1), queueStep: true }));
  } finally {
    for (const d of devices) {
      try {
        d.cleanup();
      } catch (err) {
        progress(`cleanup of ${d.name} failed: ${(err as Error).message}`);
      }
    }
    runCleanups(cleanups);
  }
  return report(runs, memory);
}

/** Runs and empties a list of undo steps, last first, each on a best-effort basis. */
function runCleanups(cleanups: (() => void)[]): void {
  for (let c = cleanups.pop(); c; c = cleanups.pop()) {
    try {
      c();
    } catch {
      // best effort
    }
  }
}

function report(runs: Run[], memory: MemoryReport[]): BenchReport {
  return {
    kernel: existsSync('/proc/version') ? release() : 'unknown',
    quick,
    runtimeSec,
    rounds: ROUNDS,
    runs,
    memory,
  };
}

console.log(`@@bench-report@@ ${JSON.stringify(main())}`);
