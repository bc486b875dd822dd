import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Bytes streamed through between two young-generation collections. */
const EVERY = 16 * 1024 * 1024;

type Collect = (options: { type: 'minor' }) => void;

// A body arrives as 64 KiB socket buffers that die at once. V8 counts them as external memory and collects
// them only after about 64 MiB have piled up, while the young generation grows to its limit: together some
// 50 MiB of peak RSS per busy upload. A scavenge of a young generation that is nearly all garbage takes well
// under a millisecond, so one every 16 MiB keeps both small. `gc` is exposed to a fresh context only.
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as Collect;

let since = 0;

/** Notes `bytes` streamed through; now and then collects the short-lived buffers they came in. */
export function streamed(bytes: number): void {
  since += bytes;
  if (since < EVERY) return;
  since = 0;
  collect({ type: 'minor' });
}
