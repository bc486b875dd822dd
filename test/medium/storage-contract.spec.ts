import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { constants as fsConstants, promises as fsPromises } from 'node:fs';

import {
  type FileHandle,
  lstat,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  statfs,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { sql } from 'kysely';
import {
  type BlobStorage,
  blobKey,
  type ByteRange,
  chunkKey,
  directBuffersLent,
  FilesystemDriver,
  LargeObjectDriver,
  StorageKeyError,
} from '@strata/storage';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const MiB = 1024 * 1024;

interface Harness {
  readonly storage: BlobStorage;
  /** Composes the way the registry does: through composeThen, publishing nothing. */
  compose(key: string, parts: readonly string[]): Promise<void>;
  /** What a failed or abandoned operation may have left behind: temp files, incomplete or orphaned objects. */
  leftovers(): Promise<string[]>;
  close(): Promise<void>;
}

async function filesystemHarness(): Promise<Harness> {
  const root = await mkdtemp(join(tmpdir(), 'strata-storage-'));
  const storage = new FilesystemDriver(root);
  await storage.init();
  return {
    storage,
    compose: (key, parts) => storage.composeThen(key, parts, () => Promise.resolve()),
    leftovers: async () => {
      // Anything below tmp/ but the per-process temp directories themselves: a partial file or composed directory.
      const tmp = join(root, 'tmp');
      const entries = await readdir(tmp, { recursive: true });
      const found: string[] = [];
      for (const entry of entries) {
        if (entry.includes(sep) || !(await lstat(join(tmp, entry))).isDirectory()) found.push(`tmp/${entry}`);
      }
      return found;
    },
    close: () => rm(root, { recursive: true, force: true }),
  };
}

async function largeObjectHarness(): Promise<Harness> {
  const t = await createTestDatabase();
  const storage = new LargeObjectDriver(t.db);
  await storage.init();
  return {
    storage,
    compose: (key, parts) => storage.composeThen(key, parts, () => Promise.resolve()),
    leftovers: async () => {
      const r = await sql<{ what: string }>`
        SELECT 'incomplete ' || key AS what FROM storage_objects WHERE NOT complete
        UNION ALL
        SELECT 'orphan large object ' || m.oid AS what FROM pg_largeobject_metadata m
        WHERE NOT EXISTS (SELECT 1 FROM storage_objects o WHERE o.loid = m.oid OR o.parts @> ARRAY[m.oid])`.execute(
        t.db,
      );
      return r.rows.map((row) => row.what);
    },
    close: async () => {
      // pool.end() resolves before the server has seen every connection close; the DROP ... WITH (FORCE) that
      // follows may terminate one that is still idle, which is expected here.
      t.pool.on('error', () => undefined);
      await t.drop();
    },
  };
}

/** `data` in slices of `size`, each after a turn of the event loop, as bytes arrive from a client. */
async function* chunksOf(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += size) {
    await tick();
    yield data.subarray(off, Math.min(off + size, data.length));
  }
}

async function* failingAfter(data: Buffer, chunk: number, error: Error): AsyncGenerator<Buffer> {
  yield* chunksOf(data, chunk);
  throw error;
}

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

const hex = (): string => randomBytes(32).toString('hex');

/** The full garbage collector, for measuring memory that is really held rather than not yet collected. */
function gcFunction(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

describe.each([
  ['filesystem', filesystemHarness],
  ['postgres', largeObjectHarness],
] as const)('BlobStorage contract: %s driver', (_name, makeHarness) => {
  let h: Harness;
  let storage: BlobStorage;

  beforeAll(async () => {
    h = await makeHarness();
    storage = h.storage;
  });
  afterAll(async () => {
    await h.close();
  });
  afterEach(async () => {
    expect(await h.leftovers()).toEqual([]);
  });

  const read = async (key: string, range?: ByteRange): Promise<Buffer> =>
    collect(await storage.read(key, range));

  /** Writes `data` at a fresh chunk key, in uneven slices, and returns the key. */
  async function writeChunk(data: Buffer, uploadId = randomUUID(), offset = 0): Promise<string> {
    const key = chunkKey(uploadId, offset);
    expect(await storage.write(key, chunksOf(data, 65_537))).toBe(data.length);
    return key;
  }

  it('passes its readiness check', async () => {
    await expect(storage.check()).resolves.toBeUndefined();
  });

  describe('write and read', () => {
    it('streams a source into a new object and returns its size', async () => {
      const data = randomBytes(300_000);
      const key = blobKey(hex());
      expect(await storage.size(key)).toBeNull();
      expect(await storage.write(key, chunksOf(data, 7_001))).toBe(data.length);
      expect(await storage.size(key)).toBe(data.length);
      expect((await read(key)).equals(data)).toBe(true);
    });

    it('keeps every byte in order whatever the source chunks: one larger than several slices, odd sizes after it', async () => {
      // The large-object driver cuts the stream into slices written at once on several connections.
      const data = randomBytes(11 * MiB + 4097);
      async function* uneven(): AsyncGenerator<Buffer> {
        yield data.subarray(0, 5 * MiB + 3);
        for (let at = 5 * MiB + 3; at < data.length; at += 99_991) {
          await tick();
          yield data.subarray(at, Math.min(data.length, at + 99_991));
        }
      }
      const key = blobKey(hex());
      expect(await storage.write(key, uneven())).toBe(data.length);
      expect((await read(key)).equals(data)).toBe(true);
    });

    it('stores an empty object', async () => {
      const key = blobKey(hex());
      expect(await storage.write(key, chunksOf(Buffer.alloc(0), 1))).toBe(0);
      expect(await storage.size(key)).toBe(0);
      expect(await read(key)).toEqual(Buffer.alloc(0));
    });

    it('reads inclusive byte ranges: first byte, last byte, middle, whole', async () => {
      // Larger than the large-object driver's 4 MiB slice, so ranges cross its statement boundaries too.
      const data = randomBytes(9 * MiB + 123);
      const key = await writeChunk(data);
      const n = data.length;
      const ranges: ByteRange[] = [
        { start: 0, end: 0 },
        { start: n - 1, end: n - 1 },
        { start: 1000, end: 1999 },
        { start: 4 * MiB - 10, end: 4 * MiB + 10 },
        { start: 3, end: 8 * MiB + 5 },
        { start: 0, end: n - 1 },
      ];
      for (const range of ranges) {
        const got = await read(key, range);
        expect({ range, length: got.length }).toEqual({ range, length: range.end - range.start + 1 });
        expect(got.equals(data.subarray(range.start, range.end + 1))).toBe(true);
      }
    });

    it('rejects reading a missing object with ENOENT and reports no size', async () => {
      const key = blobKey(hex());
      expect(await storage.size(key)).toBeNull();
      await expect(storage.read(key)).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(storage.read(key, { start: 0, end: 0 })).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('leaves nothing at the key when the source fails midway, and passes the error on', async () => {
      const key = blobKey(hex());
      const failure = new Error('client went away');
      // More than one large-object slice is sent before the failure.
      await expect(storage.write(key, failingAfter(randomBytes(5 * MiB), 256 * 1024, failure))).rejects.toBe(
        failure,
      );
      expect(await storage.size(key)).toBeNull();
      await expect(storage.read(key)).rejects.toMatchObject({ code: 'ENOENT' });
      // afterEach: no temp files, incomplete rows or orphaned large objects.
    });

    it('leaves nothing when the source fails before its first byte', async () => {
      const key = blobKey(hex());
      const failure = new Error('no bytes');
      await expect(storage.write(key, failingAfter(Buffer.alloc(0), 1, failure))).rejects.toBe(failure);
      expect(await storage.size(key)).toBeNull();
    });
  });

  describe('deferred flush', () => {
    it('writes without waiting for the disk, and sync makes the objects durable', async () => {
      const data = randomBytes(3 * MiB + 17);
      const keys = Array.from({ length: 6 }, () => chunkKey(randomUUID(), 0));
      for (const key of keys)
        expect(await storage.write(key, chunksOf(data, 65_537), { durable: false })).toBe(data.length);
      await storage.sync(keys);
      for (const key of keys) expect((await read(key)).equals(data)).toBe(true);
      // Synced again, or by another process than the writer: still fine.
      await storage.sync(keys);
      for (const key of keys) await storage.delete(key);
    });

    it('rejects syncing a missing object with ENOENT', async () => {
      const key = await writeChunk(randomBytes(10));
      const missing = chunkKey(randomUUID(), 0);
      await expect(storage.sync([key, missing])).rejects.toMatchObject({ code: 'ENOENT' });
      await storage.delete(key);
    });
  });

  describe('positional reads', () => {
    it('read any piece of a composed object, at once and out of order, stopping at its end', async () => {
      const upload = randomUUID();
      const datas = [randomBytes(300_000), randomBytes(1), randomBytes(2 * MiB + 5)];
      const parts: string[] = [];
      let offset = 0;
      for (const data of datas) {
        parts.push(await writeChunk(data, upload, offset));
        offset += data.length;
      }
      const whole = Buffer.concat(datas);
      const key = blobKey(hex());
      await h.compose(key, parts);
      const reader = await storage.openReader!(key);
      try {
        expect(reader.size).toBe(whole.length);
        // Reads under way together, across the parts' seams; each may stop early, and is asked again for the rest.
        const pieces = [
          [2 * MiB, 299_990],
          [0, 512 * 1024],
          [300_000, 1],
          [299_999, 3],
          [whole.length - 7, 100],
        ] as const;
        const got = await Promise.all(
          pieces.map(async ([at, length]) => {
            const out = Buffer.alloc(length);
            let n = 0;
            for (;;) {
              const m = await reader.read(out.subarray(n), length - n, at + n);
              if (m === 0) break;
              n += m;
            }
            return out.subarray(0, n);
          }),
        );
        pieces.forEach(([at, length], i) =>
          expect(got[i]!.equals(whole.subarray(at, at + length))).toBe(true),
        );
        expect(await reader.read(Buffer.alloc(10), 10, whole.length)).toBe(0);
      } finally {
        await reader.close();
      }
    });
  });

  describe('compose', () => {
    it('of one part makes a copy with the same bytes and leaves the part as it was', async () => {
      const data = randomBytes(200_000);
      const part = await writeChunk(data);
      const key = blobKey(hex());
      await h.compose(key, [part]);
      expect(await storage.size(key)).toBe(data.length);
      expect((await read(key)).equals(data)).toBe(true);
      expect(await storage.size(part)).toBe(data.length);
      expect((await read(part)).equals(data)).toBe(true);
    });

    it('of several parts is their concatenation in order, readable in ranges across parts', async () => {
      const upload = randomUUID();
      const sizes = [100_000, 1, 5 * MiB, 3];
      const datas = sizes.map((n) => randomBytes(n));
      const parts: string[] = [];
      let offset = 0;
      for (const data of datas) {
        parts.push(await writeChunk(data, upload, offset));
        offset += data.length;
      }
      const whole = Buffer.concat(datas);
      const key = blobKey(hex());
      await h.compose(key, parts);
      expect(await storage.size(key)).toBe(whole.length);
      expect((await read(key)).equals(whole)).toBe(true);

      const b1 = sizes[0]!; // first byte of part 2
      const b2 = b1 + 1; // first byte of part 3
      const b3 = b2 + sizes[2]!; // first byte of part 4
      const ranges: ByteRange[] = [
        { start: 0, end: 0 },
        { start: whole.length - 1, end: whole.length - 1 },
        { start: b1 - 1, end: b1 }, // last byte of part 1, the whole of part 2
        { start: b1, end: b1 }, // part 2 alone
        { start: b1 - 2, end: b2 + 2 }, // parts 1, 2 and 3
        { start: b3 - 1, end: b3 + 1 }, // end of part 3, start of part 4
        { start: 10, end: whole.length - 2 }, // all parts, trimmed at both ends
        { start: b2 + 1000, end: b2 + 2000 }, // inside part 3
      ];
      for (const range of ranges) {
        const got = await read(key, range);
        expect({ range, length: got.length }).toEqual({ range, length: range.end - range.start + 1 });
        expect(got.equals(whole.subarray(range.start, range.end + 1))).toBe(true);
      }
      for (const [i, part] of parts.entries()) expect((await read(part)).equals(datas[i]!)).toBe(true);
    });

    it('fails when a part is missing and leaves nothing at the key', async () => {
      const present = await writeChunk(randomBytes(1000));
      const missing = chunkKey(randomUUID(), 1000);
      const key = blobKey(hex());
      await expect(h.compose(key, [present, missing])).rejects.toThrow();
      expect(await storage.size(key)).toBeNull();
      expect(await storage.size(present)).toBe(1000);
    });
  });

  describe('objects never share bytes', () => {
    it('deleting a composed object leaves its parts, deleting the parts leaves the composed object', async () => {
      const a = randomBytes(70_000);
      const b = randomBytes(30_000);
      const upload = randomUUID();
      const pa = await writeChunk(a, upload, 0);
      const pb = await writeChunk(b, upload, a.length);
      const single = blobKey(hex());
      const multi = blobKey(hex());
      await h.compose(single, [pa]);
      await h.compose(multi, [pa, pb]);

      await storage.delete(multi);
      expect(await storage.size(multi)).toBeNull();
      expect((await read(pa)).equals(a)).toBe(true);
      expect((await read(pb)).equals(b)).toBe(true);
      expect((await read(single)).equals(a)).toBe(true);

      const again = blobKey(hex());
      await h.compose(again, [pa, pb]);
      await storage.delete(pa);
      await storage.delete(pb);
      expect(await storage.size(pa)).toBeNull();
      expect(await storage.size(pb)).toBeNull();
      expect((await read(again)).equals(Buffer.concat([a, b]))).toBe(true);
      expect((await read(single)).equals(a)).toBe(true);
      expect(await read(again, { start: a.length - 1, end: a.length })).toEqual(
        Buffer.from([a[a.length - 1]!, b[0]!]),
      );
    });

    it('deleting one object leaves another written with the same content', async () => {
      const data = randomBytes(10_000);
      const digestHex = createHash('sha256').update(data).digest('hex');
      const first = blobKey(digestHex);
      const second = blobKey(digestHex);
      expect(second).not.toBe(first);
      await storage.write(first, chunksOf(data, 4096));
      await storage.write(second, chunksOf(data, 4096));
      await storage.delete(first);
      expect(await storage.size(first)).toBeNull();
      expect((await read(second)).equals(data)).toBe(true);
    });
  });

  describe('delete', () => {
    it('removes the object and is idempotent', async () => {
      const key = await writeChunk(randomBytes(5000));
      await storage.delete(key);
      expect(await storage.size(key)).toBeNull();
      await expect(storage.read(key)).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(storage.delete(key)).resolves.toBeUndefined();
      await expect(storage.delete(blobKey(hex()))).resolves.toBeUndefined();
    });
  });

  describe('keys', () => {
    const good = (): string => blobKey(hex());
    const bad = [
      '../etc/passwd',
      'blobs/../../etc/passwd',
      'blobs/ab/../../../etc/passwd',
      `blobs/ab/${'a'.repeat(64)}/../../x`,
      `blobs/ab/${'a'.repeat(32)}..${'a'.repeat(32)}`,
      `tmp/ab/${'a'.repeat(64)}`,
      `manifests/ab/${'a'.repeat(64)}`,
      `/blobs/ab/${'a'.repeat(64)}`,
      `blobs/ab/${'A'.repeat(64)}`,
      `blobs/ab/${'a'.repeat(64)}/x`,
      'blobs/ab/',
      '',
    ];

    it('made by blobKey() and chunkKey() are accepted and never repeat', () => {
      const keys = [blobKey(hex()), chunkKey(randomUUID(), 0), chunkKey(randomUUID(), 123_456_789)];
      for (const key of keys) expect(key).toMatch(/^(blobs|uploads)\/[0-9a-f]{2}\//);
      const h1 = hex();
      expect(blobKey(h1)).not.toBe(blobKey(h1));
    });

    it.each(bad)('refuses %j in every operation', async (key) => {
      await expect(storage.write(key, chunksOf(Buffer.from('x'), 1))).rejects.toBeInstanceOf(StorageKeyError);
      await expect(storage.read(key)).rejects.toBeInstanceOf(StorageKeyError);
      await expect(storage.size(key)).rejects.toBeInstanceOf(StorageKeyError);
      await expect(storage.delete(key)).rejects.toBeInstanceOf(StorageKeyError);
      await expect(h.compose(key, [good()])).rejects.toBeInstanceOf(StorageKeyError);
      await expect(h.compose(good(), [key])).rejects.toBeInstanceOf(StorageKeyError);
    });
  });

  it('writes 64 MiB streamed from a generator without holding it in memory', async () => {
    const gc = gcFunction();
    const total = 64 * MiB;
    const chunk = MiB;
    const expected = createHash('sha256');
    gc();
    const before = process.memoryUsage();
    const growth = { rss: 0, buffers: 0 };
    const sample = (): void => {
      gc();
      const now = process.memoryUsage();
      growth.rss = Math.max(growth.rss, (now.rss - before.rss) / MiB);
      growth.buffers = Math.max(growth.buffers, (now.arrayBuffers - before.arrayBuffers) / MiB);
    };
    async function* source(): AsyncGenerator<Buffer> {
      for (let i = 0; i < total / chunk; i++) {
        // A fresh buffer each time: a driver that kept the chunks would keep them all alive.
        const b = Buffer.allocUnsafe(chunk).fill(i % 251);
        b.writeUInt32BE(i, 0);
        expected.update(b);
        if (i % 8 === 7) sample();
        await tick();
        yield b;
      }
    }
    const key = blobKey(hex());
    expect(await storage.write(key, source())).toBe(total);
    sample();
    // rss alone misses retained chunks (the allocator reuses memory the process already holds), so the bytes held
    // in Buffers are bounded too: a driver keeping every chunk would hold 56 MiB or more at the last sample. The
    // margin allows for backing stores that V8 frees on a background thread after gc() returns.
    expect(growth.rss).toBeLessThan(48);
    expect(growth.buffers).toBeLessThan(32);
    expect(await storage.size(key)).toBe(total);
    const actual = createHash('sha256');
    for await (const part of await storage.read(key)) actual.update(part as Buffer);
    expect(actual.digest('hex')).toBe(expected.digest('hex'));
    await storage.delete(key);
  });
});

describe('FilesystemDriver direct writes', () => {
  let root: string;
  let direct: FilesystemDriver;
  let buffered: FilesystemDriver;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'strata-direct-'));
    // The head of each blob kept in the page cache is 64 MiB by default; 1 MiB here, to test with small objects.
    direct = new FilesystemDriver(join(root, 'direct'), { cachedHead: MiB });
    buffered = new FilesystemDriver(join(root, 'buffered'), { directIo: false });
    await direct.init();
    await buffered.init();
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  /** Bytes of the file held in the page cache, as util-linux's fincore reports them. */
  const cached = (path: string): number =>
    Number(
      execFileSync('fincore', ['--bytes', '--noheadings', '--raw', '-o', 'RES', path], { encoding: 'utf8' }),
    );

  it('are taken up on the filesystems that support O_DIRECT, and never when turned off', async () => {
    const { type } = await statfs(root);
    // ext4, xfs, btrfs: where the tests and the registry's data directory live on these machines.
    if ([0xef53, 0x58465342, 0x9123683e].includes(type)) expect(direct.directWrites).toBe(true);
    expect(buffered.directWrites).toBe(false);
  });

  it('keep the bytes past the first MiB out of the page cache', async () => {
    if (!direct.directWrites) return; // the filesystem turned O_DIRECT down: the test above says whether it may
    const data = randomBytes(16 * MiB + 4097);
    const key = blobKey(hex());
    expect(await direct.write(key, chunksOf(data, 65_537))).toBe(data.length);
    // The first MiB (plus up to a block) and the last partial block go through the page cache; a buffered
    // write leaves all 16 MiB there.
    expect(cached(join(root, 'direct', key))).toBeLessThanOrEqual(MiB + 3 * 4096);
    const control = blobKey(hex());
    await buffered.write(control, chunksOf(data, 65_537));
    expect(cached(join(root, 'buffered', control))).toBeGreaterThan(8 * MiB);
    expect((await collect(await direct.read(key))).equals(data)).toBe(true);
  });

  it('by default keep the first 64 MiB of each blob cached, counting a chunk from where it sits in its blob', async () => {
    const storage = new FilesystemDriver(join(root, 'default'));
    await storage.init();
    if (!storage.directWrites) return;
    const data = randomBytes(8 * MiB + 1);
    const head = chunkKey(randomUUID(), 0);
    const tail = chunkKey(randomUUID(), 70 * MiB);
    await storage.write(head, chunksOf(data, 65_537), { blobOffset: 0 });
    await storage.write(tail, chunksOf(data, 65_537), { blobOffset: 70 * MiB });
    expect(cached(join(root, 'default', head))).toBeGreaterThanOrEqual(8 * MiB);
    expect(cached(join(root, 'default', tail))).toBeLessThanOrEqual(MiB + 3 * 4096);
    for (const key of [head, tail]) expect((await collect(await storage.read(key))).equals(data)).toBe(true);
  });

  // Sizes about the switch to direct writes (after 1 MiB) and the 4 KiB blocks, in slices that cross both.
  it.each([
    ['one byte short of the switch', MiB - 1, 65_537],
    ['exactly the switch', MiB, 65_537],
    ['one byte past it', MiB + 1, 65_537],
    ['whole blocks and whole buffers', 4 * MiB, 4096],
    ['a partial last block', 3 * MiB + 4095, 65_537],
    ['one slice of all of it', 5 * MiB + 17, 5 * MiB + 17],
    ['slices of odd sizes', 7 * MiB + 12_345, 100_003],
  ])('store every byte in order: %s', async (_what, size, slice) => {
    const data = randomBytes(size);
    for (const storage of [direct, buffered]) {
      for (const durable of [true, false]) {
        const key = chunkKey(randomUUID(), 0);
        expect(await storage.write(key, chunksOf(data, slice), { durable })).toBe(size);
        await storage.sync([key]);
        expect(await storage.size(key)).toBe(size);
        expect((await collect(await storage.read(key))).equals(data)).toBe(true);
        await storage.delete(key);
      }
    }
  });

  /** Every byte of `key` through `openReader`, in `piece`-sized positional reads from `from` on. */
  async function readAll(storage: FilesystemDriver, key: string, piece: number, from = 0): Promise<Buffer> {
    const reader = await storage.openReader(key);
    try {
      const out = Buffer.alloc(reader.size - from);
      for (let pos = from; pos < reader.size; ) {
        const n = await reader.read(out.subarray(pos - from), Math.min(piece, reader.size - pos), pos);
        expect(n).toBeGreaterThan(0);
        expect(n).toBeLessThanOrEqual(piece);
        pos += n;
      }
      expect(await reader.read(Buffer.alloc(10), 10, reader.size)).toBe(0);
      return out;
    } finally {
      await reader.close();
    }
  }

  it('are read back through openReader in pieces of any size, from any offset', async () => {
    const data = randomBytes(9 * MiB + 4321);
    const key = blobKey(hex());
    await direct.write(key, chunksOf(data, 65_537));
    for (const [piece, from] of [
      [512 * 1024, 0],
      [100_003, 0],
      [3 * MiB, 17],
      [MiB, 5 * MiB - 1],
      [1, data.length - 1],
    ] as const) {
      expect((await readAll(direct, key, piece, from)).equals(data.subarray(from))).toBe(true);
    }
    // Backwards and forwards within one reader.
    const reader = await direct.openReader(key);
    try {
      for (const pos of [8 * MiB, 100, 3 * MiB + 5, 3 * MiB + 5, 9 * MiB + 4000, 0]) {
        const got = Buffer.alloc(1000);
        const n = await reader.read(got, 1000, pos);
        expect(got.subarray(0, n).equals(data.subarray(pos, pos + n))).toBe(true);
        expect(n).toBeGreaterThan(0);
      }
    } finally {
      await reader.close();
    }
  });

  it('read composed objects part after part, large and small parts alike', async () => {
    const sizes = [3 * MiB + 1, 10, 2 * MiB, MiB + 4095, 1];
    const parts = sizes.map((n) => randomBytes(n));
    const keys: string[] = [];
    let offset = 0;
    const upload = randomUUID();
    for (const part of parts) {
      const key = chunkKey(upload, offset);
      await direct.write(key, chunksOf(part, 65_537));
      keys.push(key);
      offset += part.length;
    }
    const key = blobKey(hex());
    await direct.compose(key, keys);
    const whole = Buffer.concat(parts);
    expect((await readAll(direct, key, 512 * 1024)).equals(whole)).toBe(true);
    expect((await readAll(direct, key, 777_777, 3 * MiB)).equals(whole.subarray(3 * MiB))).toBe(true);
  });

  it('serve reads at once, across parts, and close every part they opened', async () => {
    const sizes = [3 * MiB + 1, 10, 2 * MiB, 700_001, 1];
    const parts = sizes.map((n) => randomBytes(n));
    const upload = randomUUID();
    const keys: string[] = [];
    let offset = 0;
    for (const part of parts) {
      keys.push(chunkKey(upload, offset));
      await direct.write(keys[keys.length - 1]!, chunksOf(part, 65_537));
      offset += part.length;
    }
    const key = blobKey(hex());
    await direct.compose(key, keys);
    const whole = Buffer.concat(parts);
    const fds = async (): Promise<number> => (await readdir('/proc/self/fd')).length;
    const before = await fds();
    const reader = await direct.openReader(key);
    // Pieces read all at once, as a sender reading ahead does, most of them crossing a part's end.
    const piece = 300_007;
    const positions = Array.from({ length: Math.ceil(whole.length / piece) }, (_, i) => i * piece);
    const got = await Promise.all(
      positions.map(async (pos) => {
        const out = Buffer.alloc(Math.min(piece, whole.length - pos));
        let n = 0;
        while (n < out.length) {
          const r = await reader.read(out.subarray(n), out.length - n, pos + n);
          expect(r).toBeGreaterThan(0);
          n += r;
        }
        return out;
      }),
    );
    expect(Buffer.concat(got).equals(whole)).toBe(true);
    await reader.close();
    expect(await fds()).toBe(before);
  });

  it('leave no file and no buffer behind when many writes fail midway at once', async () => {
    const failure = new Error('client went away');
    const data = randomBytes(6 * MiB + 5);
    // More writers than the buffer pool serves at once: the later ones write the ordinary way.
    const results = await Promise.allSettled(
      Array.from({ length: 40 }, () => direct.write(blobKey(hex()), failingAfter(data, 262_144, failure))),
    );
    expect(results.every((r) => r.status === 'rejected' && r.reason === failure)).toBe(true);
    expect(await readdir(join(root, 'direct', 'tmp'), { recursive: true })).toHaveLength(1); // its own tmp dir
    expect(directBuffersLent()).toBe(0);
    // Every buffer went back: 40 writes at once now succeed, bytes intact.
    const keys = Array.from({ length: 40 }, () => blobKey(hex()));
    await Promise.all(keys.map((key) => direct.write(key, chunksOf(data, 262_144))));
    for (const key of keys) expect((await collect(await direct.read(key))).equals(data)).toBe(true);
    expect(directBuffersLent()).toBe(0);
  });

  /** Makes the next O_DIRECT descriptors the driver opens fail their `fail`-th write (1-based) with `code`. */
  function failDirectWrite(code: string, fail: number): jest.SpyInstance {
    const real = fsPromises.open.bind(fsPromises);
    return jest.spyOn(fsPromises, 'open').mockImplementation(async (...args: Parameters<typeof real>) => {
      const fh = await real(...args);
      const flags = args[1];
      if (
        typeof flags === 'number' &&
        (flags & fsConstants.O_DIRECT) !== 0 &&
        (flags & fsConstants.O_CREAT) === 0
      ) {
        let writes = 0;
        const write = fh.write.bind(fh) as (...a: unknown[]) => Promise<unknown>;
        (fh as unknown as { write: (...a: unknown[]) => Promise<unknown> }).write = (...a: unknown[]) =>
          ++writes === fail ? Promise.reject(Object.assign(new Error(code), { code })) : write(...a);
      }
      return fh;
    });
  }

  it('go the ordinary way, bytes intact, when the filesystem refuses a direct write midway', async () => {
    const storage = new FilesystemDriver(join(root, 'refusing'), { cachedHead: MiB });
    await storage.init();
    if (!storage.directWrites) return;
    const data = randomBytes(9 * MiB + 333);
    const spy = failDirectWrite('EINVAL', 3);
    try {
      const key = blobKey(hex());
      expect(await storage.write(key, chunksOf(data, 65_537))).toBe(data.length);
      expect((await collect(await storage.read(key))).equals(data)).toBe(true);
    } finally {
      spy.mockRestore();
    }
    // Refused once, never tried again by this driver: the rest of its writes are buffered.
    expect(storage.directWrites).toBe(false);
    expect(directBuffersLent()).toBe(0);
  });

  it('fail the object, leaving nothing, when a direct write fails for good', async () => {
    const data = randomBytes(9 * MiB + 333);
    const key = blobKey(hex());
    const spy = failDirectWrite('EIO', 2);
    try {
      await expect(direct.write(key, chunksOf(data, 65_537))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      spy.mockRestore();
    }
    expect(await direct.size(key)).toBeNull();
    expect(await readdir(join(root, 'direct', 'tmp'), { recursive: true })).toHaveLength(1);
    expect(directBuffersLent()).toBe(0);
    expect(direct.directWrites).toBe(true);
  });
});

describe('FilesystemDriver sync', () => {
  let root: string;
  let storage: FilesystemDriver;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'strata-sync-'));
    storage = new FilesystemDriver(root);
    await storage.init();
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  /** Sectors written so far to the block device holding `path` (the kernel's counter, /sys/dev/block/…/stat). */
  async function sectorsWritten(path: string): Promise<number | null> {
    const { dev } = await stat(path, { bigint: true });
    const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
    const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
    const text = await readFile(`/sys/dev/block/${major}:${minor}/stat`, 'utf8').catch(() => null);
    return text === null ? null : Number(text.trim().split(/\s+/)[6]);
  }

  it('flushes every object asked for, several at once', async () => {
    const keys = Array.from({ length: 20 }, () => chunkKey(randomUUID(), 0));
    for (const key of keys) await writeFile(join(root, key), randomBytes(4096));
    const probe = await fsPromises.open(join(root, keys[0]!), 'r');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    let running = 0;
    let most = 0;
    const flushed: number[] = [];
    const real = proto.datasync;
    const spy = jest.spyOn(proto, 'datasync').mockImplementation(async function (this: FileHandle) {
      most = Math.max(most, ++running);
      try {
        await real.call(this);
        flushed.push(this.fd);
      } finally {
        running--;
      }
    });
    try {
      await storage.sync(keys);
    } finally {
      spy.mockRestore();
    }
    expect(flushed).toHaveLength(keys.length);
    expect(most).toBeGreaterThan(1);
  });

  it('puts on the disk the bytes of objects another process wrote and never flushed', async () => {
    // Written as a process that died before its flush would leave them: in the page cache only. The kernel
    // writes such pages back after 30 s, so within this test only the driver's flush puts them on the disk.
    const size = 24 * MiB;
    const keys = Array.from({ length: 3 }, () => chunkKey(randomUUID(), 0));
    for (const key of keys) await writeFile(join(root, key), randomBytes(size));
    const before = await sectorsWritten(root);
    // A filesystem on no block device of its own (tmpfs, overlayfs) has no counter to read: nothing to measure.
    if (before === null) return;
    await storage.sync(keys);
    // Other writers on the same device can only add to the count; without the flush it stays near zero.
    const written = ((await sectorsWritten(root))! - before) * 512;
    expect(written).toBeGreaterThanOrEqual(keys.length * size);
  });
});

describe('LargeObjectDriver compose joins the caller transaction', () => {
  let t: TestDatabase;
  let storage: LargeObjectDriver;

  beforeAll(async () => {
    t = await createTestDatabase();
    storage = new LargeObjectDriver(t.db);
    await storage.init();
  });
  afterAll(async () => {
    t.pool.on('error', () => undefined);
    await t.drop();
  });

  async function part(data: Buffer): Promise<string> {
    const key = chunkKey(randomUUID(), 0);
    await storage.write(key, chunksOf(data, 1000));
    return key;
  }

  const orphans = async (): Promise<number> =>
    (
      await sql<{ n: number }>`
        SELECT count(*)::int AS n FROM pg_largeobject_metadata m
        WHERE NOT EXISTS (SELECT 1 FROM storage_objects o WHERE o.loid = m.oid OR o.parts @> ARRAY[m.oid])`.execute(
        t.db,
      )
    ).rows[0]!.n;

  it('is invisible outside the transaction until it commits', async () => {
    const data = randomBytes(5000);
    const p = await part(data);
    const key = blobKey(hex());
    await t.db.transaction().execute(async (tx) => {
      await storage.compose(key, [p], tx);
      expect(await storage.size(key)).toBeNull();
      await expect(storage.read(key)).rejects.toMatchObject({ code: 'ENOENT' });
    });
    expect(await storage.size(key)).toBe(data.length);
    expect((await collect(await storage.read(key))).equals(data)).toBe(true);
  });

  it('is gone, large object included, when the transaction rolls back', async () => {
    const a = randomBytes(3000);
    const b = randomBytes(4000);
    const parts = [await part(a), await part(b)];
    const key = blobKey(hex());
    const objects = async (): Promise<number> =>
      (await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_largeobject_metadata`.execute(t.db))
        .rows[0]!.n;
    const before = await objects();
    const failure = new Error('blob row conflict');
    await expect(
      t.db.transaction().execute(async (tx) => {
        await storage.compose(key, parts, tx);
        const inside = await sql<{
          n: number;
        }>`SELECT count(*)::int AS n FROM storage_objects WHERE key = ${key}`.execute(tx);
        expect(inside.rows[0]!.n).toBe(1);
        throw failure;
      }),
    ).rejects.toBe(failure);
    expect(await storage.size(key)).toBeNull();
    await expect(storage.read(key)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await objects()).toBe(before);
    expect(await orphans()).toBe(0);
    expect((await collect(await storage.read(parts[0]!))).equals(a)).toBe(true);
    expect((await collect(await storage.read(parts[1]!))).equals(b)).toBe(true);
  });

  it('removes the large object of a deleted key in the same statement', async () => {
    const key = await part(randomBytes(100));
    await storage.delete(key);
    expect(await orphans()).toBe(0);
  });
});
