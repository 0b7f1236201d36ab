import { constants } from 'node:os';
import { checkResult, errnoError } from '../../errors.js';
import type { QueueIo } from '../target/contract.js';

const { EIO } = constants.errno;

type RawIo = Pick<QueueIo, 'read' | 'write'>;

/** QueueIo's whole-buffer calls over its raw read and write, so no target loops over short IO. */
export function wholeBufferIo(io: RawIo): Pick<QueueIo, 'readFully' | 'writeFully'> {
  return {
    async readFully(fd, buf, offset) {
      let done = 0;
      while (done < buf.length) {
        const n = checkResult(await io.read(fd, buf.subarray(done), offset + done), 'read');
        if (n === 0) break;
        done += n;
      }
      return done;
    },
    async writeFully(fd, buf, offset) {
      for (let done = 0; done < buf.length;) {
        const n = checkResult(await io.write(fd, buf.subarray(done), offset + done), 'write');
        if (n === 0) throw errnoError('write', EIO);
        done += n;
      }
    },
  };
}
