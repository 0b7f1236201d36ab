/**
 * Loads targets and filters by source: a module's file: URL, a path to one, or a stack of those
 * (module-source.ts). Built-in names are not known here: the layers above (src/targets/registry.ts)
 * turn them into their modules' URLs first.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ERROR_CODES, UserError } from '../../errors.js';
import { withFilters, type BoundFilter, type Filter, type FilterEntry } from './filter.js';
import type { Target } from './contract.js';
import {
  describe,
  parseStackSource,
  recordedModule,
  recordedStack,
  stackSource,
  type FilterSource,
} from './module-source.js';

export { stackSource } from './module-source.js';

/** Whether `name` is a bare name ('loop'), not a module's path or URL. */
export function isBareName(name: string): boolean {
  return (
    !name.includes('/') &&
    !/\.[cm]?[jt]s$/.test(name) &&
    !name.startsWith('file:') &&
    !isStack(name)
  );
}

function isStack(source: string): boolean {
  return parseStackSource(source) !== undefined;
}

function moduleSource(kind: 'target' | 'filter', name: string): string {
  if (name.startsWith('file:')) return name;
  if (isBareName(name)) {
    throw new UserError(
      `unknown ${kind} '${name}': give the path of a ${kind} module such as ./my-${kind}.js`,
    );
  }
  const path = isAbsolute(name) ? name : resolve(name);
  if (!existsSync(path)) throw new UserError(`${kind} module ${path} does not exist`);
  return pathToFileURL(path).href;
}

/**
 * Where a target comes from, as a URL both the main thread and the queue threads can import: a
 * file: URL or a stack source as it is, or a path to a module (`./my-target.js`), resolved
 * against the working directory.
 */
export function resolveTargetSource(target: string | URL): string {
  if (target instanceof URL) return target.href;
  if (isStack(target)) return target;
  return moduleSource('target', target);
}

/** As resolveTargetSource, for a filter module's path or URL. */
export function resolveFilterSource(filter: string | URL): string {
  if (filter instanceof URL) return filter.href;
  return moduleSource('filter', filter);
}

/**
 * The target a device is made with, and its source for the queue threads. A string or URL is
 * loaded from its source. A Target object must say where it comes from (module-source.ts): a
 * defineTarget(spec, import.meta.url) result that is its module's default export, or a
 * withFilters stack of such targets and filters; anything else is refused.
 */
export async function resolveTarget(
  target: string | URL | Target,
): Promise<{ source: string; target: Target }> {
  if (typeof target === 'string' || target instanceof URL) {
    const source = resolveTargetSource(target);
    return { source, target: await loadTarget(source) };
  }
  if (typeof target !== 'object' || target === null) {
    throw new UserError(
      `target must be a target's name, a module path, a file: URL or a Target object, not ${String(target)}`,
    );
  }
  return { source: await objectSource('target', target), target };
}

/**
 * The module URL of an object some layer above knows (a built-in's), already checked to be that
 * module's default export; undefined for one it does not know.
 */
type KnownSource = (kind: 'target' | 'filter', value: object) => Promise<string | undefined>;

/**
 * The source of a target or filter object: the URL of the module it is the default export of
 * (`known`'s, else the one defineTarget/defineFilter recorded), or for a withFilters stack the
 * stack of its parts' sources. An object of no known module is refused.
 */
export async function objectSource(
  kind: 'target' | 'filter',
  value: object,
  known?: KnownSource,
): Promise<string> {
  const stack = recordedStack(value);
  if (stack !== undefined) {
    const filters: FilterSource[] = [];
    for (const { filter, args } of stack.filters) {
      const source = await objectSource('filter', filter, known);
      filters.push(args === undefined ? source : { source, args });
    }
    return stackSource(await objectSource('target', stack.target, known), filters);
  }
  const knownHref = await known?.(kind, value);
  if (knownHref !== undefined) return knownHref;
  const href = recordedModule(value);
  const define = kind === 'target' ? 'defineTarget' : 'defineFilter';
  if (href === undefined) {
    throw new UserError(
      `${kind} ${describe(value)} does not say which module it comes from, which the queue threads import: make it its module's default export with ${define}({ ... }, import.meta.url), or pass that module's path`,
    );
  }
  const loaded = await importDefault(kind, href);
  if (loaded !== value) {
    throw new UserError(
      `${kind} ${describe(value)} is not the default export of ${href}, which the queue threads import: export it as default`,
    );
  }
  return href;
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
  const stack = parseStackSource(source);
  if (stack !== undefined) {
    const target = await loadTarget(stack.target);
    const filters = await Promise.all(
      stack.filters.map(async (entry): Promise<FilterEntry> => {
        if (typeof entry === 'string') return loadFilter(entry);
        const bound: BoundFilter = { filter: await loadFilter(entry.source), args: entry.args };
        return bound;
      }),
    );
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
