/** A target module as a user writes one to pass its target to createDevice as an object. */
import { defineTarget } from '../../../src/targets/define.js';

const target = defineTarget(
  { name: 'recorded', setup: () => ({ size: 4096 }), queue: () => ({}) },
  import.meta.url,
);
export default target;

/** Defined with its module's URL, but not the module's default export. */
export const notTheDefault = defineTarget(
  { name: 'elsewhere', setup: () => ({ size: 4096 }), queue: () => ({}) },
  import.meta.url,
);
