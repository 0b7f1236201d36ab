/**
 * `npm run bench [-- --quick] [-- --peer PATH] [-- --kernel 6.1,7.3] [-- --no-docs]`: fio
 * against kernel baselines, the kernel's own C server (kublk, where the kernel's source has it
 * and the kernel runs it) and our targets, in one VM session per kernel (or on the host when it
 * has ublk), with each of our numbers as a ratio to its kernel baseline and to the C server in
 * the same mode from the same run. Writes the run to bench-results/<stamp>.json and .md and
 * regenerates docs/performance-results.md and docs/performance.svg from it (bench/report.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { loadavg, release } from 'node:os';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from '../scripts/lib/common.js';
import { prepareVm } from '../scripts/lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from '../scripts/lib/vm-run.js';
import { buildKublk } from './kublk.js';
import { gitCommit, writeRun } from './report.js';
import { formatTable, type BenchReport } from './workloads.js';

const MARKER = '@@bench-report@@ ';
const args = process.argv.slice(2).filter((a) => a !== '--');
/** --no-docs: keep docs/performance-results.md and the chart as they are (a partial or A/B run). */
const docs = !args.includes('--no-docs');
if (!docs) args.splice(args.indexOf('--no-docs'), 1);
// `npm run bench --quick` hands --quick to npm, which passes it on as npm_config_quick.
if (process.env.npm_config_quick && !args.includes('--quick')) args.push('--quick');
if (process.env.npm_config_peer && !args.includes('--peer')) {
  args.push('--peer', process.env.npm_config_peer);
}
const kernelAt = args.indexOf('--kernel');
const kernels = kernelAt >= 0 ? args.splice(kernelAt, 2)[1].split(',') : ['6.1', '7.3'];
const guestArgv = (kver: string, kernelsAfter = 0) => {
  const c = buildKublk(kver);
  if ('missing' in c) console.error(`bench: no C server on Linux ${kver}: ${c.missing}`);
  const kublk = 'path' in c ? ['--kublk', c.path] : [];
  const after = ['--kernels-after', String(kernelsAfter)];
  return [process.execPath, join(REPO_ROOT, 'dist/bench/guest.js'), ...args, ...kublk, ...after];
};

let report: BenchReport | undefined;
function onLine(line: string): boolean {
  if (!line.startsWith(MARKER)) return true;
  report = JSON.parse(line.slice(MARKER.length)) as BenchReport;
  return false;
}

async function runHere(): Promise<number> {
  const [node, ...rest] = guestArgv(release());
  const child = spawn(node, rest, { stdio: ['ignore', 'pipe', 'inherit'] });
  for await (const line of createInterface({ input: child.stdout })) {
    if (onLine(line)) console.log(line);
  }
  return new Promise((resolve) => child.once('exit', (code) => resolve(code ?? 1)));
}

/** One kernel's run: in the VM, or here when this host has ublk. */
async function runOn(kernel: string | undefined, kernelsAfter: number): Promise<number> {
  if (kernel === undefined) return runHere();
  const assets = await prepareVm(kernel);
  const result = await runInVm(assets, {
    ...vmSettingsFromEnv(),
    argv: guestArgv(assets.kver, kernelsAfter),
    cwd: REPO_ROOT,
    env: guestEnv(),
    onStdoutLine: onLine,
  });
  if (result.failure) console.error(`bench: ${result.failure}`);
  return result.status;
}

async function main(): Promise<number> {
  // The code that runs is the checkout as it is now, whatever is committed while it runs.
  const commit = gitCommit(REPO_ROOT);
  const loadAtStart = loadavg()[0];
  const onHost = existsSync('/dev/ublk-control') && process.getuid?.() === 0;
  const reports: BenchReport[] = [];
  let status = 0;
  const list = onHost ? [undefined] : kernels;
  for (const [i, kernel] of list.entries()) {
    report = undefined;
    const started = Date.now();
    console.error(`bench: Linux ${kernel ?? release()} (kernel ${i + 1} of ${list.length})`);
    const s = await runOn(kernel, list.length - i - 1);
    console.error(
      `bench: Linux ${kernel ?? release()} took ${((Date.now() - started) / 60000).toFixed(1)} min`,
    );
    if (!report) {
      console.error(`bench: no report came back from Linux ${kernel ?? release()}`);
      status ||= s || 1;
      continue;
    }
    status ||= s;
    reports.push(report);
  }
  if (reports.length === 0) return status || 1;
  console.log(reports.map(formatTable).join('\n'));
  for (const f of writeRun(REPO_ROOT, reports, {
    commit,
    docs,
    hostLoad: [loadAtStart, loadavg()[0]],
  }))
    console.log(`bench: wrote ${relative(REPO_ROOT, f)}`);
  return status;
}

process.exitCode = await main();
