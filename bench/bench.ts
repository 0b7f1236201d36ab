/**
 * `npm run bench [-- --quick] [-- --peer PATH]`: fio against kernel baselines and our targets,
 * in one VM session (or on the host when it has ublk), with each of our numbers as a ratio to
 * its kernel baseline from the same run. Writes JSON and markdown to bench-results/.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from '../scripts/lib/common.js';
import { prepareVm } from '../scripts/lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from '../scripts/lib/vm-run.js';
import { formatTable, type BenchReport } from './workloads.js';

const MARKER = '@@bench-report@@ ';
const args = process.argv.slice(2).filter((a) => a !== '--');
// `npm run bench --quick` hands --quick to npm, which passes it on as npm_config_quick.
if (process.env.npm_config_quick && !args.includes('--quick')) args.push('--quick');
if (process.env.npm_config_peer && !args.includes('--peer')) {
  args.push('--peer', process.env.npm_config_peer);
}
const guestArgv = [process.execPath, join(REPO_ROOT, 'dist/bench/guest.js'), ...args];

let report: BenchReport | undefined;
function onLine(line: string): boolean {
  if (!line.startsWith(MARKER)) return true;
  report = JSON.parse(line.slice(MARKER.length)) as BenchReport;
  return false;
}

async function runHere(): Promise<number> {
  const child = spawn(guestArgv[0], guestArgv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  for await (const line of createInterface({ input: child.stdout })) {
    if (onLine(line)) console.log(line);
  }
  return new Promise((resolve) => child.once('exit', (code) => resolve(code ?? 1)));
}

async function main(): Promise<number> {
  const onHost = existsSync('/dev/ublk-control') && process.getuid?.() === 0;
  let status: number;
  if (onHost) {
    status = await runHere();
  } else {
    const assets = await prepareVm();
    const result = await runInVm(assets, {
      ...vmSettingsFromEnv(),
      argv: guestArgv,
      cwd: REPO_ROOT,
      env: guestEnv(),
      onStdoutLine: onLine,
    });
    if (result.failure) console.error(`bench: ${result.failure}`);
    status = result.status;
  }
  if (!report) {
    console.error('bench: no report came back');
    return status || 1;
  }
  const table = formatTable(report);
  console.log(table);
  const dir = join(REPO_ROOT, 'bench-results');
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  writeFileSync(join(dir, `${stamp}.json`), JSON.stringify(report, null, 2) + '\n');
  writeFileSync(join(dir, `${stamp}.md`), table);
  console.log(`bench: wrote bench-results/${stamp}.json and .md`);
  return status;
}

process.exitCode = await main();
