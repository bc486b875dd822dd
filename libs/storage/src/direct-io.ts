import { constants } from 'node:fs';
import { type FileHandle, open, rm } from 'node:fs/promises';

/**
 * Direct I/O (O_DIRECT) for the bulk of large writes.
 *
 * A buffered write copies every byte into page-cache pages the kernel must first find. On a virtual machine that
 * hands free memory back to its host (virtio-balloon free page reporting, as on the machines here), each new page
 * costs a fault in the host: writing 512 MiB into fresh page cache ran at ~320 MB/s with `conv=fdatasync`, while
 * the same bytes written with O_DIRECT ran at 1.7-2.5 GB/s. Pushed layers are written once and read later, so
 * keeping them out of the page cache loses little; reads stay buffered, so hot layers are still cached by reads.
 *
 * O_DIRECT needs the buffer's address, the file offset and the length aligned to the device's logical block. Node
 * gives no control over a Buffer's address, but a WebAssembly memory is mapped by whole pages: buffers cut from
 * one at multiples of 4 KiB are page-aligned. Offsets and lengths are kept at multiples of 4 KiB; the last partial
 * block of an object goes through the ordinary file descriptor.
 */

/** Offsets and lengths of direct writes are multiples of this (covers 512-byte and 4 KiB sector devices). */
export const DIRECT_ALIGN = 4096;
/** One direct write; also the size of each pooled buffer. */
export const DIRECT_BUFFER = 1024 * 1024;
/** Buffers one writer cycles through: one filling while the others are on their way to the disk. */
const DEPTH = 3;
/** Buffers per WebAssembly memory (each memory reserves address space, so they are few and shared). */
const SLAB_BUFFERS = 8;
/** At most this many buffers in all (resident only once used): 24 writers going direct at once. */
const MAX_BUFFERS = 72;
const WASM_PAGE = 65536;

// The one piece of the WebAssembly API used here (the project's TypeScript libraries do not declare it).
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number }) => { readonly buffer: ArrayBuffer };
};

/** Page-aligned buffers of DIRECT_BUFFER bytes, shared by every writer of the process. Last freed, first reused. */
class AlignedPool {
  private readonly free: Buffer[] = [];
  private made = 0;

  /** Buffers made and not released, lent out or free. */
  get held(): number {
    return this.made;
  }

  /** Buffers lent out and not yet given back. */
  get lent(): number {
    return this.made - this.free.length;
  }

  take(n: number): Buffer[] | undefined {
    while (this.free.length < n && this.made < MAX_BUFFERS) {
      let memory: { readonly buffer: ArrayBuffer };
      try {
        memory = new WebAssembly.Memory({ initial: (SLAB_BUFFERS * DIRECT_BUFFER) / WASM_PAGE });
      } catch {
        // Each memory reserves address space; where a limit refuses it, writes stay buffered.
        break;
      }
      // Reversed so the lowest addresses go first (the free list is a stack).
      for (let i = SLAB_BUFFERS - 1; i >= 0; i--)
        this.free.push(Buffer.from(memory.buffer, i * DIRECT_BUFFER, DIRECT_BUFFER));
      this.made += SLAB_BUFFERS;
    }
    if (this.free.length < n) return undefined;
    return this.free.splice(this.free.length - n, n);
  }

  give(buffers: readonly Buffer[]): void {
    this.free.push(...buffers);
  }

  /**
   * Lets the collector have every memory none of whose buffers is lent out: a quiet process keeps no more of them
   * resident than its uploads still under way hold.
   */
  releaseIdle(): void {
    const freeIn = new Map<ArrayBufferLike, number>();
    for (const b of this.free) freeIn.set(b.buffer, (freeIn.get(b.buffer) ?? 0) + 1);
    const idle = new Set([...freeIn].filter(([, n]) => n === SLAB_BUFFERS).map(([memory]) => memory));
    if (idle.size === 0) return;
    const kept = this.free.filter((b) => !idle.has(b.buffer));
    this.free.length = 0;
    this.free.push(...kept);
    this.made -= idle.size * SLAB_BUFFERS;
  }
}

const pool = new AlignedPool();

/** Aligned buffers lent out by the process's pool (0 once every direct write has ended). */
export function directBuffersLent(): number {
  return pool.lent;
}

/** Aligned buffers the process's pool holds memory for, lent out or not. */
export function directBuffersHeld(): number {
  return pool.held;
}

/** What the process does when it goes quiet: gives up the memories of the pool that no write is using. */
export function releaseIdleDirectBuffers(): void {
  pool.releaseIdle();
}

/**
 * True when files under `dir` accept O_DIRECT writes from pooled buffers. False when anything in the way fails:
 * a filesystem that refuses O_DIRECT (EINVAL at open or at the first write), one that refuses it otherwise (a
 * FUSE filesystem's EPERM, say), no buffer to be had. Writes are then buffered, which always works.
 */
export async function directWritesWork(dir: string, probeName: string): Promise<boolean> {
  const path = `${dir}/${probeName}`;
  const buffers = pool.take(1);
  if (!buffers) return false;
  let fh: FileHandle | undefined;
  try {
    fh = await open(
      path,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT,
      0o600,
    );
    const { bytesWritten } = await fh.write(buffers[0]!, 0, DIRECT_ALIGN, 0);
    return bytesWritten === DIRECT_ALIGN;
  } catch {
    return false;
  } finally {
    pool.give(buffers);
    await fh?.close().catch(() => undefined);
    await rm(path, { force: true }).catch(() => undefined);
  }
}

/** The errors with which a filesystem or device turns down direct I/O (rather than failing the write). */
function refused(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'EINVAL' || code === 'EOPNOTSUPP' || code === 'ENOTSUP';
}

/**
 * Appends to a file from an aligned offset on, through an O_DIRECT descriptor of its own. Bytes are copied into
 * pooled buffers; a full buffer is written while the next one fills. `finish` writes what is left, its last
 * partial block through `plain`, the file's ordinary descriptor, which is also the fallback should a direct
 * write be refused midway. The caller's flush of `plain` (fdatasync) makes the whole file durable.
 */
export class DirectAppender {
  private index = 0;
  private filled = 0;
  private readonly pending: Promise<void>[];
  private refusedOnce = false;

  private constructor(
    private readonly fh: FileHandle,
    private readonly plain: FileHandle,
    private readonly buffers: Buffer[],
    /** File offset of the first byte of the buffer being filled. */
    private position: number,
  ) {
    this.pending = buffers.map(() => Promise.resolve());
  }

  /** An appender starting at `position` (a multiple of DIRECT_ALIGN), or undefined when none can be had. */
  static async open(path: string, plain: FileHandle, position: number): Promise<DirectAppender | undefined> {
    if (position % DIRECT_ALIGN !== 0) throw new Error(`unaligned direct write offset ${position}`);
    const buffers = pool.take(DEPTH);
    if (!buffers) return undefined;
    try {
      const fh = await open(path, constants.O_WRONLY | constants.O_DIRECT);
      return new DirectAppender(fh, plain, buffers, position);
    } catch (e) {
      pool.give(buffers);
      if (refused(e)) return undefined;
      throw e;
    }
  }

  /** True once a direct write was turned down and the rest went through the ordinary descriptor. */
  get fellBack(): boolean {
    return this.refusedOnce;
  }

  async append(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      // The buffer about to be filled may still be on its way to the disk (and its write may have failed).
      if (this.filled === 0) await this.pending[this.index];
      const buffer = this.buffers[this.index]!;
      const n = Math.min(DIRECT_BUFFER - this.filled, chunk.length - off);
      chunk.copy(buffer, this.filled, off, off + n);
      this.filled += n;
      off += n;
      if (this.filled === DIRECT_BUFFER) this.issue(DIRECT_BUFFER);
    }
  }

  /** Writes the rest and waits for every write; the appender is closed after, whatever happened. */
  async finish(): Promise<void> {
    try {
      const buffer = this.buffers[this.index]!;
      const whole = this.filled - (this.filled % DIRECT_ALIGN);
      const tail = Buffer.from(buffer.subarray(whole, this.filled));
      const tailAt = this.position + whole;
      if (whole > 0) this.issue(whole);
      await Promise.all(this.pending);
      if (tail.length) await writeAll(this.plain, tail, tailAt);
    } finally {
      await this.close();
    }
  }

  /** Waits for writes under way and releases the descriptor and buffers; what was written stays written. */
  async close(): Promise<void> {
    await Promise.allSettled(this.pending);
    await this.fh.close().catch(() => undefined);
    if (this.buffers.length) pool.give(this.buffers.splice(0));
  }

  private issue(length: number): void {
    const buffer = this.buffers[this.index]!;
    const write = this.write(buffer, length, this.position);
    // Awaited when the buffer comes round again or at finish; marked handled so a failure waits for them.
    write.catch(() => undefined);
    this.pending[this.index] = write;
    this.position += length;
    this.filled = 0;
    this.index = (this.index + 1) % this.buffers.length;
  }

  private async write(buffer: Buffer, length: number, position: number): Promise<void> {
    if (!this.refusedOnce) {
      try {
        const { bytesWritten } = await this.fh.write(buffer, 0, length, position);
        if (bytesWritten === length) return;
        // A short direct write (a full disk, say): the rest goes the ordinary way, which reports the error.
        return await writeAll(this.plain, buffer.subarray(bytesWritten, length), position + bytesWritten);
      } catch (e) {
        if (!refused(e)) throw e;
        this.refusedOnce = true;
      }
    }
    await writeAll(this.plain, buffer.subarray(0, length), position);
  }
}

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}
