/**
 * `npm run vm -- <command...>`: runs a command as root in a QEMU VM that boots a Debian kernel
 * (the host's 6.1 by default; UBLK_VM_KERNEL=6.12|7.3 for a newer suite's) with ublk_drv loaded, sees the host's files read-only under a tmpfs
 * overlay, and starts in the caller's working directory. The command's output streams live; its
 * exit status becomes ours. See scripts/lib/vm-run.ts for the plumbing and docs/test-vm.md for
 * the knobs.
 */
import { existsSync, statSync } from 'node:fs';
import { log, UserError } from './lib/common.js';
import { prepareVm } from './lib/vm-prepare.js';
import { guestEnv, runInVm, vmSettingsFromEnv } from './lib/vm-run.js';

const USAGE = `usage: npm run vm -- <command> [args...]
Runs <command> as root in the test VM (the host's files, read-only under a tmpfs overlay, in the
current directory). No shell is involved: use  npm run vm -- sh -c '...'  for pipes and such.
Environment: UBLK_VM_KERNEL (6.1, the default; 6.12, 7.3, or a full Debian version of
linux-image-amd64), UBLK_VM_TIMEOUT (s, default 3300), UBLK_VM_BOOT_TIMEOUT (s, 300), UBLK_VM_MEM (6G),
UBLK_VM_CPUS (2), UBLK_VM_TMPFS_SIZE (75%), UBLK_VM_ACCEL (tcg), UBLK_VM_ENV (more variables to
pass), UBLK_VM_KERNEL_LOG (save the kernel console there), UBLK_VM_VERBOSE=1 (show it live).`;

/** npm runs scripts in the package root; the caller's own directory is in INIT_CWD. */
function callerCwd(): string {
  const init = process.env.INIT_CWD;
  if (
    process.env.npm_lifecycle_event === 'vm' &&
    init &&
    existsSync(init) &&
    statSync(init).isDirectory()
  ) {
    return init;
  }
  return process.cwd();
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--') argv.shift();
  if (argv.length === 0 || argv[0] === '-h' || argv[0] === '--help') {
    process.stderr.write(USAGE + '\n');
    return argv.length === 0 ? 2 : 0;
  }
  const settings = vmSettingsFromEnv();
  const assets = await prepareVm();
  const result = await runInVm(assets, { ...settings, argv, cwd: callerCwd(), env: guestEnv() });
  if (result.failure) log(result.failure);
  else if (result.kernelReports > 0) {
    log(
      `the guest kernel reported ${result.kernelReports} problem(s) (shown above as [guest kernel])`,
    );
  }
  return result.status;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UserError) {
      log(e.message);
      process.exit(125); // the VM's own failure, told apart from the command's exit status
    }
    throw e;
  },
);
