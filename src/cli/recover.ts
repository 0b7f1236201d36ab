import { UserError } from '../errors.js';
import type { Control } from '../ublk/control/control.js';
import { explainControlError } from '../ublk/control/control-errors.js';
import type { RecoverOptions } from './args.js';
import { startDaemon } from './add.js';
import { readRecord, runDir } from './run-dir.js';
import { serve } from './serve.js';

/**
 * `ublk recover -n ID [--start_empty] [--foreground]`: a new daemon takes over a device whose
 * daemon died, when the device was added with recovery (-r 1, -i 1). The target and its options
 * come from the device's record in the run dir, so built-in targets and target modules alike come
 * back as they were added. Resolves with the device id once the device is LIVE again.
 */
export async function recoverCommand(control: Control, options: RecoverOptions): Promise<number> {
  // The kernel's verdict first: another user's device is refused as such, whatever the run dir.
  await control.getDevInfo(options.devId).catch((err: unknown) => {
    throw explainControlError(err, options.devId);
  });
  if (!readRecord(options.devId)) {
    throw new UserError(
      `no record of device ${options.devId} in ${runDir()}: recover takes the target and its options from the record that 'ublk add' wrote`,
    );
  }
  const job = { kind: 'recover', devId: options.devId, startEmpty: options.startEmpty } as const;
  return options.foreground ? (await serve(job)).id : startDaemon(job);
}
