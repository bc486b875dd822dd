import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type pg from 'pg';
import pino from 'pino';
import { PreparedStatements, type Statement, type Tx } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import { MEDIA_TYPE, RegistryError } from '@strata/oci';
import { type BlobService, createRegistry, type ManifestService, type UploadService } from '@strata/registry';
import { FilesystemDriver } from '@strata/storage';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

/** The real statements, counted: how many round trips the batched reads took. */
class CountedStatements extends PreparedStatements {
  reads = 0;
  override async rows<T extends pg.QueryResultRow>(
    statement: Statement,
    values: unknown[],
    tx?: Tx,
  ): Promise<T[]> {
    // The batched point reads, by name.
    if (statement.name.endsWith('_many')) this.reads++;
    return super.rows<T>(statement, values, tx);
  }
}

const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const meta: RequestMeta = { actor: 'test', requestId: null, clientAddr: null, userAgent: null };
/** The value, or the OCI error code it failed with. */
async function outcome<T>(p: Promise<T>): Promise<T | string> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof RegistryError) return e.code;
    throw e;
  }
}

describe('batched reads of blobs and manifests', () => {
  let t: TestDatabase;
  let dataDir: string;
  let uploads: UploadService;
  let blobs: BlobService;
  let manifests: ManifestService;
  let counted: CountedStatements;

  beforeAll(async () => {
    t = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-reads-'));
    const storage = new FilesystemDriver(dataDir);
    await storage.init();
    counted = new CountedStatements(t.pool);
    ({ uploads, blobs, manifests } = createRegistry({
      statements: counted,
      storage,
      logger: pino({ level: 'silent' }),
      uploads: { inlineMax: 1024 },
    }));
  });
  afterAll(async () => {
    await uploads.close();
    await t.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  const push = async (repository: string, size: number): Promise<{ digest: string; size: number }> => {
    const data = randomBytes(size);
    return uploads.upload(repository, sha256(data), Readable.from([data]), meta);
  };

  it('answers each of many concurrent blob reads with its own row, in far fewer round trips', async () => {
    const mine = await Promise.all([10, 2000, 0, 70_000].map((size) => push('reads/mine', size)));
    const theirs = await push('reads/theirs', 33);
    const missing = sha256(randomBytes(8));
    const asked = [...mine, ...mine, theirs, { digest: missing, size: -1 }, ...mine];
    counted.reads = 0;
    const answers = await Promise.all(asked.map((b) => outcome(blobs.stat('reads/mine', b.digest))));
    expect(answers).toEqual(
      asked.map((b) =>
        b === theirs || b.digest === missing
          ? 'BLOB_UNKNOWN'
          : (expect.objectContaining({ digest: b.digest, size: b.size }) as unknown),
      ),
    );
    expect(counted.reads).toBeGreaterThan(0);
    expect(counted.reads).toBeLessThan(asked.length / 2);
  });

  it('answers each of many concurrent manifest reads, by tag and by digest, with or without bytes', async () => {
    const config = await push('reads/app', 100);
    const pushed: { tag: string; digest: string; body: Buffer }[] = [];
    for (const tag of ['a', 'b', 'c']) {
      const layer = await push('reads/app', 200);
      const body = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA_TYPE.OCI_MANIFEST,
          config: { mediaType: MEDIA_TYPE.OCI_CONFIG, ...config },
          layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
        }),
      );
      const { digest } = await manifests.put('reads/app', tag, MEDIA_TYPE.OCI_MANIFEST, body, meta);
      pushed.push({ tag, digest, body });
    }
    counted.reads = 0;
    const asks = pushed.flatMap((m) => [
      { ref: m.tag, want: m },
      { ref: m.digest, want: m },
    ]);
    asks.push(
      { ref: 'nope', want: undefined as never },
      { ref: sha256(randomBytes(4)), want: undefined as never },
    );
    const [gets, heads] = await Promise.all([
      Promise.all(asks.map((a) => outcome(manifests.get('reads/app', a.ref)))),
      Promise.all(asks.map((a) => outcome(manifests.stat('reads/app', a.ref)))),
    ]);
    asks.forEach((a, k) => {
      if (!a.want) {
        expect([gets[k], heads[k]]).toEqual(['MANIFEST_UNKNOWN', 'MANIFEST_UNKNOWN']);
        return;
      }
      expect(gets[k]).toMatchObject({
        digest: a.want.digest,
        size: a.want.body.length,
        content: a.want.body,
      });
      expect(heads[k]).toEqual({
        digest: a.want.digest,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        size: a.want.body.length,
      });
    });
    // Four lookups (by tag or digest, with or without bytes), four asks each: two go at once, two together after.
    expect(counted.reads).toBe(12);
  });
});
