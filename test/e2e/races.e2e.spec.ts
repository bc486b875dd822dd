import { sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';
import { createTestDatabase, type TestDatabase } from '../support/test-database';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const BLOB_SIZE = 32 * 1024 * 1024;
const CHUNK = 4 * 1024 * 1024;
const CLIENTS = 16;

/** One client's chunked push of `data`: POST, PATCH per chunk (alternating over `bases`), PUT, then HEAD. */
async function chunkedPush(
  bases: readonly string[],
  repo: string,
  data: Buffer,
  digest: string,
  client: number,
): Promise<{ put: number; head: number; length: string | null; headDigest: string | null }> {
  let base = bases[client % bases.length]!;
  const post = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  expect(post.status).toBe(202);
  let location = post.headers.get('location')!;
  for (let off = 0, i = 0; off < data.length; off += CHUNK, i++) {
    base = bases[(client + i) % bases.length]!;
    const end = Math.min(off + CHUNK, data.length) - 1;
    const res = await fetch(`${base}${location}`, {
      method: 'PATCH',
      body: data.subarray(off, end + 1),
      headers: { 'content-type': 'application/octet-stream', 'content-range': `${off}-${end}` },
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('range')).toBe(`0-${end}`);
    location = res.headers.get('location')!;
  }
  base = bases[(client + 1) % bases.length]!;
  const put = await fetch(`${base}${location}?digest=${digest}`, { method: 'PUT' });
  // The HEAD goes to the other replica where there is one: a 201 anywhere must be true everywhere.
  const headBase = bases[(client + 2) % bases.length]!;
  const head = await fetch(`${headBase}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
  return {
    put: put.status,
    head: head.status,
    length: head.headers.get('content-length'),
    headDigest: head.headers.get('docker-content-digest'),
  };
}

describe.each(['filesystem', 'postgres'] as const)(
  'concurrent identical uploads on %s storage',
  (storage) => {
    let database: TestDatabase;
    let dataDir: string;
    let a: TestApp;
    let b: TestApp;

    beforeAll(async () => {
      database = await createTestDatabase();
      dataDir = await mkdtemp(join(tmpdir(), 'strata-races-'));
      a = await startTestApp({ storage, database, dataDir });
      b = await startTestApp({ storage, database, dataDir });
    });

    afterAll(async () => {
      expect(a.serverErrors()).toEqual([]);
      expect(b.serverErrors()).toEqual([]);
      await a.close();
      await b.close();
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    });

    it(`gives every one of ${CLIENTS} clients a 201 and a true HEAD right after (one replica)`, async () => {
      const data = randomBytes(BLOB_SIZE);
      const digest = sha256(data);
      const results = await Promise.all(
        Array.from({ length: CLIENTS }, (_, i) => chunkedPush([a.url], 'race/one', data, digest, i)),
      );
      for (const r of results) {
        expect(r).toEqual({ put: 201, head: 200, length: String(BLOB_SIZE), headDigest: digest });
      }
      const blobs = await database.db
        .selectFrom('blobs')
        .select(['digest', 'size'])
        .where('digest', '=', digest)
        .execute();
      expect(blobs).toEqual([{ digest, size: BLOB_SIZE }]);
      const get = await fetch(`${b.url}/v2/race/one/blobs/${digest}`);
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
      const committed = await database.db
        .selectFrom('events')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('type', '=', 'upload.committed')
        .where('subject', '=', digest)
        .executeTakeFirstOrThrow();
      expect(Number(committed.n)).toBe(CLIENTS);
    });

    it(`does the same with the ${CLIENTS} clients and their chunks spread over two replicas`, async () => {
      const data = randomBytes(BLOB_SIZE);
      const digest = sha256(data);
      const results = await Promise.all(
        Array.from({ length: CLIENTS }, (_, i) => chunkedPush([a.url, b.url], 'race/two', data, digest, i)),
      );
      for (const r of results) {
        expect(r).toEqual({ put: 201, head: 200, length: String(BLOB_SIZE), headDigest: digest });
      }
      const get = await fetch(`${a.url}/v2/race/two/blobs/${digest}`);
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
    });

    it('lets exactly one of two racing PATCHes at the same offset win, without corrupting the winner', async () => {
      for (let round = 0; round < 5; round++) {
        const post = await fetch(`${a.url}/v2/race/patch/blobs/uploads/`, { method: 'POST' });
        const location = post.headers.get('location')!;
        const x = randomBytes(1024 * 1024);
        const y = randomBytes(1024 * 1024);
        const [rx, ry] = await Promise.all([
          fetch(`${a.url}${location}`, {
            method: 'PATCH',
            body: x,
            headers: { 'content-range': `0-${x.length - 1}` },
          }),
          fetch(`${b.url}${location}`, {
            method: 'PATCH',
            body: y,
            headers: { 'content-range': `0-${y.length - 1}` },
          }),
        ]);
        const statuses = [rx.status, ry.status].sort();
        expect(statuses).toEqual([202, 416]);
        const winner = rx.status === 202 ? x : y;
        const put = await fetch(`${b.url}${location}?digest=${sha256(winner)}`, { method: 'PUT' });
        expect(put.status).toBe(201);
        const get = await fetch(`${a.url}/v2/race/patch/blobs/${sha256(winner)}`);
        expect(Buffer.from(await get.arrayBuffer()).equals(winner)).toBe(true);
      }
    });

    it(`gives ${CLIENTS} clients pushing the same small blob (kept in its row) a 201 and a true HEAD each`, async () => {
      const data = randomBytes(4096);
      const digest = sha256(data);
      const results = await Promise.all(
        Array.from({ length: CLIENTS }, async (_, i) => {
          const base = [a.url, b.url][i % 2]!;
          const post = await fetch(`${base}/v2/race/small/blobs/uploads/`, { method: 'POST' });
          const put = await fetch(`${base}${post.headers.get('location')!}?digest=${digest}`, {
            method: 'PUT',
            body: data,
            headers: { 'content-type': 'application/octet-stream' },
          });
          const head = await fetch(`${[b.url, a.url][i % 2]!}/v2/race/small/blobs/${digest}`, {
            method: 'HEAD',
          });
          return { put: put.status, head: head.status, length: head.headers.get('content-length') };
        }),
      );
      for (const r of results) expect(r).toEqual({ put: 201, head: 200, length: '4096' });
      const rows = await database.db
        .selectFrom('blobs')
        .select(['size', 'storage_key'])
        .where('digest', '=', digest)
        .execute();
      expect(rows).toEqual([{ size: 4096, storage_key: null }]);
      const committed = await database.db
        .selectFrom('events')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('type', '=', 'upload.committed')
        .where('subject', '=', digest)
        .executeTakeFirstOrThrow();
      expect(Number(committed.n)).toBe(CLIENTS);
    });
  },
);
