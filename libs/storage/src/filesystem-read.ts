import { createReadStream } from 'node:fs';
import { type FileHandle, lstat, open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { ByteRange, ObjectReader } from './blob-storage';

const READ_CHUNK = 1024 * 1024;

/** One file of an object: the whole object, or one part of a composed one (see `compose`). */
export interface Part {
  readonly path: string;
  readonly start: number;
  readonly size: number;
}

function enoent(key: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`no object at ${key}`);
  e.code = 'ENOENT';
  return e;
}

/** The files of the object `key` at `path`, in order; rejects with code ENOENT when there is none. */
export async function objectParts(key: string, path: string): Promise<Part[]> {
  let st;
  try {
    st = await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw enoent(key);
    throw e;
  }
  if (!st.isDirectory()) return [{ path, start: 0, size: st.size }];
  const names = (await readdir(path)).sort();
  const parts: Part[] = [];
  let start = 0;
  for (const name of names) {
    const { size } = await stat(join(path, name));
    parts.push({ path: join(path, name), start, size });
    start += size;
  }
  return parts;
}

export function partsSize(parts: readonly Part[]): number {
  return parts.reduce((n, p) => n + p.size, 0);
}

export function readParts(parts: readonly Part[], range?: ByteRange): Readable {
  const first = parts[0];
  if (parts.length === 1 && first) {
    return createReadStream(
      first.path,
      range
        ? { start: range.start, end: range.end, highWaterMark: READ_CHUNK }
        : { highWaterMark: READ_CHUNK },
    );
  }
  const total = partsSize(parts);
  const from = range?.start ?? 0;
  const to = range?.end ?? total - 1;
  async function* concat(): AsyncGenerator<Buffer> {
    for (const p of parts) {
      const pEnd = p.start + p.size - 1;
      if (pEnd < from || p.start > to || p.size === 0) continue;
      const s = createReadStream(p.path, {
        start: Math.max(from, p.start) - p.start,
        end: Math.min(to, pEnd) - p.start,
        highWaterMark: READ_CHUNK,
      });
      for await (const chunk of s) yield chunk as Buffer;
    }
  }
  return Readable.from(concat(), { objectMode: false, highWaterMark: READ_CHUNK });
}

export function partsReader(key: string, parts: readonly Part[]): ObjectReader {
  const size = partsSize(parts);
  // Reads may run at once (a sender reads ahead), so a part stays open while a read of it is under way. A part
  // is closed once no read uses it and a later one is open: a blob assembled from thousands of chunks does not
  // hold thousands of descriptors.
  const opened = new Map<number, { readonly handle: Promise<FileHandle>; busy: number }>();
  const closeHandle = (entry: { readonly handle: Promise<FileHandle> }): Promise<void> =>
    entry.handle.then(
      (h) => h.close(),
      () => undefined,
    );
  const closeBehind = (index: number): void => {
    for (const [i, entry] of opened) {
      if (i < index && entry.busy === 0) {
        opened.delete(i);
        void closeHandle(entry).catch(() => undefined);
      }
    }
  };
  return {
    size,
    async read(buffer: Buffer, length: number, position: number): Promise<number> {
      // The part holding `position`; a read stops at its end, and the caller asks again for the rest.
      const i = parts.findIndex((p) => position < p.start + p.size);
      if (i < 0) return 0;
      const part = parts[i]!;
      let entry = opened.get(i);
      if (!entry) {
        const handle = open(part.path, 'r').catch((e: unknown) => {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw enoent(key);
          throw e;
        });
        handle.catch(() => undefined);
        entry = { handle, busy: 0 };
        opened.set(i, entry);
      }
      entry.busy++;
      try {
        const within = position - part.start;
        const handle = await entry.handle;
        const { bytesRead } = await handle.read(buffer, 0, Math.min(length, part.size - within), within);
        return bytesRead;
      } finally {
        entry.busy--;
        closeBehind(i);
      }
    },
    async close(): Promise<void> {
      const entries = [...opened.values()];
      opened.clear();
      await Promise.all(entries.map(closeHandle));
    },
  };
}
