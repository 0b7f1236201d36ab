/**
 * `npm run bench [-- --quick] [-- --peer PATH] [-- --kernel 6.1,7.3]`: fio against kernel
 * baselines, the kernel's own C server (kublk, where the kernel's source has it and the kernel
 * runs it) and our targets, in one VM session per kernel (or on the host when it has ublk), with
 * each of our numbers as a ratio to its kernel baseline and to the C server in the same mode from
 * the same run. Writes JSON and markdown to bench-results/.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from '../scripts/lib/common.js';
import { prepareVm } from '../scripts/lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from '../scripts/lib/vm-run.js';
import { buildKublk } from './kublk.js';
import { formatTable, type BenchReport } from './workloads.js';

const MARKER = '@@bench-report@@ ';
const args = process.argv.slice(2).filter((a) => a !== '--');
// `npm run bench --quick` hands --quick to npm, which passes it on as npm_config_quick.
if (process.env.npm_config_quick && !args.includes('--quick')) args.push('--quick');
if (process.env.npm_config_peer && !args.includes('--peer')) {
  args.push('--peer', process.env.npm_config_peer);
}
const kernelAt = args.indexOf('--kernel');
const kernels = kernelAt >= 0 ? args.splice(kernelAt, 2)[1].split(',') : ['6.1', '7.3'];
const guestArgv = (kver: string) => {
  const c = buildKublk(kver);
  if ('missing' in c) console.error(`bench: no C server on Linux ${kver}: ${c.missing}`);
  const kublk = 'path' in c ? ['--kublk', c.path] : [];
  return [process.execPath, join(REPO_ROOT, 'dist/bench/guest.js'), ...args, ...kublk];
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
async function runOn(kernel: string | undefined): Promise<number> {
  if (kernel === undefined) return runHere();
  const assets = await prepareVm(kernel);
  const result = await runInVm(assets, {
    ...vmSettingsFromEnv(),
    argv: guestArgv(assets.kver),
    cwd: REPO_ROOT,
    env: guestEnv(),
    onStdoutLine: onLine,
  });
  if (result.failure) console.error(`bench: ${result.failure}`);
  return result.status;
}

async function main(): Promise<number> {
  const onHost = existsSync('/dev/ublk-control') && process.getuid?.() === 0;
  const reports: BenchReport[] = [];
  let status = 0;
  for (const kernel of onHost ? [undefined] : kernels) {
    report = undefined;
    const s = await runOn(kernel);
    if (!report) {
      console.error(`bench: no report came back from Linux ${kernel ?? release()}`);
      status ||= s || 1;
      continue;
    }
    status ||= s;
    reports.push(report);
  }
  if (reports.length === 0) return status || 1;
  const tables = reports.map(formatTable).join('\n');
  console.log(tables);
  const dir = join(REPO_ROOT, 'bench-results');
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  writeFileSync(join(dir, `${stamp}.json`), JSON.stringify(reports, null, 2) + '\n');
  writeFileSync(join(dir, `${stamp}.md`), tables);
  console.log(`bench: wrote bench-results/${stamp}.json and .md`);
  return status;
}

process.exitCode = await main();
