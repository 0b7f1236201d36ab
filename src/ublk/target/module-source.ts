/**
 * Where a target or filter object comes from. The queue threads cannot be handed an object (it
 * has functions): each imports its target by a source string, a module URL, or a stack of those
 * under filters. So an object given to createDevice must say where it was defined:
 * defineTarget(spec, import.meta.url) and defineFilter(spec, import.meta.url) record the module
 * URL given them, and withFilters records what it was made of.
 *
 * The record is a property keyed by a Symbol.for symbol, not enumerable: another copy of this
 * package (a target module with its own node_modules) records it the same way, and a spread copy
 * of the object (which is no module's export) does not carry it.
 */
import { isAbsolute } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { TargetArgs } from './contract.js';

const DEFINED_IN = Symbol.for('ublk-ts.definedIn');
const MADE_OF = Symbol.for('ublk-ts.stackOf');

/** A target under filters, as withFilters got them: objects (each with its own record). */
interface StackParts {
  target: object;
  filters: readonly { filter: object; args?: TargetArgs }[];
}

/**
 * Records that `value` is the default export of the module at `moduleUrl` (import.meta.url, a
 * file: URL, or an absolute path); no-op without one.
 */
export function recordModule<T extends object>(value: T, moduleUrl: string | URL | undefined): T {
  if (moduleUrl === undefined) return value;
  let href: string;
  if (moduleUrl instanceof URL) href = moduleUrl.href;
  else if (isAbsolute(moduleUrl)) href = pathToFileURL(moduleUrl).href;
  else if (URL.canParse(moduleUrl)) href = moduleUrl;
  else {
    throw new TypeError(
      `the module of ${describe(value)} must be its module's import.meta.url, not ${JSON.stringify(moduleUrl)}`,
    );
  }
  Object.defineProperty(value, DEFINED_IN, { value: href, configurable: true });
  return value;
}

/** The module URL recorded for `value`, if any. */
export function recordedModule(value: object): string | undefined {
  const href = (value as { [DEFINED_IN]?: unknown })[DEFINED_IN];
  return typeof href === 'string' ? href : undefined;
}

/** Records what a withFilters result was made of. */
export function recordStack<T extends object>(stack: T, parts: StackParts): T {
  Object.defineProperty(stack, MADE_OF, { value: parts, configurable: true });
  return stack;
}

export function recordedStack(value: object): StackParts | undefined {
  return (value as { [MADE_OF]?: StackParts })[MADE_OF];
}

/** `target 'loop'`, for messages. */
export function describe(value: object): string {
  const name = (value as { name?: unknown }).name;
  return typeof name === 'string' ? `'${name}'` : 'an object';
}

/** A target under filters, as one source string: the queue threads import their target by it. */
const STACK_PREFIX = 'ublk-stack:';
/** A filter's source, with the arguments it was bound to (a BoundFilter) if any. */
export type FilterSource = string | { source: string; args: TargetArgs };
interface StackSource {
  target: string;
  filters: readonly FilterSource[];
}

/**
 * The source of `target` under `filters` (sources too, first outermost); the target's alone
 * without. Plain data: a device's record keeps it for `ublk recover`.
 */
export function stackSource(target: string, filters: readonly FilterSource[]): string {
  if (filters.length === 0) return target;
  return STACK_PREFIX + JSON.stringify({ target, filters } satisfies Readonly<StackSource>);
}

/** The parts of a stack source, or undefined for another source. */
export function parseStackSource(source: string): StackSource | undefined {
  if (!source.startsWith(STACK_PREFIX)) return undefined;
  return JSON.parse(source.slice(STACK_PREFIX.length)) as StackSource;
}
