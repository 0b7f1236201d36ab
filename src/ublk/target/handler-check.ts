import { ERROR_CODES, UserError } from '../../errors.js';
import type { Capabilities, QueueHandlers } from './contract.js';

/**
 * The handlers a queue needs for what its target declared, checked when the queue starts: a
 * capability whose handler is missing would fail every such request at run time. The reverse is
 * allowed (loop defines discard() but declares it only where the file system can punch holes).
 */
export function checkHandlers(
  targetName: string,
  caps: Capabilities,
  handlers: QueueHandlers,
): void {
  const missing: string[] = [];
  const forward = handlers.forward;
  if (!forward && typeof handlers.read !== 'function') {
    missing.push('read() (every target serves reads)');
  }
  if (!forward && !caps.readOnly && typeof handlers.write !== 'function') {
    missing.push('write() (or declare readOnly)');
  }
  const needs: [keyof Capabilities, keyof QueueHandlers, boolean][] = [
    ['volatileCache', 'flush', forward?.sync === true],
    ['discard', 'discard', forward?.discard === true],
    ['writeZeroes', 'writeZeroes', false],
  ];
  for (const [capability, handler, forwarded] of needs) {
    if (caps[capability] && !forwarded && typeof handlers[handler] !== 'function') {
      missing.push(`${handler}() for its ${capability} capability`);
    }
  }
  if (missing.length > 0) {
    throw new UserError(`target ${targetName}: queue() returned no ${missing.join(', no ')}`, {
      code: ERROR_CODES.INVALID_TARGET,
    });
  }
}
