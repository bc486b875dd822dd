import { Readable } from 'node:stream';

/** Bytes already read, streamed again. */
export function replay(chunks: readonly Buffer[]): AsyncIterable<Buffer> {
  return Readable.from(chunks, { objectMode: false }) as AsyncIterable<Buffer>;
}

export async function* emptyIterable(): AsyncGenerator<Buffer> {}

/**
 * Reads `body` until more than `limit` bytes have come. A body that ended by then is returned whole (`rest`
 * null); otherwise `rest` streams all of it, the bytes already read first, so at most `limit` plus one read's
 * worth is ever held.
 */
export async function readHead(
  body: AsyncIterable<Buffer>,
  limit: number,
): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> | null }> {
  if (limit <= 0) return { head: Buffer.alloc(0), rest: body };
  const it = body[Symbol.asyncIterator]();
  const read: Buffer[] = [];
  let bytes = 0;
  while (bytes <= limit) {
    const next = await it.next();
    if (next.done) return { head: Buffer.concat(read, bytes), rest: null };
    read.push(next.value);
    bytes += next.value.length;
  }
  async function* rest(): AsyncGenerator<Buffer> {
    yield* read.splice(0);
    for (;;) {
      const next = await it.next();
      if (next.done) return;
      yield next.value;
    }
  }
  return { head: Buffer.alloc(0), rest: rest() };
}
