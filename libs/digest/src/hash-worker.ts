import { Worker } from 'node:worker_threads';
import { type Algorithm, SHA256_STATE_BYTES } from './hashers';
import { workerProgram } from './worker-program';

/** How much may be queued to the worker before the sender waits for it to catch up. */
const MAX_IN_FLIGHT = 4 * 1024 * 1024;
/** Bytes gathered into one message to the worker. */
const STAGE = 1024 * 1024;
/** Buffers handed back by the worker and kept for the next messages. */
const SPARE_MAX = 8;
/** A worker with nothing to do is stopped after this long: its isolate costs about 10 MiB, 20 with WebAssembly. */
const IDLE_STOP_MS = 30_000;

interface Pending {
  resolve(value: Buffer | string): void;
  reject(e: Error): void;
}

interface Reply {
  id: number;
  data?: ArrayBuffer;
  state?: ArrayBuffer;
  hex?: string;
  ack?: number;
  error?: string;
}

/** A digester whose work happens elsewhere: feeding it may ask the caller to wait, and its digest is async. */
export interface AsyncDigester {
  /** Takes `chunk` (copied: the caller may reuse it). A promise means: wait for it before feeding more. */
  update(chunk: Uint8Array): Promise<void> | undefined;
  /** The hex digest of everything fed so far; the digester can go on being fed. */
  digest(): Promise<string>;
}

/**
 * A native hash living on the hash worker, fed in 1 MiB messages. Forking copies its state there. It must be
 * dropped when no longer needed; one that is garbage-collected undropped is dropped then.
 */
export class WorkerDigester implements AsyncDigester {
  private staged: Buffer | null = null;
  private stagedBytes = 0;
  private inFlight = 0;
  private waiter: (() => void) | null = null;
  private dropped = false;
  private released = false;

  constructor(
    private readonly worker: HashWorker,
    readonly id: number,
  ) {}

  /** False once dropped, or once its worker is gone: then it takes bytes without hashing them. */
  get alive(): boolean {
    return !this.dropped && !this.released;
  }

  update(chunk: Uint8Array): Promise<void> | undefined {
    if (!this.alive) return undefined;
    let at = 0;
    while (at < chunk.length) {
      const staged = (this.staged ??= this.worker.stage());
      const n = Math.min(chunk.length - at, STAGE - this.stagedBytes);
      staged.set(chunk.subarray(at, at + n), this.stagedBytes);
      this.stagedBytes += n;
      at += n;
      if (this.stagedBytes === STAGE) this.flush();
    }
    if (this.inFlight <= MAX_IN_FLIGHT) return undefined;
    return new Promise<void>((resolve) => (this.waiter = resolve));
  }

  private flush(): void {
    if (!this.staged || this.stagedBytes === 0) return;
    const data = this.staged.buffer as ArrayBuffer;
    this.worker.post({ op: 'nupdate', id: this.id, data, length: this.stagedBytes }, [data]);
    if (this.inFlight === 0) this.worker.hold(this);
    this.inFlight += this.stagedBytes;
    this.staged = null;
    this.stagedBytes = 0;
  }

  /** @internal the worker hashed `bytes` more. */
  acked(bytes: number): void {
    this.inFlight -= bytes;
    if (this.inFlight === 0) this.worker.letGo(this);
    if (this.waiter && this.inFlight <= MAX_IN_FLIGHT / 2) this.resume();
  }

  private resume(): void {
    const resume = this.waiter;
    this.waiter = null;
    resume?.();
  }

  /** @internal the worker is gone: nobody may wait on it, and nothing more goes to its successor. */
  release(): void {
    this.released = true;
    this.staged = null;
    this.stagedBytes = 0;
    this.inFlight = 0;
    this.resume();
  }

  async digest(): Promise<string> {
    if (this.released) throw new Error('failed to hash: the hash worker stopped');
    this.flush();
    return (await this.worker.request(this.id, { op: 'ndigest', id: this.id })) as string;
  }

  /** An independent digester in the same state. */
  fork(): WorkerDigester {
    if (!this.alive) throw new Error('failed to fork a hash that is no longer alive');
    this.flush();
    return this.worker.native(null, this.id);
  }

  drop(): void {
    if (this.dropped) return;
    this.dropped = true;
    this.staged = null;
    this.inFlight = 0;
    this.worker.drop(this);
    // Whoever waited to feed more may go on: a dropped digester takes bytes without hashing them.
    this.resume();
  }
}

/**
 * One worker thread for hashing off the event loop: native hashes of bytes as they stream in, and the
 * WebAssembly SHA-256 whose state can be saved in a row. Started on first use, stopped when idle.
 */
export class HashWorker {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly digesters = new Map<number, WeakRef<WorkerDigester>>();
  /**
   * Digesters with bytes on the worker, held strongly until acked. One whose feeder waits for acks may be
   * reachable from here alone: the feeder's frame, and the request handler awaiting it, hang off the promise the
   * digester would resolve, and a paused socket refers to none of them. Held weakly, a collection then freed the
   * whole request mid-body, and it never answered.
   */
  private readonly feeding = new Map<number, WorkerDigester>();
  private readonly unreachable = new FinalizationRegistry<number>((id) => this.forget(id));
  private jobs = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly spare: ArrayBuffer[] = [];

  constructor(private readonly idleStopMs = IDLE_STOP_MS) {}

  private get w(): Worker {
    if (!this.worker) {
      const program = workerProgram(__dirname, 'hash-worker.program');
      const worker = new Worker(program.source, {
        eval: program.eval,
        workerData: { hashWasm: require.resolve('hash-wasm') },
      });
      worker.unref();
      worker.on('message', (m: Reply) => this.receive(m));
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

  private receive(m: Reply): void {
    if (m.ack !== undefined) {
      if (m.data && m.data.byteLength === STAGE && this.spare.length < SPARE_MAX) this.spare.push(m.data);
      this.digesters.get(m.id)?.deref()?.acked(m.ack);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.error !== undefined) p.reject(new Error(`failed to hash in worker: ${m.error}`));
    else if (m.hex !== undefined) p.resolve(m.hex);
    else if (m.state) p.resolve(Buffer.from(m.state));
    else p.reject(new Error('failed to hash in worker: empty answer'));
  }

  private fail(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    for (const ref of this.digesters.values()) ref.deref()?.release();
    this.digesters.clear();
    this.feeding.clear();
  }

  /** @internal `digester` has bytes on the worker. */
  hold(digester: WorkerDigester): void {
    this.feeding.set(digester.id, digester);
  }

  /** @internal `digester` has nothing on the worker any more. */
  letGo(digester: WorkerDigester): void {
    this.feeding.delete(digester.id);
  }

  /** @internal a buffer to gather bytes in, one the worker handed back if there is one. */
  stage(): Buffer {
    const reused = this.spare.pop();
    return reused ? Buffer.from(reused) : Buffer.allocUnsafeSlow(STAGE);
  }

  /** @internal */
  post(message: Record<string, unknown>, transfer?: ArrayBuffer[]): void {
    this.w.postMessage(message, transfer);
  }

  /** @internal */
  request(id: number, message: Record<string, unknown>): Promise<Buffer | string> {
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.post(message);
    });
  }

  /** A native digester on the worker: fresh for `algorithm`, or a fork of digester `from`. */
  native(algorithm: Algorithm | null, from?: number): WorkerDigester {
    this.busy();
    const id = this.nextId++;
    const digester = new WorkerDigester(this, id);
    this.digesters.set(id, new WeakRef(digester));
    this.unreachable.register(digester, id, digester);
    this.post(from === undefined ? { op: 'nopen', id, algorithm } : { op: 'nopen', id, from });
    return digester;
  }

  /** @internal */
  drop(digester: WorkerDigester): void {
    this.unreachable.unregister(digester);
    this.forget(digester.id);
  }

  private forget(id: number): void {
    this.feeding.delete(id);
    if (!this.digesters.delete(id)) return;
    this.worker?.postMessage({ op: 'ndrop', id });
    this.maybeIdle();
  }

  private busy(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private maybeIdle(): void {
    if (this.jobs > 0 || this.digesters.size > 0 || !this.worker) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.jobs === 0 && this.digesters.size === 0) void this.close();
    }, this.idleStopMs);
    this.idleTimer.unref();
  }

  /** Whether a worker thread is running now. */
  get running(): boolean {
    return this.worker !== null;
  }

  /**
   * Continues the resumable SHA-256 `state` (or starts afresh) over `source` and resolves with the state after
   * its last byte. The source is read no faster than the worker hashes.
   */
  async continueOver(state: Buffer | null, source: AsyncIterable<Buffer>): Promise<Buffer> {
    if (state && state.length !== SHA256_STATE_BYTES)
      throw new Error(`bad SHA-256 state of ${state.length} bytes`);
    this.busy();
    this.jobs++;
    try {
      return await this.run(state, source);
    } finally {
      this.jobs--;
      this.maybeIdle();
    }
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
          state = (await this.request(id, { id, op: 'save' })) as Buffer;
          worker.postMessage({ id, op: 'open', state: Uint8Array.from(state).buffer });
          inFlight = 0;
        }
      }
    } catch (e) {
      worker.postMessage({ id, op: 'drop' });
      throw e;
    }
    return (await this.request(id, { id, op: 'save' })) as Buffer;
  }

  async close(): Promise<void> {
    clearTimeout(this.idleTimer);
    const w = this.worker;
    this.worker = null;
    this.fail(new Error('hash worker closed'));
    if (w) await w.terminate();
  }
}

/**
 * Passes `source` through, feeding every chunk to `digester` and waiting when it asks to; `ended` runs once the
 * source is exhausted, before the consumer has done with the last chunk (to ask for the digest meanwhile).
 */
export async function* tapAsync(
  source: AsyncIterable<Buffer>,
  digester: AsyncDigester,
  ended?: () => void,
): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    const wait = digester.update(chunk);
    if (wait) await wait;
    yield chunk;
  }
  ended?.();
}
