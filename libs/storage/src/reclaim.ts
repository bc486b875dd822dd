import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Bytes streamed through between two young-generation collections. */
const EVERY = 16 * 1024 * 1024;

// With no options, a full collection (this V8 knows no `type: 'major'`).
type Collect = (options?: { type: 'minor' }) => void;

// A body arrives as 64 KiB socket buffers that die at once. V8 counts them as external memory and collects
// them only after about 64 MiB have piled up, while the young generation grows to its limit: together some
// 50 MiB of peak RSS per busy upload. A scavenge of a young generation that is nearly all garbage takes well
// under a millisecond, so one every 16 MiB keeps both small. `gc` is exposed to a fresh context only, and only once
// the registry's start-up asks for it (`startReclaim`); until then (tests, tools) streaming collects nothing.
let collect: Collect | null = null;

function enableCollections(): Collect {
  if (!collect) {
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as Collect;
  }
  return collect;
}

let since = 0;

/** Notes `bytes` streamed through; now and then collects the short-lived buffers they came in. */
export function streamed(bytes: number): void {
  if (!collect) return;
  since += bytes;
  if (since < EVERY) return;
  since = 0;
  collect({ type: 'minor' });
}

/** How often the idle collector looks at how busy the event loop was. */
const QUIET_CHECK_MS = 1000;
/** Below this share of the last interval spent busy, the process counts as quiet. */
const QUIET_UTILIZATION = 0.02;

/**
 * Installs the collections: young-generation ones as bytes stream through, and after a burst of work, once the
 * process has gone quiet, `release` (pools handing back what they keep) and one full collection, so the heap the
 * burst grew is handed back rather than kept until the next burst finds it. Returns a function that stops the
 * quiet collector.
 */
export function collectWhenQuiet(release: () => void): () => void {
  const collect = enableCollections();
  let busy = false;
  let last = performance.eventLoopUtilization();
  const timer = setInterval(() => {
    const now = performance.eventLoopUtilization();
    const { utilization } = performance.eventLoopUtilization(now, last);
    last = now;
    if (utilization > QUIET_UTILIZATION) busy = true;
    else if (busy) {
      busy = false;
      release();
      collect();
    }
  }, QUIET_CHECK_MS);
  timer.unref();
  return () => clearInterval(timer);
}
