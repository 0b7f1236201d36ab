/**
 * Synchronous per-request hooks: what lets a filter watch, fail or delay requests without taking
 * them off the promise-free forward (forwarded-io.ts) or out of zero copy. The queue runs each
 * request's hooks, outermost first, before it serves the request (forward or handler), and runs
 * them again, innermost first, once the result is known, before the commit.
 */
import { errnoError } from '../../errors.js';
import { addressOf } from '../../sys.js';
import type { SubmissionQueue } from '../../uring/index.js';
import { KERNEL_TIMESPEC } from '../../uring/abi.js';
import { writeU64 } from '../../uring/u64.js';
import { UBLK_IO_OP } from '../ublk-cmd.js';
import { encodeUserData, UD_HOOK_DELAY } from './user-data.js';

/** Request kinds as hooks see them (the filters' option names). */
export type RequestKind = 'read' | 'write' | 'flush' | 'discard' | 'write_zeroes';

/**
 * A filter's view of each request of its queue, called synchronously from the queue's loop:
 * nothing here may block or return a promise. `tag` (0 to depth - 1) is the request's slot, for
 * per-request state kept in typed arrays made once.
 */
export interface RequestHook {
  /**
   * Before the layers below see the request: HOOK_PASS lets it through; hookFail(errno) fails it
   * (the layers below never see it); hookDelay(ms) lets it through after that long, waited on the
   * queue's ring (no JavaScript timer).
   */
  before?(kind: RequestKind, offset: number, length: number, tag: number): HookVerdict;
  /**
   * Where the request goes once `before` let it through, for a filter that serves some requests
   * from a file of its own: routeToFile(fd), an fd laid out as the device (byte N of the device
   * at byte N), which the layer below's forward then reads or writes instead of its own (the
   * hooks below are passed by); ROUTE_BELOW, on through the hooks below to the layer below;
   * ROUTE_HANDLERS, to the filter's own handlers. Only a filter directly or through hooks over a
   * forward routes: elsewhere its handlers serve every request.
   */
  route?(kind: RequestKind, offset: number, length: number, tag: number): HookRoute;
  /**
   * The request's result (bytes for read and write, 0 for the others, or -errno), before it goes
   * to the kernel. Called for every request this hook's `before` let through.
   */
  after?(kind: RequestKind, offset: number, length: number, result: number, tag: number): void;
}

/**
 * What RequestHook.before decides. These are values made once (HOOK_PASS, and what hookFail and
 * hookDelay return, which a hook makes when its filter's queue() runs and returns per request):
 * the queue's hot path allocates nothing per request.
 */
export type HookVerdict =
  | { readonly action: 'pass' }
  | { readonly action: 'fail'; readonly errno: number }
  | { readonly action: 'delay'; readonly ms: number };

/** RequestHook.before: on to the next hook, or the layer below. */
export const HOOK_PASS: HookVerdict = Object.freeze({ action: 'pass' });

/** Per errno, its verdict: made once each. */
const FAILS: HookVerdict[] = [];

/** RequestHook.before: the request fails with this errno (positive, as EIO). Made once per errno. */
export function hookFail(errno: number): HookVerdict {
  if (!Number.isInteger(errno) || errno <= 0 || errno >= 4096) {
    throw new RangeError(`hookFail: errno must be a positive errno number, not ${errno}`);
  }
  return (FAILS[errno] ??= Object.freeze({ action: 'fail', errno }));
}

/**
 * RequestHook.before: the request goes on after `ms` milliseconds (more than 0). Each call makes
 * a new value: make it once (in queue()) and return that one per request.
 */
export function hookDelay(ms: number): HookVerdict {
  if (!(ms > 0 && ms < Infinity)) {
    throw new RangeError(`hookDelay: milliseconds must be more than 0 and finite, not ${ms}`);
  }
  return Object.freeze({ action: 'delay', ms });
}

/** Where RequestHook.route sends a request: see there. */
export type HookRoute =
  | { readonly to: 'below' }
  | { readonly to: 'handlers' }
  | { readonly to: 'file'; readonly fd: number };

/** RequestHook.route: on through the hooks below to the layer below. */
export const ROUTE_BELOW: HookRoute = Object.freeze({ to: 'below' });
/** RequestHook.route: to the filter's own handlers. */
export const ROUTE_HANDLERS: HookRoute = Object.freeze({ to: 'handlers' });

/**
 * RequestHook.route: to this fd, laid out as the device, through the forward of the layer below.
 * Each call makes a new value: make it once per fd (in queue()) and return that one per request.
 */
export function routeToFile(fd: number): HookRoute {
  if (!Number.isInteger(fd) || fd < 0) {
    throw new RangeError(`routeToFile: fd must be a file descriptor, not ${fd}`);
  }
  return Object.freeze({ to: 'file', fd });
}

/** A hook with the name of its filter, which the failure log gives for the requests it fails. */
export interface LayerHook {
  name: string;
  hook: RequestHook;
}

/** Per request kind, the hooks its requests go through, outermost first. */
export type RequestHooks = Partial<Record<RequestKind, readonly LayerHook[]>>;

/** Where a request goes once its hooks let it through (HookRunner.routeOf): an fd, or these. */
export const ROUTED_BELOW = -1;
export const ROUTED_HANDLERS = -2;

/** Each ublk op's kind, indexed by UBLK_IO_OP. */
const KIND_OF: (RequestKind | undefined)[] = [];
KIND_OF[UBLK_IO_OP.READ] = 'read';
KIND_OF[UBLK_IO_OP.WRITE] = 'write';
KIND_OF[UBLK_IO_OP.FLUSH] = 'flush';
KIND_OF[UBLK_IO_OP.DISCARD] = 'discard';
KIND_OF[UBLK_IO_OP.WRITE_ZEROES] = 'write_zeroes';

export interface HookRing {
  sq: Pick<SubmissionQueue, 'prepTimeout'>;
  makeRoom(): void;
}

/** Serves a request the hooks let through, or fails one a hook failed (with its error). */
export interface HookedRequests {
  serve(tag: number, op: number, offset: number, length: number, address: number): void;
  fail(tag: number, op: number, offset: number, length: number, err: unknown): void;
}

const NO_HOOKS: readonly LayerHook[] = [];

/**
 * Runs one queue's hooks. Per tag it keeps, in typed arrays made once, the request and how many
 * hooks have let it through: a delay resumes from there when its TIMEOUT completes, and `after`
 * goes back over exactly those.
 */
export class HookRunner {
  /** Delays waiting on the ring. */
  inFlight = 0;

  private readonly chains: (readonly LayerHook[])[];
  private readonly passed: Uint8Array;
  /** Per tag, 1 while the hook before `passed` has yet to route it (its delay came first). */
  private readonly unrouted: Uint8Array;
  /** Per tag, where its hooks sent it (RequestHook.route): an fd, ROUTED_BELOW or ROUTED_HANDLERS. */
  private readonly routes: Int32Array;
  private readonly op: Uint8Array;
  private readonly offset: Float64Array;
  private readonly length: Uint32Array;
  private readonly address: Float64Array;
  /** Per tag, a struct __kernel_timespec (off the JS heap: the kernel reads it at submission). */
  private readonly timespecs: Uint32Array;
  private readonly timespecsAddress: number;
  /** Per hook, the error of the last failure it caused: made once per errno, not per request. */
  private readonly errors: (Error | undefined)[][];

  /** The runner for these hooks, or undefined when no request kind has any. */
  static of(
    hooks: RequestHooks | undefined,
    depth: number,
    ring: HookRing,
    requests: HookedRequests,
  ): HookRunner | undefined {
    if (hooks === undefined || !Object.values(hooks).some((chain) => chain.length > 0)) {
      return undefined;
    }
    return new HookRunner(hooks, depth, ring, requests);
  }

  private constructor(
    hooks: RequestHooks,
    depth: number,
    private readonly ring: HookRing,
    private readonly requests: HookedRequests,
  ) {
    this.chains = KIND_OF.map((kind) => (kind && hooks[kind]) || NO_HOOKS);
    for (let op = 0; op < 256; op++) this.chains[op] ??= NO_HOOKS;
    this.passed = new Uint8Array(depth);
    this.unrouted = new Uint8Array(depth);
    this.routes = new Int32Array(depth).fill(ROUTED_BELOW);
    this.op = new Uint8Array(depth);
    this.offset = new Float64Array(depth);
    this.length = new Uint32Array(depth);
    this.address = new Float64Array(depth);
    this.timespecs = new Uint32Array(new ArrayBuffer(depth * KERNEL_TIMESPEC.size));
    this.timespecsAddress = addressOf(this.timespecs);
    this.errors = KIND_OF.map(() => []);
  }

  /**
   * A request arrives: false when every hook let it through at once (serve it now); true when
   * the runner took it: delayed (served from `resume`) or failed through `requests.fail`.
   */
  start(tag: number, op: number, offset: number, length: number, address: number): boolean {
    this.op[tag] = op;
    this.routes[tag] = ROUTED_BELOW;
    if (this.chains[op].length === 0) return false;
    this.offset[tag] = offset;
    this.length[tag] = length;
    this.address[tag] = address;
    this.passed[tag] = 0;
    return this.run(tag);
  }

  /** A delayed request's TIMEOUT completed: on through the rest of its hooks. */
  resume(tag: number): void {
    this.inFlight--;
    if (this.run(tag)) return;
    const op = this.op[tag];
    this.requests.serve(tag, op, this.offset[tag], this.length[tag], this.address[tag]);
  }

  /** Where the tag's request goes once its hooks let it through: an fd, or a ROUTED_ value. */
  routeOf(tag: number): number {
    return this.routes[tag];
  }

  /** The request's result, before its commit: the hooks that let it through see it, inner first. */
  after(tag: number, result: number): void {
    const op = this.op[tag];
    const chain = this.chains[op];
    if (chain.length === 0) return;
    const kind = KIND_OF[op]!;
    const offset = this.offset[tag];
    const length = this.length[tag];
    for (let i = this.passed[tag] - 1; i >= 0; i--) {
      const hook = chain[i].hook;
      if (hook.after !== undefined) hook.after(kind, offset, length, result, tag);
    }
    this.passed[tag] = 0;
  }

  /** The tag's hooks from the first that has not let it through: true if one held it. */
  private run(tag: number): boolean {
    const op = this.op[tag];
    const chain = this.chains[op];
    const kind = KIND_OF[op]!;
    const offset = this.offset[tag];
    const length = this.length[tag];
    let i = this.passed[tag];
    if (this.unrouted[tag] !== 0) {
      this.unrouted[tag] = 0;
      if (this.routed(tag, chain[i - 1], kind)) return false;
    }
    for (; i < chain.length; i++) {
      const hook = chain[i].hook;
      if (hook.before !== undefined) {
        const verdict = hook.before(kind, offset, length, tag);
        switch (verdict?.action) {
          case 'pass':
            break;
          case 'fail':
            this.passed[tag] = i;
            this.requests.fail(tag, op, offset, length, this.errorOf(op, i, verdict.errno));
            return true;
          case 'delay':
            this.passed[tag] = i + 1;
            this.unrouted[tag] = hook.route === undefined ? 0 : 1;
            this.delay(tag, verdict.ms);
            return true;
          default:
            throw new TypeError(
              `filter ${chain[i].name}'s hook returned ${String(verdict)}, not HOOK_PASS, hookFail() or hookDelay()`,
            );
        }
      }
      this.passed[tag] = i + 1;
      if (this.routed(tag, chain[i], kind)) return false;
    }
    return false;
  }

  /** Whether the hook sent the tag's request somewhere other than on down (the hooks below). */
  private routed(tag: number, layer: LayerHook, kind: RequestKind): boolean {
    const { hook } = layer;
    if (hook.route === undefined) return false;
    const route = hook.route(kind, this.offset[tag], this.length[tag], tag);
    switch (route?.to) {
      case 'below':
        this.routes[tag] = ROUTED_BELOW;
        return false;
      case 'handlers':
        this.routes[tag] = ROUTED_HANDLERS;
        return true;
      case 'file':
        this.routes[tag] = route.fd;
        return true;
      default:
        throw new TypeError(
          `filter ${layer.name}'s hook routed to ${String(route)}, not ROUTE_BELOW, ROUTE_HANDLERS or routeToFile()`,
        );
    }
  }

  private delay(tag: number, milliseconds: number): void {
    const words = (tag * KERNEL_TIMESPEC.size) / 4;
    const nanos = Math.round(milliseconds * 1e6);
    writeU64(this.timespecs, words + KERNEL_TIMESPEC.tvSec / 4, Math.floor(nanos / 1e9));
    writeU64(this.timespecs, words + KERNEL_TIMESPEC.tvNsec / 4, nanos % 1e9);
    const address = this.timespecsAddress + tag * KERNEL_TIMESPEC.size;
    const userData = encodeUserData(UD_HOOK_DELAY, tag);
    while (!this.ring.sq.prepTimeout(address, userData)) this.ring.makeRoom();
    this.inFlight++;
  }

  private errorOf(op: number, index: number, errno: number): Error {
    const errors = this.errors[op];
    let err = errors[index];
    if ((err as { errno?: number } | undefined)?.errno !== errno) {
      err = errnoError(`filter ${this.chains[op][index].name} (${KIND_OF[op]})`, errno);
      errors[index] = err;
    }
    return err!;
  }
}
