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

      // The next statement that commits the blob runs, then fails as a connection lost at that moment would: on the
      // filesystem driver the publication is one statement in its own transaction; on the large-object driver it
      // commits with the composition, in a COMMIT.
      const commits = (text: string): boolean =>
        text === 'commit' || (storage === 'filesystem' && text.includes('strata_publish_blobs('));
      let armed = true;
      const query = pg.Client.prototype.query;
      jest.spyOn(pg.Client.prototype, 'query').mockImplementation(function (
        this: pg.Client,
        ...args: unknown[]
      ) {
        const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text?: string } | undefined)?.text;
        const original = query as (...a: unknown[]) => unknown;
        if (!armed || !commits(text?.trim().toLowerCase() ?? '')) return original.apply(this, args);
        armed = false;
        const lost = new Error('Connection terminated unexpectedly');
        const callback = args[args.length - 1];
        if (typeof callback === 'function') {
          // pg.Pool#query's form: the statement runs to its end, and its caller is told the connection was lost.
          return original.apply(this, [...args.slice(0, -1), () => (callback as (e: Error) => void)(lost)]);
        }
        return (original.apply(this, args) as Promise<unknown>).then(() => {
          throw lost;
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
