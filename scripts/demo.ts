/**
 * `npm start`: the quick start (scripts/demo.sh) on this machine when its kernel has ublk and we
 * are root, otherwise in the test VM.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './lib/common.js';

const demo = join(REPO_ROOT, 'scripts/demo.sh');
const native = existsSync('/dev/ublk-control') && process.getuid?.() === 0;
console.log(
  native ? 'ublk on this host: running natively' : 'no ublk here: running in the test VM',
);
const r = native
  ? spawnSync('bash', [demo], { stdio: 'inherit' })
  : spawnSync(process.execPath, [join(REPO_ROOT, 'dist/scripts/vm.js'), 'bash', demo], {
      stdio: 'inherit',
      cwd: REPO_ROOT,
    });
process.exitCode = r.status ?? 1;
