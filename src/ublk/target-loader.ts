import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ERROR_CODES, UserError } from '../errors.js';
import type { Target } from './target.js';

const BUILT_IN: Record<string, string> = {
  null: '../targets/null.js',
  loop: '../targets/loop.js',
  mem: '../targets/mem.js',
  nbd: '../targets/nbd.js',
};

/** ublksrv's numeric target types, for `list`'s target line; user modules have none of theirs. */
export const TARGET_TYPE_NUMBERS: Record<string, number> = { null: 0, loop: 1, nbd: 3, mem: 100 };
export const USER_TARGET_TYPE = 255;

/**
 * Where a target comes from, as a URL both the main thread and the queue threads can import:
 * a built-in name, or a path to a module (`./my-target.js`), resolved against the working directory.
 */
export function resolveTargetSource(type: string): string {
  if (Object.hasOwn(BUILT_IN, type)) return new URL(BUILT_IN[type], import.meta.url).href;
  if (type.startsWith('file:')) return type;
  if (!type.includes('/') && !type.endsWith('.js')) {
    throw new UserError(
      `unknown target type '${type}': use null, loop, mem, nbd, or a path to a target module such as ./my-target.js`,
    );
  }
  const path = isAbsolute(type) ? type : resolve(type);
  if (!existsSync(path)) throw new UserError(`target module ${path} does not exist`);
  return pathToFileURL(path).href;
}

export async function loadTarget(source: string): Promise<Target> {
  let mod: { default?: Partial<Target> };
  try {
    mod = (await import(source)) as { default?: Partial<Target> };
  } catch (err) {
    throw new UserError(`cannot load target module ${source}: ${(err as Error).message}`);
  }
  const target = mod.default;
  if (
    !target ||
    typeof target.name !== 'string' ||
    typeof target.setup !== 'function' ||
    typeof target.queue !== 'function'
  ) {
    throw new UserError(
      `${source} does not export a target: its default export must be defineTarget({ name, setup, queue })`,
      { code: ERROR_CODES.INVALID_TARGET },
    );
  }
  return target as Target;
}
