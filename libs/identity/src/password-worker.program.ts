/**
 * The password worker's program (see PasswordHasher): argon2id hashing and verification on a thread of their own,
 * so a login's tens of milliseconds of hashing never hold up the requests on the event loop.
 */
import { randomBytes } from 'node:crypto';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';

interface Request {
  readonly id: number;
  readonly op: 'hash' | 'verify';
  readonly password: string;
  readonly encoded?: string;
  readonly params: { memorySize: number; iterations: number; parallelism: number };
}

const port = parentPort;
if (!port) throw new Error('the password worker program runs on a worker thread only');
// The lowest CPU priority for this thread alone (on Linux, setpriority of the calling task is per thread): a login
// storm then takes only the CPU the registry's own threads leave, and its requests are not held up by it.
try {
  setPriority(19);
} catch {
  // Not allowed here (some sandboxes): hashing runs at the process's priority.
}
// eslint-disable-next-line @typescript-eslint/no-require-imports -- resolved by the parent, which may run from sources
const { argon2id, argon2Verify } = require(
  (workerData as { hashWasm: string }).hashWasm,
) as typeof import('hash-wasm');

port.on('message', (m: Request) => {
  const work =
    m.op === 'hash'
      ? argon2id({
          ...m.params,
          password: m.password,
          salt: randomBytes(16),
          hashLength: 32,
          outputType: 'encoded',
        })
      : argon2Verify({ password: m.password, hash: m.encoded ?? '' });
  work.then(
    (result: string | boolean) => port.postMessage({ id: m.id, result }),
    (e: unknown) => port.postMessage({ id: m.id, error: e instanceof Error ? e.message : String(e) }),
  );
});
