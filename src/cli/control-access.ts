/**
 * Whether this host can run a ublk control command, said before the kernel is asked: on a host
 * without ublk, or as a user who may not, the one-line error says what to do about it.
 */
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { release as osRelease } from 'node:os';
import { UserError } from '../errors.js';
import { CONTROL_PATH } from '../ublk/control/control.js';

/** Where ublk_drv stands on this kernel, when there is no control node. */
type UblkDriver = 'loaded' | 'built-in' | 'module' | 'none';

export interface ControlAccess {
  controlExists: boolean;
  /** Root, or read-write access to the control node (an unprivileged device's owner). */
  mayControl: boolean;
  driver: UblkDriver;
  /** `uname -r`. */
  release: string;
  /** Run from a checkout of this repository, where `npm run vm` exists. */
  checkout: boolean;
}

/** The package's root: this module is dist/src/cli/control-access.js or its bundle's mirror. */
const PACKAGE_ROOT = new URL('../../../', import.meta.url);

function hasModule(list: string): boolean {
  try {
    return /(^|\/)ublk_drv\.ko/m.test(readFileSync(list, 'utf8'));
  } catch {
    return false;
  }
}

/** What modprobe would find: /lib/modules/RELEASE's module lists, as depmod wrote them. */
export function ublkDriver(release: string, root = ''): UblkDriver {
  if (existsSync(`${root}/sys/module/ublk_drv`)) return 'loaded';
  const dir = `${root}/lib/modules/${release}`;
  if (hasModule(`${dir}/modules.builtin`)) return 'built-in';
  if (hasModule(`${dir}/modules.dep`)) return 'module';
  // Module files without depmod's lists: let modprobe have its say.
  return existsSync(`${dir}/modules.dep`) || !existsSync(dir) ? 'none' : 'module';
}

function isCheckout(): boolean {
  return (
    existsSync(new URL('scripts/vm.ts', PACKAGE_ROOT)) &&
    existsSync(new URL('dist/scripts/vm.js', PACKAGE_ROOT))
  );
}

function probeControlAccess(): ControlAccess {
  const controlExists = existsSync(CONTROL_PATH);
  let mayControl = process.getuid?.() === 0;
  if (controlExists && !mayControl) {
    try {
      accessSync(CONTROL_PATH, fsConstants.R_OK | fsConstants.W_OK);
      mayControl = true;
    } catch {
      mayControl = false;
    }
  }
  const release = osRelease();
  return {
    controlExists,
    mayControl,
    driver: controlExists ? 'loaded' : ublkDriver(release),
    release,
    checkout: isCheckout(),
  };
}

/** An argument as a shell reads it back: quoted unless plainly safe. */
function shellWord(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * The one line that says why `ublk ARGV` cannot work on this host and what to do, or undefined
 * when it can.
 */
export function controlProblem(argv: readonly string[], access: ControlAccess): string | undefined {
  const command = `ublk ${argv[0]}`;
  const inVm = `npm run vm -- ublk ${argv.map(shellWord).join(' ')}`;
  if (!access.controlExists) {
    const vm = access.checkout
      ? `; or, in this repository, run it in a VM whose kernel has ublk: ${inVm}`
      : '';
    switch (access.driver) {
      case 'module':
        return `no ${CONTROL_PATH}: load the ublk driver with 'modprobe ublk_drv' (as root)${vm}`;
      case 'loaded':
      case 'built-in':
        return `no ${CONTROL_PATH}, though this kernel has ublk_drv ${access.driver === 'loaded' ? 'loaded' : 'built in'}: is devtmpfs mounted on /dev?${vm}`;
      case 'none':
        return (
          `no ${CONTROL_PATH}, and this kernel (${access.release}) has no ublk driver, so 'modprobe ublk_drv' cannot help: ` +
          `ublk needs Linux 6.0+ built with CONFIG_BLK_DEV_UBLK` +
          (access.checkout
            ? `; in this repository, run it in a VM whose kernel has ublk: ${inVm}`
            : '')
        );
    }
  }
  if (access.mayControl) return undefined;
  return (
    `${command} needs root (ublk control commands need CAP_SYS_ADMIN): use sudo; ` +
    `for a device of your own (add --unprivileged, Linux 6.3+), ${CONTROL_PATH} must be open to users (udev/99-ublk-dev.rules)` +
    (access.checkout ? `; or, in this repository, run it as root in a VM: ${inVm}` : '')
  );
}

/**
 * ublk control commands need CAP_SYS_ADMIN, except on an unprivileged device (Linux 6.3+), which
 * its owner controls through a /dev/ublk-control that udev's rule opened to users: say so before
 * the kernel answers EPERM.
 */
export function requireControl(argv: readonly string[]): void {
  const problem = controlProblem(argv, probeControlAccess());
  if (problem !== undefined) throw new UserError(problem);
}
