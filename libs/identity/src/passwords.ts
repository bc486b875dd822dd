import { Worker } from 'node:worker_threads';
import { workerProgram } from '@strata/digest';

/**
 * argon2id parameters: OWASP's first recommendation (19 MiB, 2 passes, 1 lane), about 40 ms per hash on one core
 * here. Kept in every hash, so hashes made with other parameters (older ones, or tuned) still verify.
 */
export const ARGON2_PARAMS = { memorySize: 19_456, iterations: 2, parallelism: 1 } as const;

/** Logins waiting beyond this many are refused (429) rather than queued: a guessing flood cannot grow the queue. */
const MAX_PENDING = 64;
/** The worker is stopped after this long without work: its WebAssembly memory is ~20 MiB. */
const IDLE_STOP_MS = 60_000;

export class PasswordsBusyError extends Error {
  constructor() {
    super('too many logins in progress');
  }
}

interface Reply {
  readonly id: number;
  readonly result?: string | boolean;
  readonly error?: string;
}

/**
 * argon2id (hash-wasm) on one worker thread: logins queue there, one hash at a time, so at most one core is spent
 * on them however many clients log in, and the event loop only passes messages.
 */
export class PasswordHasher {
  private worker: Worker | null = null;
  private next = 1;
  private readonly pending = new Map<
    number,
    { resolve(v: string | boolean): void; reject(e: Error): void }
  >();
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly params: typeof ARGON2_PARAMS = ARGON2_PARAMS) {}

  hash(password: string): Promise<string> {
    return this.run('hash', password) as Promise<string>;
  }

  /** False for a wrong password and for an `encoded` that is not an argon2 hash. */
  async verify(password: string, encoded: string): Promise<boolean> {
    if (!encoded.startsWith('$argon2')) return false;
    return (await this.run('verify', password, encoded)) === true;
  }

  async close(): Promise<void> {
    clearTimeout(this.idleTimer);
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }

  private run(op: 'hash' | 'verify', password: string, encoded?: string): Promise<string | boolean> {
    if (this.pending.size >= MAX_PENDING) return Promise.reject(new PasswordsBusyError());
    clearTimeout(this.idleTimer);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.w.postMessage({ id, op, password, encoded, params: this.params });
    });
  }

  private get w(): Worker {
    if (this.worker) return this.worker;
    const program = workerProgram(__dirname, 'password-worker.program');
    const worker = new Worker(program.source, {
      eval: program.eval,
      workerData: { hashWasm: require.resolve('hash-wasm') },
    });
    worker.unref();
    worker.on('message', (m: Reply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.error !== undefined) p.reject(new Error(m.error));
      else p.resolve(m.result!);
      if (this.pending.size === 0) {
        this.idleTimer = setTimeout(() => void this.close(), IDLE_STOP_MS);
        this.idleTimer.unref();
      }
    });
    const fail = (e: Error): void => {
      if (this.worker !== worker) return;
      this.worker = null;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', () => fail(new Error('password worker exited')));
    this.worker = worker;
    return worker;
  }
}
