import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';

/**
 * The answer to a COMMIT can be lost with its connection after the server has committed. The commit of an upload
 * must then neither remove the bytes its committed row names nor tell the client the upload is unknown.
 */
describe.each(['filesystem', 'postgres'] as const)(
  'a blob commit whose COMMIT answer is lost (%s)',
  (storage) => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp({ storage });
    });
    afterAll(async () => {
      jest.restoreAllMocks();
      await t.close();
    });

    it('stands: 201, and the blob reads back whole', async () => {
      const a = randomBytes(100_000);
      const b = randomBytes(100_000);
      const digest = sha256(Buffer.concat([a, b]));
      const post = await fetch(`${t.url}/v2/lost/commit/blobs/uploads/`, { method: 'POST' });
      const location = new URL(post.headers.get('location')!, t.url);
      for (const part of [a, b]) {
        const patch = await fetch(location, { method: 'PATCH', body: part });
        expect(patch.status).toBe(202);
      }

      // The next COMMIT on any connection runs, then fails as a connection lost at that moment would.
      let armed = true;
      const query = pg.Client.prototype.query;
      jest.spyOn(pg.Client.prototype, 'query').mockImplementation(function (
        this: pg.Client,
        ...args: unknown[]
      ) {
        const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text?: string } | undefined)?.text;
        const run = (query as (...a: unknown[]) => unknown).apply(this, args);
        if (!armed || text?.trim().toLowerCase() !== 'commit') return run;
        armed = false;
        return (run as Promise<unknown>).then(() => {
          throw new Error('Connection terminated unexpectedly');
        });
      } as never);

      location.searchParams.set('digest', digest);
      const put = await fetch(location, { method: 'PUT' });
      expect(armed).toBe(false);
      jest.restoreAllMocks();
      expect(put.status).toBe(201);
      expect(put.headers.get('docker-content-digest')).toBe(digest);

      const got = await fetch(`${t.url}/v2/lost/commit/blobs/${digest}`);
      expect(got.status).toBe(200);
      expect(sha256(Buffer.from(await got.arrayBuffer()))).toBe(digest);
      expect(
        t.logs.filter(
          (l) => l.msg === 'commit failed, but the blob is linked in the repository: answered as committed',
        ),
      ).toHaveLength(1);
      expect(t.serverErrors()).toEqual([]);
    });
  },
);
