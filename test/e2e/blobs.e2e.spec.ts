import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ResumableSha256 } from '@strata/digest';
import { errorCodes, pushBlob, randomBlob, sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';

describe.each(['filesystem', 'postgres'] as const)('blob protocol on %s storage', (storage) => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ storage });
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  const url = (path: string): string => `${t.url}${path}`;

  async function startUpload(repo: string): Promise<string> {
    const res = await fetch(url(`/v2/${repo}/blobs/uploads/`), { method: 'POST' });
    expect(res.status).toBe(202);
    expect(res.headers.get('range')).toBe('0-0');
    expect(res.headers.get('docker-upload-uuid')).toMatch(/^[0-9a-f-]{36}$/);
    return res.headers.get('location')!;
  }

  it('answers the version check', async () => {
    const res = await fetch(url('/v2/'));
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
    expect(await res.json()).toEqual({});
  });

  it('uploads monolithically with POST ?digest and reads it back, nested names included', async () => {
    const { data, digest } = randomBlob(100_000);
    const res = await fetch(url(`/v2/org/team/app/blobs/uploads/?digest=${digest}`), {
      method: 'POST',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(201);
    expect(res.headers.get('location')).toBe(`/v2/org/team/app/blobs/${digest}`);
    expect(res.headers.get('docker-content-digest')).toBe(digest);
    const head = await fetch(url(`/v2/org/team/app/blobs/${digest}`), { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe('100000');
    expect(head.headers.get('content-type')).toBe('application/octet-stream');
    expect(head.headers.get('docker-content-digest')).toBe(digest);
    const get = await fetch(url(`/v2/org/team/app/blobs/${digest}`));
    expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
  });

  it('uploads in chunks with and without Content-Range, then commits with final bytes', async () => {
    const { data, digest } = randomBlob(300_000);
    const location = await startUpload('chunky');
    let res = await fetch(url(location), {
      method: 'PATCH',
      body: data.subarray(0, 100_000),
      headers: { 'content-type': 'application/octet-stream', 'content-range': '0-99999' },
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('range')).toBe('0-99999');
    res = await fetch(url(res.headers.get('location')!), {
      method: 'PATCH',
      body: data.subarray(100_000, 250_000),
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('range')).toBe('0-249999');
    const status = await fetch(url(location));
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe('0-249999');
    res = await fetch(url(`${location}?digest=${digest}`), {
      method: 'PUT',
      body: data.subarray(250_000),
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(201);
    const get = await fetch(url(`/v2/chunky/blobs/${digest}`));
    expect(get.headers.get('content-length')).toBe('300000');
    expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
  });

  it('saves the resumable SHA-256 state of a chunked upload in its row once it pauses, off the request path', async () => {
    const { data } = randomBlob(3 * 1024 * 1024);
    const location = await startUpload('resumable');
    for (let i = 0; i < 3; i++) {
      const res = await fetch(url(location), {
        method: 'PATCH',
        body: data.subarray(i << 20, (i + 1) << 20),
      });
      expect(res.status).toBe(202);
    }
    const id = location.split('/').pop()!;
    let row: { size: number; hash_offset: number; hash_state: Buffer | null } | undefined;
    for (let tries = 0; tries < 200; tries++) {
      row = await t.database.db
        .selectFrom('uploads')
        .select(['size', 'hash_offset', 'hash_state'])
        .where('id', '=', id)
        .executeTakeFirstOrThrow();
      if (row.hash_offset === row.size) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(row!.hash_offset).toBe(data.length);
    const resumed = await ResumableSha256.create(row!.hash_state);
    expect(`sha256:${resumed.hex()}`).toBe(sha256(data));
  });

  it('serves byte ranges with 206 across chunk boundaries', async () => {
    const { data, digest } = randomBlob(50_000);
    const location = await startUpload('ranges');
    await fetch(url(location), { method: 'PATCH', body: data.subarray(0, 20_000) });
    await fetch(url(location), { method: 'PATCH', body: data.subarray(20_000) });
    expect((await fetch(url(`${location}?digest=${digest}`), { method: 'PUT' })).status).toBe(201);
    const res = await fetch(url(`/v2/ranges/blobs/${digest}`), { headers: { range: 'bytes=19990-20009' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 19990-20009/50000`);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(data.subarray(19990, 20010));
    const bad = await fetch(url(`/v2/ranges/blobs/${digest}`), { headers: { range: 'bytes=60000-' } });
    expect(bad.status).toBe(416);
  });

  describe('chunks answered before their flush to disk', () => {
    /** Two PATCHed chunks of a fresh upload; the upload's id and location, and its bytes. */
    async function twoChunks(repo: string) {
      const { data, digest } = randomBlob(200_000);
      const location = await startUpload(repo);
      for (const part of [data.subarray(0, 120_000), data.subarray(120_000)]) {
        const res = await fetch(url(location), {
          method: 'PATCH',
          body: part,
          headers: { 'content-type': 'application/octet-stream' },
        });
        expect(res.status).toBe(202);
      }
      const id = location.split('/').pop()!;
      const chunks = await t.database.db
        .selectFrom('upload_chunks')
        .select(['storage_key', 'unsynced_boot'])
        .where('upload_id', '=', id)
        .orderBy('offset')
        .execute();
      return { data, digest, location, id, chunks };
    }

    /** Marks every chunk of the upload as written, unflushed, under `boot`. */
    const writtenUnder = (id: string, boot: string) =>
      t.database.db
        .updateTable('upload_chunks')
        .set({ unsynced_boot: boot })
        .where('upload_id', '=', id)
        .execute();

    const put = (location: string, digest: string) =>
      fetch(url(`${location}?digest=${digest}`), { method: 'PUT' });

    it('are recorded with the boot they were written under, and flushed by the commit', async () => {
      const { data, digest, location, chunks } = await twoChunks('deferred/plain');
      const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
      // Bytes in PostgreSQL are durable as soon as they are written.
      expect(chunks.map((c) => c.unsynced_boot)).toEqual(
        Array(2).fill(storage === 'filesystem' ? boot : null),
      );
      expect((await put(location, digest)).status).toBe(201);
      const get = await fetch(url(`/v2/deferred/plain/blobs/${digest}`));
      expect(Buffer.from(await get.arrayBuffer()).equals(data)).toBe(true);
    });

    if (storage === 'filesystem') {
      it('written under another boot are hashed again from storage: bytes lost in a crash are refused', async () => {
        const { digest, location, id, chunks } = await twoChunks('deferred/crashed');
        await writtenUnder(id, 'before-a-crash');
        // What a crash may leave of bytes never flushed: a file of the right size holding something else.
        await writeFile(join(t.dataDir, 'storage', chunks[1]!.storage_key), Buffer.alloc(80_000));
        const res = await put(location, digest);
        expect(res.status).toBe(400);
        expect(await errorCodes(res)).toEqual(['DIGEST_INVALID']);
        expect((await fetch(url(`/v2/deferred/crashed/blobs/${digest}`), { method: 'HEAD' })).status).toBe(
          404,
        );
      });

      it('written under another boot that did survive are committed, after hashing them again', async () => {
        const { data, digest, location, id } = await twoChunks('deferred/survived');
        await writtenUnder(id, 'another-host');
        expect((await put(location, digest)).status).toBe(201);
        const get = await fetch(url(`/v2/deferred/survived/blobs/${digest}`));
        expect(Buffer.from(await get.arrayBuffer()).equals(data)).toBe(true);
      });

      it('are flushed before their 202 instead with STRATA_DEFER_CHUNK_SYNC=false', async () => {
        const strict = await startTestApp({ storage, env: { STRATA_DEFER_CHUNK_SYNC: 'false' } });
        try {
          const { data, digest } = randomBlob(5000);
          const post = await fetch(`${strict.url}/v2/strict/blobs/uploads/`, { method: 'POST' });
          const location = post.headers.get('location')!;
          const patch = await fetch(`${strict.url}${location}`, {
            method: 'PATCH',
            body: data,
            headers: { 'content-type': 'application/octet-stream' },
          });
          expect(patch.status).toBe(202);
          const chunks = await strict.database.db
            .selectFrom('upload_chunks')
            .select('unsynced_boot')
            .where('upload_id', '=', location.split('/').pop()!)
            .execute();
          expect(chunks).toEqual([{ unsynced_boot: null }]);
          expect((await fetch(`${strict.url}${location}?digest=${digest}`, { method: 'PUT' })).status).toBe(
            201,
          );
          expect(strict.serverErrors()).toEqual([]);
        } finally {
          await strict.close();
        }
      });

      it('whose file is gone make the commit fail with BLOB_UPLOAD_INVALID, not a 500', async () => {
        const { digest, location, chunks } = await twoChunks('deferred/lost');
        await rm(join(t.dataDir, 'storage', chunks[0]!.storage_key));
        const res = await put(location, digest);
        expect(res.status).toBe(400);
        expect(await errorCodes(res)).toEqual(['BLOB_UPLOAD_INVALID']);
      });
    }
  });

  it('refuses an out-of-order or retried chunk with 416 and the current range', async () => {
    const location = await startUpload('order');
    await fetch(url(location), {
      method: 'PATCH',
      body: Buffer.alloc(10, 1),
      headers: { 'content-range': '0-9' },
    });
    const skip = await fetch(url(location), {
      method: 'PATCH',
      body: Buffer.alloc(10, 2),
      headers: { 'content-range': '20-29' },
    });
    expect(skip.status).toBe(416);
    expect(skip.headers.get('range')).toBe('0-9');
    const retry = await fetch(url(location), {
      method: 'PATCH',
      body: Buffer.alloc(10, 1),
      headers: { 'content-range': '0-9' },
    });
    expect(retry.status).toBe(416);
    expect(await errorCodes(retry)).toEqual(['RANGE_INVALID']);
  });

  it('refuses a wrong digest with DIGEST_INVALID and makes nothing visible', async () => {
    const { data } = randomBlob(1000);
    const wrong = sha256('something else');
    const res = await pushBlob(t.url, 'mismatch', data, wrong);
    expect(res.status).toBe(400);
    expect(await errorCodes(res)).toEqual(['DIGEST_INVALID']);
    expect((await fetch(url(`/v2/mismatch/blobs/${wrong}`), { method: 'HEAD' })).status).toBe(404);
    expect((await fetch(url(`/v2/mismatch/blobs/${sha256(data)}`), { method: 'HEAD' })).status).toBe(404);
  });

  it('gives DIGEST_INVALID or UNSUPPORTED for bad digests, never a 500', async () => {
    const location = await startUpload('digests');
    const malformed = await fetch(url(`${location}?digest=sha256:xyz`), { method: 'PUT' });
    expect(malformed.status).toBe(400);
    expect(await errorCodes(malformed)).toEqual(['DIGEST_INVALID']);
    const md5 = await fetch(url(`${location}?digest=md5:d41d8cd98f00b204e9800998ecf8427e`), {
      method: 'PUT',
    });
    expect(md5.status).toBe(400);
    expect(await errorCodes(md5)).toEqual(['UNSUPPORTED']);
    const missing = await fetch(url(location), { method: 'PUT' });
    expect(await errorCodes(missing)).toEqual(['DIGEST_INVALID']);
    const head = await fetch(url('/v2/digests/blobs/sha256:nothex'), { method: 'HEAD' });
    expect(head.status).toBe(400);
  });

  it('accepts sha512 digests', async () => {
    const { createHash } = await import('node:crypto');
    const data = Buffer.from('sha512 content');
    const digest = `sha512:${createHash('sha512').update(data).digest('hex')}`;
    const res = await pushBlob(t.url, 'sha512', data, digest);
    expect(res.status).toBe(201);
    expect(
      (await fetch(url(`/v2/sha512/blobs/${digest}`), { method: 'HEAD' })).headers.get('content-length'),
    ).toBe(String(data.length));
  });

  it('cancels an upload: 204, then BLOB_UPLOAD_UNKNOWN', async () => {
    const location = await startUpload('cancel');
    await fetch(url(location), { method: 'PATCH', body: Buffer.alloc(100) });
    expect((await fetch(url(location), { method: 'DELETE' })).status).toBe(204);
    const res = await fetch(url(location));
    expect(res.status).toBe(404);
    expect(await errorCodes(res)).toEqual(['BLOB_UPLOAD_UNKNOWN']);
    expect((await fetch(url('/v2/cancel/blobs/uploads/not-a-uuid'))).status).toBe(404);
  });

  it('keeps blobs per repository, mounts across and unlinks', async () => {
    const { data, digest } = randomBlob(5000);
    expect((await pushBlob(t.url, 'src', data)).status).toBe(201);
    expect((await fetch(url(`/v2/other/blobs/${digest}`), { method: 'HEAD' })).status).toBe(404);
    const mount = await fetch(url(`/v2/dst/blobs/uploads/?mount=${digest}&from=src`), { method: 'POST' });
    expect(mount.status).toBe(201);
    expect(mount.headers.get('location')).toBe(`/v2/dst/blobs/${digest}`);
    expect((await fetch(url(`/v2/dst/blobs/${digest}`), { method: 'HEAD' })).status).toBe(200);
    const noMount = await fetch(url(`/v2/dst2/blobs/uploads/?mount=${digest}&from=other`), {
      method: 'POST',
    });
    expect(noMount.status).toBe(202);
    expect((await fetch(url(`/v2/dst/blobs/${digest}`), { method: 'DELETE' })).status).toBe(202);
    expect((await fetch(url(`/v2/dst/blobs/${digest}`), { method: 'HEAD' })).status).toBe(404);
    expect((await fetch(url(`/v2/src/blobs/${digest}`), { method: 'HEAD' })).status).toBe(200);
    const again = await fetch(url(`/v2/dst/blobs/${digest}`), { method: 'DELETE' });
    expect(await errorCodes(again)).toEqual(['BLOB_UNKNOWN']);
  });

  it('gives NAME_INVALID for a bad repository name and a JSON 404 for unknown routes', async () => {
    const bad = await fetch(url('/v2/Bad_Name/blobs/uploads/'), { method: 'POST' });
    expect(bad.status).toBe(400);
    expect(await errorCodes(bad)).toEqual(['NAME_INVALID']);
    const unknown = await fetch(url('/v2/a/nothing/here'));
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get('content-type')).toMatch(/application\/json/);
    const badUrl = await fetch(url('/v2/a%zz/blobs/uploads/'), { method: 'POST' });
    expect(badUrl.status).toBe(400);
    expect(await errorCodes(badUrl)).toEqual(['BAD_REQUEST']);
    const head = await fetch(url('/v2/a/nothing/here'), { method: 'HEAD' });
    expect(head.status).toBe(404);
    expect(await head.text()).toBe('');
  });

  it('stores an empty blob', async () => {
    const res = await pushBlob(t.url, 'empty', Buffer.alloc(0));
    expect(res.status).toBe(201);
    const get = await fetch(url(`/v2/empty/blobs/${sha256('')}`));
    expect(get.status).toBe(200);
    expect((await get.arrayBuffer()).byteLength).toBe(0);
  });

  it('records every step as an event with request metadata', async () => {
    const { data, digest } = randomBlob(10);
    await pushBlob(t.url, 'audited', data);
    const events = await t.database.db
      .selectFrom('events')
      .select(['type', 'actor', 'subject', 'request_id', 'user_agent'])
      .where('repository', '=', 'audited')
      .orderBy('seq')
      .execute();
    expect(events.map((e) => e.type)).toEqual(['upload.started', 'upload.chunk', 'upload.committed']);
    expect(events[2]!.subject).toBe(digest);
    for (const e of events) {
      expect(e.actor).toBe('anonymous');
      expect(e.request_id).toBeTruthy();
    }
  });

  it('sends multi-MiB blobs stored in parts whole and by ranges across parts, with the usual headers', async () => {
    const { data, digest } = randomBlob(5 * 1024 * 1024 + 123);
    const location = await startUpload('big/parts');
    const cuts = [0, 1_500_000, 3_200_000, data.length];
    let next = location;
    for (let i = 0; i < cuts.length - 1; i++) {
      const res = await fetch(url(next), {
        method: 'PATCH',
        body: data.subarray(cuts[i], cuts[i + 1]),
        headers: { 'content-type': 'application/octet-stream' },
      });
      expect(res.status).toBe(202);
      next = res.headers.get('location')!;
    }
    const done = new URL(next, t.url);
    done.searchParams.set('digest', digest);
    expect((await fetch(done, { method: 'PUT' })).status).toBe(201);
    const get = await fetch(url(`/v2/big/parts/blobs/${digest}`), { headers: { 'x-request-id': 'dl-1' } });
    expect(get.status).toBe(200);
    expect(get.headers.get('x-request-id')).toBe('dl-1');
    expect(get.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
    expect(get.headers.get('content-length')).toBe(String(data.length));
    expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
    const part = await fetch(url(`/v2/big/parts/blobs/${digest}`), {
      headers: { range: 'bytes=1000000-3300000' },
    });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 1000000-3300000/${data.length}`);
    // Buffer.equals, not toEqual: Jest compares a Buffer element by element, which for 2.3 MB held the event loop
    // (the registry's too) for 40-90 s, past the server's keep-alive timeout, so the next request's reused
    // connection was reset (ECONNRESET in the test after this one).
    expect(Buffer.from(await part.arrayBuffer()).equals(data.subarray(1_000_000, 3_300_001))).toBe(true);
  });

  it('survives clients that hang up in the middle of a download', async () => {
    const { data, digest } = randomBlob(16 * 1024 * 1024);
    expect((await pushBlob(t.url, 'big/abort', data)).status).toBe(201);
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController();
      const res = await fetch(url(`/v2/big/abort/blobs/${digest}`), { signal: ac.signal });
      const reader = res.body!.getReader();
      await reader.read();
      ac.abort();
      await reader.read().catch(() => undefined);
    }
    const get = await fetch(url(`/v2/big/abort/blobs/${digest}`));
    expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
  });

  describe('small blobs kept in their row', () => {
    const INLINE_MAX = 65_536;
    const row = async (digest: string) =>
      t.database.db
        .selectFrom('blobs')
        .select(['size', 'storage_key', (eb) => eb.ref('content').as('content')])
        .where('digest', '=', digest)
        .executeTakeFirst();

    it('stores a blob of up to STRATA_INLINE_BLOB_MAX bytes in its row and serves it whole and by range', async () => {
      const { data, digest } = randomBlob(INLINE_MAX);
      const res = await pushBlob(t.url, 'inline/one', data);
      expect(res.status).toBe(201);
      const stored = await row(digest);
      expect(stored?.storage_key).toBeNull();
      expect(stored?.size).toBe(INLINE_MAX);
      expect(sha256(stored!.content!)).toBe(digest);
      const head = await fetch(url(`/v2/inline/one/blobs/${digest}`), { method: 'HEAD' });
      expect(head.headers.get('content-length')).toBe(String(INLINE_MAX));
      const get = await fetch(url(`/v2/inline/one/blobs/${digest}`));
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
      const part = await fetch(url(`/v2/inline/one/blobs/${digest}`), { headers: { range: 'bytes=10-19' } });
      expect(part.status).toBe(206);
      expect(part.headers.get('content-range')).toBe(`bytes 10-19/${INLINE_MAX}`);
      expect(Buffer.from(await part.arrayBuffer())).toEqual(data.subarray(10, 20));
    });

    it('stores one byte more in storage, not in the row', async () => {
      const { data, digest } = randomBlob(INLINE_MAX + 1);
      expect((await pushBlob(t.url, 'inline/two', data)).status).toBe(201);
      const stored = await row(digest);
      expect(stored?.storage_key).not.toBeNull();
      expect(stored?.content).toBeNull();
      const get = await fetch(url(`/v2/inline/two/blobs/${digest}`));
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
    });

    it('links a small blob already stored in chunks instead of storing it again', async () => {
      const { data, digest } = randomBlob(5000);
      const location = await startUpload('inline/chunked');
      const patch = await fetch(url(location), {
        method: 'PATCH',
        body: data.subarray(0, 2000),
        headers: { 'content-type': 'application/octet-stream' },
      });
      expect(patch.status).toBe(202);
      const put = new URL(patch.headers.get('location')!, t.url);
      put.searchParams.set('digest', digest);
      const done = await fetch(put, {
        method: 'PUT',
        body: data.subarray(2000),
        headers: { 'content-type': 'application/octet-stream' },
      });
      expect(done.status).toBe(201);
      const before = await row(digest);
      expect(before?.storage_key).not.toBeNull();
      expect((await pushBlob(t.url, 'inline/again', data)).status).toBe(201);
      expect(await row(digest)).toEqual(before);
      const get = await fetch(url(`/v2/inline/again/blobs/${digest}`));
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(digest);
    });

    it("never completes another repository's upload, whatever the path says", async () => {
      await pushBlob(t.url, 'inline/theirs', randomBlob(10).data);
      const location = await startUpload('inline/mine');
      const id = location.split('/').pop()!;
      const { data, digest } = randomBlob(1000);
      const res = await fetch(url(`/v2/inline/theirs/blobs/uploads/${id}?digest=${digest}`), {
        method: 'PUT',
        body: data,
        headers: { 'content-type': 'application/octet-stream' },
      });
      expect(res.status).toBe(404);
      expect(await errorCodes(res)).toEqual(['BLOB_UPLOAD_UNKNOWN']);
      expect((await fetch(url(`/v2/inline/theirs/blobs/${digest}`), { method: 'HEAD' })).status).toBe(404);
      const mine = await fetch(url(`${location}?digest=${digest}`), {
        method: 'PUT',
        body: data,
        headers: { 'content-type': 'application/octet-stream' },
      });
      expect(mine.status).toBe(201);
    });

    it('judges each of many concurrent small pushes on its own when they share statements', async () => {
      const distinct = Array.from({ length: 24 }, () => randomBlob(4096));
      const twin = randomBlob(2048);
      const wrong = Array.from({ length: 4 }, () => randomBlob(100));
      // Sessions of another repository, which a PUT under this one must never complete.
      const foreign = await Promise.all(
        Array.from({ length: 4 }, async () => (await startUpload('inline/batch-other')).split('/').pop()!),
      );
      const putForeign = async (id: string): Promise<Response> => {
        const { data, digest } = randomBlob(300);
        return fetch(url(`/v2/inline/batch/blobs/uploads/${id}?digest=${digest}`), {
          method: 'PUT',
          body: data,
          headers: { 'content-type': 'application/octet-stream' },
        });
      };
      const [pushed, twins, refused, stolen] = await Promise.all([
        Promise.all(distinct.map((b) => pushBlob(t.url, 'inline/batch', b.data))),
        Promise.all(Array.from({ length: 8 }, () => pushBlob(t.url, 'inline/batch-twin', twin.data))),
        Promise.all(wrong.map((b) => pushBlob(t.url, 'inline/batch', b.data, randomBlob(100).digest))),
        Promise.all(foreign.map(putForeign)),
      ]);
      expect([...pushed, ...twins].map((r) => r.status)).toEqual(Array(32).fill(201));
      expect(refused.map((r) => r.status)).toEqual(Array(4).fill(400));
      expect(stolen.map((r) => r.status)).toEqual(Array(4).fill(404));
      for (const b of [...distinct, twin]) {
        const repo = b === twin ? 'inline/batch-twin' : 'inline/batch';
        const head = await fetch(url(`/v2/${repo}/blobs/${b.digest}`), { method: 'HEAD' });
        expect([head.status, head.headers.get('content-length')]).toEqual([200, String(b.data.length)]);
        expect(sha256((await row(b.digest))!.content!)).toBe(b.digest);
      }
      for (const b of wrong) expect(await row(b.digest)).toBeUndefined();
      // Every push has its own events, from its own requests; of the eight identical ones, one stored the blob.
      const events = await t.database.db
        .selectFrom('events')
        .select(['type', 'request_id', 'payload', 'xid'])
        .where('repository', 'in', ['inline/batch', 'inline/batch-twin'])
        .orderBy('seq')
        .execute();
      const count = (type: string) => events.filter((e) => e.type === type).length;
      expect([count('upload.started'), count('upload.chunk'), count('upload.committed')]).toEqual([
        36, 32, 32,
      ]);
      expect(new Set(events.map((e) => e.request_id)).size).toBe(36 + 32);
      const twinCommits = events.filter(
        (e) => e.type === 'upload.committed' && (e.payload as { digest: string }).digest === twin.digest,
      );
      expect(twinCommits.map((e) => (e.payload as { existed: boolean }).existed).sort()).toEqual([
        false,
        ...Array<boolean>(7).fill(true),
      ]);
      // Under this load, requests did share statements: one transaction wrote several requests' events.
      const requestsPerTransaction = new Map<string, Set<string | null>>();
      for (const e of events) {
        const set = requestsPerTransaction.get(e.xid) ?? new Set();
        requestsPerTransaction.set(e.xid, set.add(e.request_id));
      }
      expect(Math.max(...[...requestsPerTransaction.values()].map((s) => s.size))).toBeGreaterThan(1);
    });

    it('commits a batch whose pushes differ in every way, each as it would be alone', async () => {
      // The first PUT's statement is held on a row lock, so every push that comes meanwhile waits for it and then
      // goes in one statement: sessions and monolithic POSTs, identical blobs, a foreign session (and an empty blob).
      const holder = await startUpload('inline/mixed');
      const held = randomBlob(50);
      const blobs = Array.from({ length: 3 }, () => randomBlob(3000));
      const twin = randomBlob(700);
      const empty = randomBlob(0);
      const monolithic = randomBlob(900);
      const lock = await t.database.pool.connect();
      try {
        await lock.query('BEGIN');
        await lock.query('SELECT 1 FROM uploads WHERE id = $1 FOR UPDATE', [holder.split('/').pop()]);
        const first = fetch(url(`${holder}?digest=${held.digest}`), {
          method: 'PUT',
          body: held.data,
          headers: { 'content-type': 'application/octet-stream' },
        });
        const sessions = await Promise.all(Array.from({ length: 4 }, () => startUpload('inline/mixed')));
        const foreign = (await startUpload('inline/mixed-other')).split('/').pop()!;
        const putTo = (location: string, b: { data: Buffer; digest: string }) =>
          fetch(url(`${location}?digest=${b.digest}`), {
            method: 'PUT',
            body: b.data,
            headers: { 'content-type': 'application/octet-stream' },
          });
        await new Promise((resolve) => setTimeout(resolve, 300));
        const rest = Promise.all([
          putTo(sessions[0]!, blobs[0]!),
          putTo(sessions[1]!, twin),
          putTo(sessions[2]!, twin),
          putTo(sessions[3]!, empty),
          putTo(`/v2/inline/mixed/blobs/uploads/${foreign}`, blobs[1]!),
          fetch(url(`/v2/inline/mixed/blobs/uploads/?digest=${monolithic.digest}`), {
            method: 'POST',
            body: monolithic.data,
            headers: { 'content-type': 'application/octet-stream' },
          }),
        ]);
        // Long enough for every request to reach the batcher behind the held statement.
        await new Promise((resolve) => setTimeout(resolve, 500));
        await lock.query('COMMIT');
        expect((await first).status).toBe(201);
        expect((await rest).map((r) => r.status)).toEqual([201, 201, 201, 201, 404, 201]);
      } finally {
        lock.release();
      }
      const committed = await t.database.db
        .selectFrom('events')
        .select(['xid', 'payload'])
        .where('repository', '=', 'inline/mixed')
        .where('type', '=', 'upload.committed')
        .execute();
      expect(committed).toHaveLength(6);
      const perTransaction = new Map<string, number>();
      for (const e of committed) perTransaction.set(e.xid, (perTransaction.get(e.xid) ?? 0) + 1);
      // The four accepted bodies shared one statement; the empty blob, which has no body, took the general path.
      expect(Math.max(...perTransaction.values())).toBe(4);
      const existed = (digest: string) =>
        committed
          .map((e) => e.payload as { digest: string; existed: boolean })
          .filter((p) => p.digest === digest)
          .map((p) => p.existed)
          .sort();
      expect(existed(twin.digest)).toEqual([false, true]);
      expect(existed(monolithic.digest)).toEqual([false]);
      for (const b of [held, blobs[0]!, twin, empty, monolithic]) {
        const get = await fetch(url(`/v2/inline/mixed/blobs/${b.digest}`));
        expect(Buffer.from(await get.arrayBuffer()).equals(b.data)).toBe(true);
      }
      expect(
        (await fetch(url(`/v2/inline/mixed/blobs/${blobs[1]!.digest}`), { method: 'HEAD' })).status,
      ).toBe(404);
    });

    it('refuses a small blob whose digest does not match, storing nothing', async () => {
      const { data } = randomBlob(100);
      const wrong = randomBlob(100).digest;
      const res = await pushBlob(t.url, 'inline/bad', data, wrong);
      expect(res.status).toBe(400);
      expect(await errorCodes(res)).toEqual(['DIGEST_INVALID']);
      expect(await row(wrong)).toBeUndefined();
      expect(await row(sha256(data))).toBeUndefined();
    });
  });
});
