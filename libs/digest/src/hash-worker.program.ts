/**
 * The hash worker's program (see HashWorker): it runs on a worker thread, never imported by the registry itself.
 * Native hashes (`n*` operations) are node's own, one per id, forked with `copy()`; resumable SHA-256 jobs are
 * hash-wasm, loaded on first use, whose `save` answers with the state.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import type { IHasher } from 'hash-wasm';

/** What the registry sends. */
interface Message {
  readonly op: 'nopen' | 'nupdate' | 'ndigest' | 'ndrop' | 'open' | 'update' | 'save' | 'drop';
  readonly id: number;
  readonly algorithm?: string;
  readonly from?: number;
  readonly data?: ArrayBuffer;
  readonly length?: number;
  readonly state?: ArrayBuffer;
}

const port = parentPort;
if (!port) throw new Error('the hash worker program runs on a worker thread only');
const hashWasm = (workerData as { hashWasm: string }).hashWasm;

const natives = new Map<number, Hash>();
const jobs = new Map<number, IHasher>();
let wasm: typeof import('hash-wasm') | null = null;
let ready: Promise<void> = Promise.resolve();

function failed(id: number, e: unknown): void {
  port!.postMessage({ id, error: String((e as Error | undefined)?.message ?? e) });
}

function native(m: Message): void {
  try {
    if (m.op === 'nopen') {
      const from = m.from === undefined ? null : natives.get(m.from);
      if (m.from !== undefined && !from) throw new Error(`no hash ${m.from} to fork`);
      natives.set(m.id, from ? from.copy() : createHash(m.algorithm ?? 'sha256'));
    } else if (m.op === 'nupdate') {
      natives.get(m.id)?.update(new Uint8Array(m.data!, 0, m.length));
      // The buffer goes back to be filled again: left here, it would wait for this isolate's next collection.
      port!.postMessage({ id: m.id, ack: m.length, data: m.data }, [m.data!]);
    } else if (m.op === 'ndigest') {
      const h = natives.get(m.id);
      if (!h) throw new Error(`no hash ${m.id}`);
      port!.postMessage({ id: m.id, hex: h.copy().digest('hex') });
    } else if (m.op === 'ndrop') {
      natives.delete(m.id);
    }
  } catch (e) {
    natives.delete(m.id);
    failed(m.id, e);
  }
}

async function resumable(m: Message): Promise<void> {
  try {
    if (m.op === 'open') {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- resolved by the parent, from its modules
      wasm ??= require(hashWasm) as typeof import('hash-wasm');
      const h = await wasm.createSHA256();
      h.init();
      if (m.state) h.load(new Uint8Array(m.state));
      jobs.set(m.id, h);
    } else if (m.op === 'update') {
      jobs.get(m.id)!.update(new Uint8Array(m.data!));
      port!.postMessage({ id: m.id, ack: 0, data: m.data }, [m.data!]);
    } else if (m.op === 'save') {
      const h = jobs.get(m.id)!;
      jobs.delete(m.id);
      const state = h.save();
      const copy = state.buffer.slice(state.byteOffset, state.byteOffset + state.byteLength);
      port!.postMessage({ id: m.id, state: copy });
    } else if (m.op === 'drop') {
      jobs.delete(m.id);
    }
  } catch (e) {
    jobs.delete(m.id);
    failed(m.id, e);
  }
}

port.on('message', (m: Message) => {
  if (m.op.startsWith('n')) native(m);
  // Resumable jobs run in the order they came, each after the one before has finished loading.
  else ready = ready.then(() => resumable(m));
});
