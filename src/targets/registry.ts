/**
 * The built-in targets and filters by name, and `list`'s target type numbers. The layers above
 * (the package index's createDevice, the CLI) turn a built-in name into its module's URL here;
 * below them (src/ublk) a target is only ever a module's URL or path, a stack of those, or an
 * object that says which module it comes from, and the queue threads import it by that URL.
 */
import type { Target } from '../ublk/target/contract.js';
import {
  isBareName,
  objectSource,
  resolveFilterSource,
  resolveTargetSource,
} from '../ublk/target/loader.js';
import { UserError } from '../errors.js';

/** Each built-in target's module URL, by name (spelt out: the layering test reads them). */
export const BUILT_IN_TARGETS: Readonly<Record<string, string>> = {
  null: new URL('./null.js', import.meta.url).href,
  loop: new URL('./loop.js', import.meta.url).href,
  mem: new URL('./mem.js', import.meta.url).href,
  nbd: new URL('./nbd.js', import.meta.url).href,
};

/** Each built-in filter's module URL, by name. */
export const BUILT_IN_FILTERS: Readonly<Record<string, string>> = {
  cow: new URL('./filters/cow.js', import.meta.url).href,
  delay: new URL('./filters/delay.js', import.meta.url).href,
  error: new URL('./filters/error.js', import.meta.url).href,
  readonly: new URL('./filters/readonly.js', import.meta.url).href,
  stats: new URL('./filters/stats.js', import.meta.url).href,
};

/** ublksrv's numeric target types, for `list`'s target line; user modules have none of theirs. */
export const TARGET_TYPE_NUMBERS: Readonly<Record<string, number>> = {
  null: 0,
  loop: 1,
  nbd: 3,
  mem: 100,
};
export const USER_TARGET_TYPE = 255;

function builtIn(kind: 'target' | 'filter', name: string): string | undefined {
  const table = kind === 'target' ? BUILT_IN_TARGETS : BUILT_IN_FILTERS;
  if (Object.hasOwn(table, name)) return table[name];
  if (isBareName(name)) {
    const names = Object.keys(table).join(', ');
    throw new UserError(
      `unknown ${kind} ${kind === 'target' ? 'type ' : ''}'${name}': use ${names}, or a path to a ${kind} module such as ./my-${kind}.js`,
    );
  }
  return undefined;
}

/**
 * A target as src/ublk takes it, which knows no built-in: a built-in name as its module's URL
 * (an unknown bare name is refused); a Target object as its source (a built-in export such as
 * loopTarget by the registry, a withFilters stack by its parts', another by the module
 * defineTarget recorded; see objectSource); a module path or URL as it is.
 */
export async function withBuiltInTarget(target: string | URL | Target): Promise<string | URL> {
  if (typeof target === 'string') return builtIn('target', target) ?? target;
  if (target instanceof URL || typeof target !== 'object' || target === null) return target;
  return objectSource('target', target, builtInSource);
}

/** A built-in target's or filter's URL when `value` is that module's default export. */
async function builtInSource(
  kind: 'target' | 'filter',
  value: object,
): Promise<string | undefined> {
  const table = kind === 'target' ? BUILT_IN_TARGETS : BUILT_IN_FILTERS;
  const name = (value as { name?: unknown }).name;
  if (typeof name !== 'string' || !Object.hasOwn(table, name)) return undefined;
  const mod = (await import(table[name])) as { default?: unknown };
  return mod.default === value ? table[name] : undefined;
}

/** A target's name or module path (`ublk add -t`) as the source its queue threads import. */
export function targetSource(nameOrPath: string): string {
  return builtIn('target', nameOrPath) ?? resolveTargetSource(nameOrPath);
}

/** A filter's name or module path (`ublk add --filter`) as its source. */
export function filterSource(nameOrPath: string): string {
  return builtIn('filter', nameOrPath) ?? resolveFilterSource(nameOrPath);
}
