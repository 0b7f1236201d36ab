/**
 * `npm run test:kernel`: the kernel tests (dist/test/kernel/, compiled from test/kernel/) against a
 * real ublk driver. On the host when it has one (root, and /dev/ublk-control or a working
 * `modprobe ublk_drv`), otherwise in the test VM (scripts/lib/vm-run.ts), once per kernel: the
 * floor and the newest (6.1 and 7.3), or those named by `--kernel 6.12[,7.3]`. Ends with a line
 * per kernel and the total:
 *
 *   kernel (6.1.0-50-amd64): 63 passed, 0 failed
 *   kernel (7.3.4+deb13-amd64): 63 passed, 0 failed
 *   kernel: 126 passed, 0 failed
 *
 * and fails, with a one-line reason, when the suite cannot run, when no test ran, when any test
 * failed, and when any test was skipped or todo: a skipped kernel test is a defect, not a pass.
 *
 * The tests run under `node --test` with two reporters on its stdout: spec, for people, and
 * lib/kernel-reporter.js, whose prefixed JSON lines (first test started; totals) we pick out of
 * the stream, whether it comes from a child process here or from the VM's console.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isRoot, REPO_ROOT, run, seconds, UserError, which } from './lib/common.js';
import { REPORTER_PREFIX, type SuiteSummary } from './lib/kernel-reporter.js';
import { prepareVm, type VmAssets } from './lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from './lib/vm-run.js';

const TEST_DIR = 'dist/test/kernel/';

/** Test files or folders to run: UBLK_KERNEL_TESTS (space-separated) or all of TEST_DIR. */
function testPaths(): string[] {
  const chosen = (process.env.UBLK_KERNEL_TESTS ?? '').split(/\s+/).filter(Boolean);
  return chosen.length ? chosen : [TEST_DIR];
}

/** The test runner's command line (run in REPO_ROOT). */
function nodeTestArgv(): string[] {
  const reporter = fileURLToPath(new URL('./lib/kernel-reporter.js', import.meta.url));
  return [
    process.execPath,
    '--test',
    // Kernel tests share one kernel (device ids, null_blk, loop): one file at a time.
    '--test-concurrency=1',
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
    `--test-reporter=${reporter}`,
    '--test-reporter-destination=stdout',
    ...testPaths(),
  ];
}

/** Picks the reporter's lines out of the runner's output; everything else is for people. */
class ReporterTap {
  firstTestAt?: number;
  summary?: SuiteSummary;

  /** Returns the part of the line to show (undefined: nothing). */
  line(line: string): string | undefined {
    const at = line.indexOf(REPORTER_PREFIX);
    if (at < 0) return line;
    try {
      const ev = JSON.parse(line.slice(at + REPORTER_PREFIX.length)) as { event: string };
      if (ev.event === 'first-test') this.firstTestAt ??= Date.now();
      if (ev.event === 'summary') this.summary = ev as unknown as SuiteSummary;
    } catch {
      return line; // not ours after all
    }
    return at > 0 ? line.slice(0, at) : undefined;
  }
}

// ---------------------------------------------------------------------------------------------

type Where = { where: 'host' | 'VM'; why: string };

function decideWhere(): Where {
  const forced = (process.env.UBLK_KERNEL_SUITE_MODE ?? 'auto').toLowerCase();
  if (forced === 'vm') return { where: 'VM', why: 'UBLK_KERNEL_SUITE_MODE=vm' };
  if (forced === 'host') return { where: 'host', why: 'UBLK_KERNEL_SUITE_MODE=host' };
  if (forced !== 'auto') {
    throw new UserError(`UBLK_KERNEL_SUITE_MODE=${forced}: want auto, host or vm`);
  }
  if (!isRoot()) {
    return { where: 'VM', why: 'not root on the host; the kernel tests need CAP_SYS_ADMIN' };
  }
  if (existsSync('/dev/ublk-control'))
    return { where: 'host', why: 'the host has /dev/ublk-control' };
  if (
    which('modprobe') &&
    run('modprobe', ['ublk_drv']).status === 0 &&
    existsSync('/dev/ublk-control')
  ) {
    return { where: 'host', why: 'modprobe ublk_drv worked on the host' };
  }
  return { where: 'VM', why: `the host kernel (${release()}) has no ublk driver` };
}

interface Outcome {
  exitCode: number;
  tap: ReporterTap;
  /** Why the suite could not run to the end (VM failure...). */
  problem?: string;
}

async function runOnHost(): Promise<Outcome> {
  const tap = new ReporterTap();
  const [cmd, ...args] = nodeTestArgv();
  const child = spawn(cmd, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  let pending = '';
  const out = (l: string | undefined) => l !== undefined && process.stdout.write(l + '\n');
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    pending += d;
    let i: number;
    while ((i = pending.indexOf('\n')) >= 0) {
      out(tap.line(pending.slice(0, i)));
      pending = pending.slice(i + 1);
    }
  });
  const exitCode = await new Promise<number>((resolve) => {
    child.once('error', () => resolve(127));
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
  if (pending) out(tap.line(pending));
  return { exitCode, tap };
}

function verdict(o: Outcome): string | undefined {
  const s = o.tap.summary;
  if (o.problem) return o.problem;
  if (!s || !s.complete) return `the test runner ended without its totals (exit ${o.exitCode})`;
  const names = (list: string[]) => (list.length ? `: ${list.slice(0, 10).join(', ')}` : '');
  if (s.tests === 0) return `zero kernel tests ran (in ${testPaths().join(' ')})`;
  if (s.fail + s.cancelled > 0) {
    return `${s.fail + s.cancelled} kernel test(s) failed or were cancelled${names(s.failedNames)}`;
  }
  if (s.skipped > 0) {
    return `${s.skipped} kernel test(s) skipped; a skipped kernel test is a defect${names(s.skippedNames)}`;
  }
  if (s.todo > 0)
    return `${s.todo} kernel test(s) marked todo; not allowed here${names(s.todoNames)}`;
  if (s.pass === 0) return 'no kernel test passed';
  if (o.exitCode !== 0) return `the test runner exited with ${o.exitCode}`;
  return undefined;
}

/** `kernel (6.1.0-50-amd64): N passed, N failed` for one kernel's run. */
function countsLine(label: string, o: Outcome): string {
  const s = o.tap.summary;
  const skipped = count(s?.skipped) + count(s?.todo);
  return (
    `${label}: ${count(s?.pass)} passed, ${count(s?.fail) + count(s?.cancelled)} failed` +
    (skipped ? `, ${skipped} skipped` : '')
  );
}

function count(v: number | null | undefined): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/**
 * The kernels to run on: `--kernel K[,K...]` (repeatable), else the floor and the newest kernel
 * that Debian ships (6.1 from bookworm, 7.3 from trixie-backports). Each is what UBLK_VM_KERNEL
 * takes (scripts/lib/vm-prepare.ts).
 */
const DEFAULT_KERNELS = ['6.1', '7.3'];

function kernelsFromArgs(argv: readonly string[]): string[] | undefined {
  const chosen: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = a === '--kernel' ? argv[++i] : a.startsWith('--kernel=') ? a.slice(9) : null;
    if (value === null) throw new UserError(`unknown argument ${a}: want --kernel VERSION`);
    if (!value) throw new UserError('--kernel needs a version (6.1, 6.12, 7.3...)');
    chosen.push(...value.split(',').filter(Boolean));
  }
  return chosen.length ? chosen : undefined;
}

interface KernelRun {
  label: string;
  outcome: Outcome;
  timing: string[];
}

/**
 * One kernel's suite in its own VM. `prefix` starts each line it prints, so that two kernels'
 * output running side by side can be told apart.
 */
async function runInTestVm(
  assets: VmAssets,
  preparation: string,
  prefix: string,
): Promise<KernelRun> {
  const t0 = Date.now();
  const settings = vmSettingsFromEnv();
  const timing = [preparation];
  console.log(
    `kernel suite: VM: Linux ${assets.kver}, qemu -accel ${settings.accel}, ` +
      `${settings.cpus} vCPUs, ${settings.memory}, time limit ${settings.timeoutSec} s`,
  );
  const tap = new ReporterTap();
  const vmStart = Date.now();
  const vm = await runInVm(assets, {
    ...settings,
    argv: nodeTestArgv(),
    cwd: REPO_ROOT,
    env: guestEnv(),
    onStdoutLine: (line) => {
      const show = tap.line(line);
      if (show !== undefined) process.stdout.write(prefix + show + '\n');
      return false;
    },
  });
  const first = tap.firstTestAt;
  timing.push(
    `VM boot-to-first-test ${first ? seconds(first - vmStart) + ' s' : '-'}`,
    `VM boot-to-command ${vm.readyMs !== undefined ? seconds(vm.readyMs) + ' s' : '-'}`,
  );
  if (vm.kernelReports > 0) {
    console.log(
      `kernel suite: the guest kernel reported ${vm.kernelReports} problem(s) (above, as ` +
        `[guest kernel]); log: ${vm.kernelLog ?? '-'}`,
    );
  }
  timing.push(`total ${seconds(Date.now() - t0)} s`);
  const outcome = { exitCode: vm.status, tap, problem: vm.failure };
  return { label: `kernel (${tap.summary?.kernel ?? assets.kver})`, outcome, timing };
}

async function runOnTheHost(why: string): Promise<KernelRun> {
  const t0 = Date.now();
  console.log(`kernel suite: running on the host, Linux ${release()} (${why})`);
  const outcome = await runOnHost();
  const first = outcome.tap.firstTestAt;
  const timing = [
    `first test after ${first ? seconds(first - t0) + ' s' : '-'}`,
    `total ${seconds(Date.now() - t0)} s`,
  ];
  return { label: `kernel (${release()})`, outcome, timing };
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const requested = kernelsFromArgs(process.argv.slice(2));
  for (const p of testPaths()) {
    if (!existsSync(join(REPO_ROOT, p))) {
      throw new UserError(`${p} does not exist: compile first (npx tsc -p .)`);
    }
  }
  // A host with ublk runs the suite on its own kernel, unless kernels were asked for by name.
  const where = requested ? { where: 'VM', why: '--kernel' } : decideWhere();
  const runs: KernelRun[] = [];
  if (where.where === 'host') {
    runs.push(await runOnTheHost(where.why));
  } else {
    const kernels = requested ?? DEFAULT_KERNELS;
    console.log(`kernel suite: in the test VM on ${kernels.join(' and ')} (${where.why})`);
    // Prepared one after another (the preparations share the cache's downloads), then run side by
    // side: a guest running the suite keeps about 1.2 of the host's 2 cores busy (its tests run
    // one process at a time, mostly), so the second kernel's suite fits in the idle time.
    const prepared: { assets: VmAssets; preparation: string }[] = [];
    for (const k of kernels) {
      const assets = await prepareVm(k);
      const cold = assets.built ? ' (cold cache)' : '';
      prepared.push({ assets, preparation: `preparation ${seconds(assets.elapsedMs)} s${cold}` });
    }
    const side = prepared.length > 1;
    runs.push(
      ...(await Promise.all(
        prepared.map((p, i) =>
          runInTestVm(p.assets, p.preparation, side ? `[${kernels[i]}] ` : ''),
        ),
      )),
    );
  }
  let failed = false;
  for (const r of runs) {
    console.log(`kernel suite: ${r.label}: ${r.timing.join(', ')}`);
    const why = verdict(r.outcome);
    if (why) console.log(`kernel suite FAILED on ${r.label}: ${why}`);
    failed ||= why !== undefined;
    console.log(countsLine(r.label, r.outcome));
  }
  const total = (pick: (s: SuiteSummary) => number) =>
    runs.reduce((n, r) => n + (r.outcome.tap.summary ? count(pick(r.outcome.tap.summary)) : 0), 0);
  const skipped = total((s) => s.skipped + s.todo);
  console.log(`kernel suite: ${runs.length} kernel(s), ${seconds(Date.now() - t0)} s in all`);
  console.log(
    `kernel: ${total((s) => s.pass)} passed, ${total((s) => s.fail + s.cancelled)} failed` +
      (skipped ? `, ${skipped} skipped` : ''),
  );
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    const message = e instanceof Error ? e.message : String(e);
    const [first, ...rest] = message.split('\n');
    console.log(`kernel suite FAILED: cannot run the kernel suite: ${first}`);
    if (rest.length) console.log(rest.join('\n'));
    if (!(e instanceof UserError) && e instanceof Error && e.stack) console.error(e.stack);
    process.exit(1);
  },
);
