import type { FastifyRequest } from 'fastify';
import { RegistryError } from '@strata/oci';
import type { ContentRange } from '@strata/registry';

/**
 * The request body as a stream, never buffered; null when the request has none. A reader that stops early (an
 * error while storing the bytes, a size limit) leaves the request as it is, paused, rather than destroying it:
 * a destroyed request takes its socket with it, so the answer would go out and the connection be reset under it,
 * and the client's next request on it would fail. The error filter then discards the rest (`discardBody`).
 */
export function requestBody(req: FastifyRequest): AsyncIterable<Buffer> | null {
  const length = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  if (!chunked && (length === undefined || length === '0')) return null;
  const raw = req.raw;
  return { [Symbol.asyncIterator]: () => raw.iterator({ destroyOnReturn: false }) as AsyncIterator<Buffer> };
}

/**
 * Reads at most `limit` bytes of the body, whole. The first byte past it stops the read with MANIFEST_TOO_LARGE,
 * and the iterator is left unreturned on purpose: returning it would destroy the request and its socket before
 * the 413 is written (the error filter then discards the rest of the body, see `discardBody`).
 */
export async function readLimited(body: AsyncIterable<Buffer> | null, limit: number): Promise<Buffer> {
  if (body === null) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  const it = body[Symbol.asyncIterator]();
  for (;;) {
    const next = await it.next();
    if (next.done) break;
    size += next.value.length;
    if (size > limit) throw new RegistryError('MANIFEST_TOO_LARGE', { limit });
    chunks.push(next.value);
  }
  return Buffer.concat(chunks, size);
}

/** How much of a refused body is read and thrown away so that its client, still writing it, gets the answer. */
export const DISCARD_MAX_BYTES = 8 * 1024 * 1024;

/**
 * Reads and discards the rest of a body that an error was answered before: a client that writes its whole body
 * before reading (most do, for a body that fits their buffers) would otherwise have its write fail with EPIPE and
 * never see the answer, since a socket closed with unread data is reset. Past `max` bytes the connection is closed
 * (a reset, for a client still sending a large body: nothing better is to be had without reading it all). A body
 * read to its end leaves the connection usable for the next request.
 */
export function discardBody(req: FastifyRequest, max = DISCARD_MAX_BYTES): void {
  const raw = req.raw;
  let left = max;
  const drain = (): void => {
    for (let piece = raw.read() as Buffer | null; piece !== null; piece = raw.read() as Buffer | null) {
      left -= piece.length;
      if (left < 0) {
        raw.off('readable', drain);
        raw.socket?.destroy();
        return;
      }
    }
  };
  // Reading through 'readable' works whether or not a handler began the body (an iterator it left behind keeps a
  // 'readable' listener of its own, under which 'data' would never flow), and it keeps Node from draining the
  // body itself, without a bound, once the answer is sent.
  raw.on('readable', drain);
  drain();
}

/** `Content-Range: <start>-<end>` as the spec writes it; `bytes <start>-<end>[/<total>]` accepted too. */
export function parseContentRange(header: string | string[] | undefined): ContentRange | null {
  if (header === undefined) return null;
  const value = Array.isArray(header) ? header[0] : header;
  const m = /^(?:bytes[ =])?(\d{1,16})-(\d{1,16})(?:\/(?:\d{1,16}|\*))?$/.exec((value ?? '').trim());
  if (!m) throw new RegistryError('RANGE_INVALID', { 'content-range': value });
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) throw new RegistryError('RANGE_INVALID', { 'content-range': value });
  return { start, end };
}

/** A `Range: bytes=a-b` request header against an object of `size` bytes; null for the whole object. */
export function parseByteRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | null | 'unsatisfiable' {
  if (header === undefined) return null;
  const m = /^bytes=(\d{0,16})-(\d{0,16})$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // unsupported forms (multiple ranges) get the whole blob
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    return { start: Math.max(size - suffix, 0), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}
