import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ERROR_CODES, UserError } from '../../errors.js';
import { withFilters, type Filter } from './filter.js';
import type { Target } from './contract.js';

export const BUILT_IN: Record<string, string> = {
  null: '../../targets/null.js',
  loop: '../../targets/loop.js',
  mem: '../../targets/mem.js',
  nbd: '../../targets/nbd.js',
};

export const BUILT_IN_FILTERS: Record<string, string> = {
  cow: '../../targets/filters/cow.js',
  delay: '../../targets/filters/delay.js',
  error: '../../targets/filters/error.js',
  readonly: '../../targets/filters/readonly.js',
  stats: '../../targets/filters/stats.js',
};

/** ublksrv's numeric target types, for `list`'s target line; user modules have none of theirs. */
export const TARGET_TYPE_NUMBERS: Record<string, number> = { null: 0, loop: 1, nbd: 3, mem: 100 };
export const USER_TARGET_TYPE = 255;

/**
 * A target under filters, as one source string: the queue threads import their target by source,
 * and a device's record keeps it for `ublk recover`, so the stack must be plain data.
 */
const STACK_PREFIX = 'ublk-stack:';
interface StackSource {
  target: string;
  filters: readonly string[];
}

/** The source of `target` under `filters` (sources too, first outermost); the target's alone without. */
export function stackSource(target: string, filters: readonly string[]): string {
  if (filters.length === 0) return target;
  return STACK_PREFIX + JSON.stringify({ target, filters } satisfies Readonly<StackSource>);
}

function moduleSource(kind: 'target' | 'filter', name: string, builtIn: Record<string, string>) {
  if (Object.hasOwn(builtIn, name)) return new URL(builtIn[name], import.meta.url).href;
  if (name.startsWith('file:')) return name;
  if (!name.includes('/') && !name.endsWith('.js')) {
    const names = Object.keys(builtIn).join(', ');
    throw new UserError(
      `unknown ${kind} ${kind === 'target' ? 'type ' : ''}'${name}': use ${names}, or a path to a ${kind} module such as ./my-${kind}.js`,
    );
  }
  const path = isAbsolute(name) ? name : resolve(name);
  if (!existsSync(path)) throw new UserError(`${kind} module ${path} does not exist`);
  return pathToFileURL(path).href;
}

/**
 * Where a target comes from, as a URL both the main thread and the queue threads can import:
 * a built-in name, or a path to a module (`./my-target.js`), resolved against the working directory.
 */
export function resolveTargetSource(type: string): string {
  if (type.startsWith(STACK_PREFIX)) return type;
  return moduleSource('target', type, BUILT_IN);
}

/** As resolveTargetSource, for a filter: a built-in filter's name or a filter module's path. */
export function resolveFilterSource(name: string): string {
  return moduleSource('filter', name, BUILT_IN_FILTERS);
}

async function importDefault(kind: string, source: string): Promise<Record<string, unknown>> {
  let mod: { default?: Record<string, unknown> };
  try {
    mod = (await import(source)) as { default?: Record<string, unknown> };
  } catch (err) {
    throw new UserError(`cannot load ${kind} module ${source}: ${(err as Error).message}`);
  }
  return mod.default ?? {};
}

export async function loadTarget(source: string): Promise<Target> {
  if (source.startsWith(STACK_PREFIX)) {
    const stack = JSON.parse(source.slice(STACK_PREFIX.length)) as StackSource;
    const target = await loadTarget(stack.target);
    const filters = await Promise.all(stack.filters.map(loadFilter));
    return withFilters(target, filters) as Target;
  }
  const target = await importDefault('target', source);
  if (
    typeof target.name !== 'string' ||
    typeof target.setup !== 'function' ||
    typeof target.queue !== 'function'
  ) {
    throw new UserError(
      `${source} does not export a target: its default export must be defineTarget({ name, setup, queue })`,
      { code: ERROR_CODES.INVALID_TARGET },
    );
  }
  return target as unknown as Target;
}

export async function loadFilter(source: string): Promise<Filter> {
  const filter = await importDefault('filter', source);
  const optional = (name: string) =>
    filter[name] === undefined || typeof filter[name] === 'function';
  if (typeof filter.name !== 'string' || !optional('setup') || !optional('queue')) {
    throw new UserError(
      `${source} does not export a filter: its default export must be defineFilter({ name, setup?, queue? })`,
      { code: ERROR_CODES.INVALID_TARGET },
    );
  }
  return filter as unknown as Filter;
}
