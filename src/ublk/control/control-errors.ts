import { UserError } from '../../errors.js';
import { isErrnoError } from '../../sys.js';
import { Control, isControlError } from './control.js';

/* The control device's failures in words the user can act on: the library's and the CLI's. */

/** Opens /dev/ublk-control with the fix for each way it can fail. */
export function openControl(): Control {
  try {
    return Control.open();
  } catch (err) {
    if (isErrnoError(err, 'ENOENT')) {
      throw new UserError(
        "no /dev/ublk-control: load the ublk driver with 'modprobe ublk_drv' (Linux 6.0+ built with CONFIG_BLK_DEV_UBLK)",
      );
    }
    if (isErrnoError(err, 'EACCES') || isErrnoError(err, 'EPERM')) {
      throw new UserError('permission denied on /dev/ublk-control: run as root (sudo)');
    }
    throw err;
  }
}

/**
 * A control error the user can act on, in words, with the ControlError as its `cause` for callers
 * that test err.cause with isControlError; anything else unchanged.
 */
export function explainControlError(err: unknown, devId: number): unknown {
  if (isControlError(err, 'EEXIST')) {
    return new UserError(`device id ${devId} is already in use: pick another -n, or omit it`, {
      cause: err,
    });
  }
  if (isControlError(err, 'ENODEV')) {
    return new UserError(`there is no ublk device ${devId}`, { cause: err });
  }
  if (isControlError(err, 'EPERM') || isControlError(err, 'EACCES')) {
    const who =
      process.getuid?.() === 0
        ? 'run as root (sudo)'
        : "it is not yours: run as root, or as the device's owner";
    return new UserError(`${(err as Error).message}: ${who}`, { cause: err });
  }
  return err;
}
