/**
 * Runs one command in the test VM: QEMU (software emulation by default) boots the distribution
 * kernel with the initramfs of vm-prepare.ts, which mounts the host's / read-only under a tmpfs
 * overlay and runs the command, as root, in a chroot of it, in the caller's working directory.
 *
 * Channels (each a QEMU serial port connected to a Unix socket we listen on):
 *   ttyS0  the kernel console: init's markers and kernel messages -> parsed, logged, filtered
 *   ttyS1  the command's stdout -> our stdout, live
 *   ttyS2  the command's stderr -> our stderr, live
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  copyFileSync,
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { cacheRoot, envNumber, log, shq, UserError, verbose } from './common.js';
import type { VmAssets } from './vm-prepare.js';

export interface VmRunOptions {
  /** The command and its arguments (run with env -i; no shell unless you ask for one). */
  argv: readonly string[];
  /** Working directory in the guest (the same path as on the host). */
  cwd: string;
  /** The complete environment of the command in the guest. */
  env: Readonly<Record<string, string>>;
  /** The whole run, boot included, is killed after this many seconds. */
  timeoutSec: number;
  /** The guest must reach its command within this many seconds. */
  bootTimeoutSec: number;
  memory: string;
  cpus: number;
  accel: string;
  /** Size of the tmpfs under the overlay on / and of /tmp (tmpfs size= syntax: 75%, 3G). */
  tmpfsSize: string;
  /** Show every kernel message live, boot included. */
  verbose: boolean;
  /** Copy the whole guest kernel console log there at the end. */
  kernelLogPath?: string;
  /** Called for each line of the command's stdout; return false to keep it off our stdout. */
  onStdoutLine?: (line: string) => boolean;
}

export interface VmRunResult {
  /** The command's exit status; 124 when timed out; 125 when the VM failed (see failure). */
  status: number;
  /** One-line reason when the VM itself failed or timed out. */
  failure?: string;
  timedOut: boolean;
  /** ms from QEMU's start to the guest starting the command. */
  readyMs?: number;
  /** Kernel oops/warning/hung-task reports seen while the command ran. */
  kernelReports: number;
  /** Where the kernel console log was kept (after a failure or a kernel report). */
  kernelLog?: string;
}

/** Kernel messages that open a report worth showing (oops, warnings, hangs, stalls...). */
const REPORT_START =
  /\b(BUG:|Oops|WARNING:|INFO: task .* blocked for more than|Kernel panic|general protection fault|kernel BUG at|soft lockup|hard LOCKUP|rcu: INFO|rcu_\w+ detected stall|UBSAN:|KASAN:|Out of memory|oom-kill|segfault at|page allocation failure|list_(add|del) corruption|sysrq: Show)/;
/** Messages of the ublk driver itself (and of our init), not of others naming a ublk device. */
const FROM_UBLK = /^(\[[\s\d.]+\]\s*)?ublk/;
/** How long after a report's first line we keep showing kernel lines (its trace). */
const REPORT_WINDOW_MS = 3000;

/**
 * Boots a guest that dies before the command starts this many times in all. Under TCG the kernel
 * now and then faults while it patches its own text at boot (an int3 oops in sched_clock_cpu on
 * 7.3, before any test): the command never ran, so a new boot changes nothing it would see.
 */
const BOOT_ATTEMPTS = 3;

export async function runInVm(assets: VmAssets, opts: VmRunOptions): Promise<VmRunResult> {
  if (opts.argv.length === 0) throw new UserError('no command to run in the VM');
  for (let attempt = 1; ; attempt++) {
    const result = await runOnce(assets, opts);
    const diedAtBoot = result.readyMs === undefined && result.failure !== undefined;
    if (!diedAtBoot || attempt === BOOT_ATTEMPTS) return result;
    process.stderr.write(
      `ublk-vm: the guest failed before the command started (${result.failure}): booting again\n`,
    );
  }
}

async function runOnce(assets: VmAssets, opts: VmRunOptions): Promise<VmRunResult> {
  const runDir = realpathSync(mkdtempSync(join(tmpdir(), 'ublk-vm-')));
  const saneForCmdline = /^[\w./+-]+$/;
  if (!saneForCmdline.test(runDir)) {
    rmSync(runDir, { recursive: true, force: true });
    throw new UserError(
      `the temporary folder ${runDir} has characters the kernel command line cannot carry; set TMPDIR`,
    );
  }
  if (join(runDir, 'console.sock').length > 100) {
    rmSync(runDir, { recursive: true, force: true });
    throw new UserError(`the temporary folder ${runDir} is too long for Unix sockets; set TMPDIR`);
  }
  for (const p of [assets.modTree, assets.modulesDir]) {
    if (/[\s:,]/.test(p))
      throw new UserError(`overlayfs cannot take the path ${p} (space, ':' or ',')`);
  }
  try {
    return await runWith(runDir, assets, opts);
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

async function runWith(runDir: string, assets: VmAssets, opts: VmRunOptions): Promise<VmRunResult> {
  // The guest's watchdog asks the kernel for its blocked tasks (sysrq w) shortly before we
  // give up, so that a hang explains itself in the log.
  const dumpAfter = Math.max(5, Math.floor(Math.max(opts.timeoutSec - 30, opts.timeoutSec / 2)));
  writeFileSync(
    join(runDir, 'config'),
    [
      `KVER=${shq(assets.kver)}`,
      `MODTREE=${shq(assets.modTree)}`,
      `MODDIR=${shq(assets.modulesDir)}`,
      `OVL_SIZE=${shq(opts.tmpfsSize)}`,
      `TMP_SIZE=${shq(opts.tmpfsSize)}`,
      // The guest mounts its own tmpfs on /tmp; a working directory inside the host's /tmp (a
      // clone made there, say) is carried over onto it.
      `KEEP_IN_TMP=${shq(/^\/tmp\/[^/]+/.exec(opts.cwd)?.[0] ?? '')}`,
      `SHM_SIZE='50%'`,
      `DUMP_AFTER=${dumpAfter}`,
      // The guest powers itself off after the time limit even if nobody is left to kill QEMU.
      `POWEROFF_AFTER=${Math.ceil(opts.timeoutSec) + 10}`,
      '',
    ].join('\n'),
  );
  const envArgs = Object.entries(opts.env).map(([k, v]) => shq(`${k}=${v}`));
  writeFileSync(
    join(runDir, 'job.sh'),
    [
      `cd ${shq(opts.cwd)} 2>/dev/null || { echo ${shq(`ublk-vm: cannot enter ${opts.cwd} in the guest`)} >&2; exit 126; }`,
      `exec /usr/bin/env -i ${envArgs.join(' ')} ${opts.argv.map(shq).join(' ')}`,
      '',
    ].join('\n'),
  );

  const channels = ['console', 'stdout', 'stderr'] as const;
  const servers = new Map<string, Server>();
  const sockets = new Map<string, Promise<Socket>>();
  for (const ch of channels) {
    const server = createServer();
    const path = join(runDir, `${ch}.sock`);
    server.listen(path);
    await once(server, 'listening');
    servers.set(ch, server);
    sockets.set(
      ch,
      new Promise<Socket>((resolve) => server.once('connection', (s: Socket) => resolve(s))),
    );
  }

  const cmdline = [
    'console=ttyS0,115200',
    `loglevel=${opts.verbose ? 7 : 4}`,
    'panic=-1',
    'mitigations=off',
    'random.trust_cpu=on',
    // Under TCG the TSC follows the host clock on every vCPU; without this the kernel calls it
    // unsynchronised and falls back to the (emulated, slow) HPET.
    'tsc=reliable',
    // Debian zeroes every page on allocation: costly under emulation, and pointless here.
    'init_on_alloc=0',
    `ublkvm.run=${runDir}`,
  ].join(' ');
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-machine',
    'pc',
    '-accel',
    opts.accel,
    '-cpu',
    'max',
    '-smp',
    String(opts.cpus),
    '-m',
    opts.memory,
    '-kernel',
    assets.kernelImage,
    '-initrd',
    assets.initramfs,
    '-append',
    cmdline,
    '-fsdev',
    'local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device',
    'virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot',
    ...channels.flatMap((ch) => [
      '-chardev',
      `socket,id=${ch},path=${join(runDir, `${ch}.sock`)}`,
      '-serial',
      `chardev:${ch}`,
    ]),
  ];

  const started = Date.now();
  const qemu = spawn(assets.qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // Whatever ends this process (an exception, a closed stdout...) ends the VM too.
  const killOnExit = () => qemu.kill('SIGKILL');
  process.on('exit', killOnExit);
  const qemuOut: string[] = [];
  for (const s of [qemu.stdout, qemu.stderr]) {
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      qemuOut.push(d);
      process.stderr.write(d.replace(/^(?=.)/gm, 'qemu: '));
    });
  }
  const exited = new Promise<number | null>((resolve) => {
    qemu.once('exit', (code) => resolve(code));
    qemu.once('error', (e) => {
      qemuOut.push(String(e));
      resolve(null);
    });
  });

  const state = {
    ready: undefined as number | undefined,
    exitStatus: undefined as number | undefined,
    fatal: undefined as string | undefined,
    failure: undefined as string | undefined,
    timedOut: false,
  };
  const kill = (why: string, timedOut: boolean) => {
    if (state.exitStatus !== undefined || state.failure) return;
    state.failure = why;
    state.timedOut = timedOut;
    qemu.kill('SIGKILL');
  };
  const bootTimer = setTimeout(() => {
    if (state.ready === undefined) {
      kill(
        `the guest did not start the command within ${opts.bootTimeoutSec} s (UBLK_VM_BOOT_TIMEOUT)`,
        true,
      );
    }
  }, opts.bootTimeoutSec * 1000);
  const kernelLog = createWriteStream(join(runDir, 'kernel.log'));
  const tail: string[] = [];
  let reports = 0;
  let showUntil = 0;
  let dumping = false;
  let shownLive = 0;
  const showKernel = (line: string) => {
    shownLive++;
    process.stderr.write(`[guest kernel] ${line}\n`);
  };
  const onKernelLine = (raw: string) => {
    const line = raw.replace(/\r/g, '');
    kernelLog.write(line + '\n');
    tail.push(line);
    if (tail.length > 300) tail.shift();
    let m: RegExpExecArray | null;
    if (line.includes('@@ublk-vm:ready@@')) {
      state.ready ??= Date.now() - started;
      clearTimeout(bootTimer);
      return;
    }
    if ((m = /@@ublk-vm:exit=(\d+)@@/.exec(line))) {
      if (state.exitStatus === undefined) {
        state.exitStatus = Number(m[1]);
        // The guest powers itself off now; do not wait long for it.
        setTimeout(() => qemu.kill('SIGKILL'), 15000).unref();
      }
      return;
    }
    if ((m = /@@ublk-vm:fatal (.*)@@/.exec(line))) {
      state.fatal ??= m[1];
      return;
    }
    if (line.includes('@@ublk-vm:dump@@')) {
      dumping = true;
      process.stderr.write(
        'ublk-vm: the run is about to time out; the guest dumps blocked tasks:\n',
      );
      return;
    }
    if (opts.verbose) return showKernel(line);
    if (state.ready === undefined) return;
    const now = Date.now();
    if (REPORT_START.test(line)) {
      reports++;
      showUntil = now + REPORT_WINDOW_MS;
    }
    if (dumping || now < showUntil || FROM_UBLK.test(line)) showKernel(line);
  };

  void sockets.get('console')!.then((s) => lineReader(s, onKernelLine));
  void sockets.get('stdout')!.then((s) => {
    if (opts.onStdoutLine) {
      const cb = opts.onStdoutLine;
      lineReader(s, (line) => {
        if (cb(line)) process.stdout.write(line + '\n');
      });
    } else {
      s.on('data', (d: Buffer) => process.stdout.write(d));
    }
  });
  void sockets.get('stderr')!.then((s) => s.on('data', (d: Buffer) => process.stderr.write(d)));

  const runTimer = setTimeout(
    () =>
      kill(
        `the guest did not finish within ${opts.timeoutSec} s (UBLK_VM_TIMEOUT); killed it`,
        true,
      ),
    opts.timeoutSec * 1000,
  );
  const onSignal = (sig: NodeJS.Signals) => {
    qemu.kill('SIGKILL');
    rmSync(runDir, { recursive: true, force: true });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const code = await exited;
  clearTimeout(bootTimer);
  clearTimeout(runTimer);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  process.off('exit', killOnExit);
  // Drain what the channels still carry, then close everything.
  await Promise.race([
    Promise.all(
      [...sockets.values()].map((p) =>
        p.then((s) => (s.readableEnded || s.destroyed ? undefined : once(s, 'close'))),
      ),
    ),
    new Promise((r) => setTimeout(r, 2000)),
  ]);
  for (const server of servers.values()) server.close();
  for (const p of sockets.values()) void p.then((s) => s.destroy());
  kernelLog.end();
  await once(kernelLog, 'close');

  if (opts.verbose) {
    const t = (ms: number | undefined) => (ms === undefined ? '-' : `${(ms / 1000).toFixed(1)} s`);
    log(`QEMU start -> command start ${t(state.ready)}, -> QEMU exit ${t(Date.now() - started)}`);
  }
  const result: VmRunResult = {
    status: 0,
    timedOut: state.timedOut,
    readyMs: state.ready,
    kernelReports: reports,
  };
  if (state.exitStatus !== undefined && !state.failure) {
    result.status = state.exitStatus;
  } else {
    result.status = state.timedOut ? 124 : 125;
    result.failure =
      state.failure ??
      (state.fatal
        ? `the guest's init failed: ${state.fatal}`
        : code === null
          ? `QEMU did not start: ${qemuOut.join('').trim().split('\n').pop()}`
          : `the guest stopped without reporting an exit status (QEMU exit ${code}; kernel panic?)`);
  }
  const abnormal = result.failure !== undefined || reports > 0;
  if (abnormal) result.kernelLog = keepLog(join(runDir, 'kernel.log'));
  if (opts.kernelLogPath) {
    mkdirSync(dirname(opts.kernelLogPath), { recursive: true });
    copyFileSync(join(runDir, 'kernel.log'), opts.kernelLogPath);
  }
  if (result.failure && !opts.verbose && shownLive === 0) {
    process.stderr.write(`ublk-vm: last lines of the guest's kernel console:\n`);
    const lines = tail.filter((l) => !l.startsWith('@@ublk-vm:')).slice(-40);
    for (const line of lines) process.stderr.write(`  | ${line}\n`);
  }
  return result;
}

/** Splits a stream into lines (\r dropped); the last partial line comes at the end. */
function lineReader(s: Socket, onLine: (line: string) => void): void {
  let pending = '';
  s.setEncoding('utf8');
  s.on('data', (d: string) => {
    pending += d;
    let i: number;
    while ((i = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, i).replace(/\r$/, ''));
      pending = pending.slice(i + 1);
    }
  });
  s.on('end', () => {
    if (pending) onLine(pending);
    pending = '';
  });
}

/** Keeps a kernel log in .cache/vm/logs (the 20 newest). */
function keepLog(path: string): string | undefined {
  try {
    const dir = join(cacheRoot(), 'logs');
    mkdirSync(dir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const dest = join(dir, `kernel-${stamp}-${process.pid}.log`);
    copyFileSync(path, dest);
    const logs = readdirSync(dir)
      .filter((n) => n.startsWith('kernel-'))
      .sort();
    for (const old of logs.slice(0, -20)) rmSync(join(dir, old), { force: true });
    log(`guest kernel log kept in ${dest}`);
    return dest;
  } catch {
    return undefined;
  }
}

/** Environment variables of the caller that the command in the guest gets too. */
const PASS_ENV = [
  'CI',
  'TERM',
  'LANG',
  'LANGUAGE',
  'LC_ALL',
  'LC_CTYPE',
  'TZ',
  'NO_COLOR',
  'FORCE_COLOR',
  'NODE_OPTIONS',
  'NODE_DEBUG',
  'DEBUG',
  'GITHUB_ACTIONS',
];

/**
 * The command's environment in the guest: a clean root environment (HOME=/root), the caller's
 * PATH (the host's programs are at the same paths in the guest) plus the sbin folders, the
 * variables of PASS_ENV, every UBLK_* variable, those named in UBLK_VM_ENV, and UBLK_VM=1.
 */
export function guestEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  const names = new Set([
    ...PASS_ENV,
    ...Object.keys(process.env).filter((k) => k.startsWith('UBLK_')),
    ...(process.env.UBLK_VM_ENV ?? '').split(/[\s,]+/).filter(Boolean),
  ]);
  for (const k of names) {
    const v = process.env[k];
    if (v !== undefined) env[k] = v;
  }
  const path = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const d of [
    dirname(process.execPath),
    '/usr/local/sbin',
    '/usr/local/bin',
    '/usr/sbin',
    '/usr/bin',
    '/sbin',
    '/bin',
  ]) {
    if (!path.includes(d)) path.push(d);
  }
  env.PATH = path.join(':');
  env.HOME = '/root';
  env.USER = 'root';
  env.LOGNAME = 'root';
  env.TERM ??= 'dumb';
  // The command writes to pipes; keep colours when the caller sees a terminal.
  if (process.stdout.isTTY && env.NO_COLOR === undefined && env.FORCE_COLOR === undefined) {
    env.FORCE_COLOR = '1';
  }
  env.UBLK_VM = '1';
  return env;
}

/** The VM settings from the environment (see docs/test-vm.md: UBLK_VM_*). */
export function vmSettingsFromEnv(): Omit<VmRunOptions, 'argv' | 'cwd' | 'env' | 'onStdoutLine'> {
  const memory = process.env.UBLK_VM_MEM || '6G';
  if (!/^\d+[MG]?$/.test(memory))
    throw new UserError(`UBLK_VM_MEM=${memory}: want e.g. 6G or 4096M`);
  const tmpfsSize = process.env.UBLK_VM_TMPFS_SIZE || '75%';
  if (!/^\d+[kmgKMG%]?$/.test(tmpfsSize)) {
    throw new UserError(`UBLK_VM_TMPFS_SIZE=${tmpfsSize}: want e.g. 75% or 4G`);
  }
  return {
    timeoutSec: envNumber('UBLK_VM_TIMEOUT', 3300),
    bootTimeoutSec: envNumber('UBLK_VM_BOOT_TIMEOUT', 300),
    memory,
    cpus: Math.floor(envNumber('UBLK_VM_CPUS', 2)),
    accel: process.env.UBLK_VM_ACCEL || 'tcg',
    tmpfsSize,
    verbose: verbose(),
    kernelLogPath: process.env.UBLK_VM_KERNEL_LOG || undefined,
  };
}
