import { Worker } from 'node:worker_threads';
import { SHA256_STATE_BYTES } from './hashers';

/**
 * The worker's whole program, kept as a string so the same code runs from the TypeScript sources (tests) and
 * from `dist/`. It keeps one hash-wasm hasher per job id and answers `save` with the state.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createSHA256 } = require(workerData.hashWasm);
const jobs = new Map();
let ready = createSHA256().then(() => undefined);
parentPort.on('message', (m) => {
  ready = ready.then(async () => {
    try {
      if (m.op === 'open') {
        const h = await createSHA256();
        h.init();
        if (m.state) h.load(new Uint8Array(m.state));
        jobs.set(m.id, h);
      } else if (m.op === 'update') {
        jobs.get(m.id).update(new Uint8Array(m.data));
      } else if (m.op === 'save') {
        const h = jobs.get(m.id);
        jobs.delete(m.id);
        const state = h.save();
        parentPort.postMessage({ id: m.id, state: state.buffer.slice(state.byteOffset, state.byteOffset + state.byteLength) });
      } else if (m.op === 'drop') {
        jobs.delete(m.id);
      }
    } catch (e) {
      jobs.delete(m.id);
      parentPort.postMessage({ id: m.id, error: String(e && e.message || e) });
    }
  });
});
`;

/** How much may be queued to the worker before the sender waits for it to catch up. */
const MAX_IN_FLIGHT = 8 * 1024 * 1024;
/** An unused worker is stopped after this long: its isolate and WebAssembly memory cost about 20 MiB. */
const IDLE_STOP_MS = 30_000;

interface Pending {
  resolve(state: Buffer): void;
  reject(e: Error): void;
}

/**
 * SHA-256 with hash-wasm on a worker thread: the state-saving hash runs on another core while the event loop
 * serves requests. One worker per process, many jobs interleaved on it.
 */
export class WorkerSha256Pool {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private active = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly idleStopMs = IDLE_STOP_MS) {}

  private get w(): Worker {
    if (!this.worker) {
      const worker = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: { hashWasm: require.resolve('hash-wasm') },
      });
      worker.unref();
      worker.on('message', (m: { id: number; state?: ArrayBuffer; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.error !== undefined || !m.state) p.reject(new Error(`failed to hash in worker: ${m.error}`));
        else p.resolve(Buffer.from(m.state));
      });
      // A worker stopped for idleness may exit after its successor started: only the current one matters.
      worker.on('error', (e) => {
        if (this.worker === worker) this.fail(e);
      });
      worker.on('exit', () => {
        if (this.worker !== worker) return;
        this.worker = null;
        this.fail(new Error('hash worker exited'));
      });
      this.worker = worker;
    }
    return this.worker;
  }

  private fail(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /**
   * Continues `state` (or starts afresh) over `source` and resolves with the state after its last byte. The
   * source is read no faster than the worker hashes.
   */
  async continueOver(state: Buffer | null, source: AsyncIterable<Buffer>): Promise<Buffer> {
    if (state && state.length !== SHA256_STATE_BYTES)
      throw new Error(`bad SHA-256 state of ${state.length} bytes`);
    clearTimeout(this.idleTimer);
    this.active++;
    try {
      return await this.run(state, source);
    } finally {
      if (--this.active === 0) {
        this.idleTimer = setTimeout(() => void this.close(), this.idleStopMs);
        this.idleTimer.unref();
      }
    }
  }

  /** Whether a worker thread is running now. */
  get running(): boolean {
    return this.worker !== null;
  }

  private async run(state: Buffer | null, source: AsyncIterable<Buffer>): Promise<Buffer> {
    const worker = this.w;
    const id = this.nextId++;
    worker.postMessage({ id, op: 'open', state: state ? Uint8Array.from(state).buffer : null });
    try {
      let inFlight = 0;
      for await (const chunk of source) {
        // A copy the worker then owns: socket and file buffers may be views into shared pools.
        const copy = new Uint8Array(chunk.length);
        copy.set(chunk);
        worker.postMessage({ id, op: 'update', data: copy.buffer }, [copy.buffer]);
        inFlight += chunk.length;
        if (inFlight >= MAX_IN_FLIGHT) {
          state = await this.checkpoint(id, worker);
          worker.postMessage({ id, op: 'open', state: Uint8Array.from(state).buffer });
          inFlight = 0;
        }
      }
    } catch (e) {
      worker.postMessage({ id, op: 'drop' });
      throw e;
    }
    return this.checkpoint(id, worker);
  }

  private checkpoint(id: number, worker: Worker): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, op: 'save' });
    });
  }

  async close(): Promise<void> {
    clearTimeout(this.idleTimer);
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}
