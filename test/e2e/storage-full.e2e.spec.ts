import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { reportSkip } from '../support/debian';
import { sha256 } from '../support/http';
import { startServer, type ServerProcess } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const SIZE = '16m';

/** A small file system of its own (tmpfs) to fill: mounting needs root. Null when it can be mounted. */
function whyNoSmallFileSystem(): string | null {
  if (process.getuid?.() !== 0) return 'mounting a small tmpfs to fill needs root';
  const probe = join(tmpdir(), `strata-tmpfs-probe-${process.pid}`);
  try {
    execFileSync('mkdir', ['-p', probe]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], { stdio: 'pipe' });
    execFileSync('umount', [probe]);
    return null;
  } catch (e) {
    return `mount -t tmpfs failed here: ${String((e as { stderr?: unknown }).stderr ?? e).trim()}`;
  } finally {
    execFileSync('rm', ['-rf', probe]);
  }
}

const skip = whyNoSmallFileSystem();
reportSkip('the full-disk tests', skip);

/** Every file under `dir`, as paths relative to it. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}

(skip ? describe.skip : describe)('a full disk under the blob storage', () => {
  let database: TestDatabase;
  let mount: string;
  let server: ServerProcess;
  const filler = (): string => join(mount, 'filler');

  /** Fills the file system but for `leftBytes`. */
  async function fillBut(leftBytes: number): Promise<void> {
    const { bavail, bsize } = await statfs(mount);
    await writeFile(filler(), Buffer.alloc(Math.max(0, bavail * bsize - leftBytes)));
  }

  function storageLines(): Record<string, unknown>[] {
    return server.lines.filter((l) =>
      String(l.msg).startsWith('failed to store blob bytes: no space left on the storage'),
    );
  }

  beforeAll(async () => {
    database = await createTestDatabase();
    mount = await mkdtemp(join(tmpdir(), 'strata-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${SIZE}`, 'tmpfs', mount]);
    server = await startServer({ DATABASE_URL: database.url, STRATA_DATA_DIR: mount });
  });
  afterAll(async () => {
    server.child.kill('SIGTERM');
    await server.exited;
    await database.drop();
    execFileSync('umount', [mount]);
    await rm(mount, { recursive: true, force: true });
  });

  afterEach(async () => {
    await rm(filler(), { force: true });
  });

  it('answers a monolithic push 503 UNAVAILABLE with Retry-After, keeps no bytes of it, and takes it once there is room', async () => {
    const data = randomBytes(4 << 20);
    const digest = sha256(data);
    await fillBut(1 << 20);
    const from = server.lines.length;
    const res = await fetch(`${server.url}/v2/full/mono/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(503);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
    const body = (await res.json()) as { errors: { code: string; detail: unknown }[] };
    expect(body.errors.map((e) => e.code)).toEqual(['UNAVAILABLE']);
    expect(JSON.stringify(body.errors[0]!.detail)).toMatch(/out of storage space/);
    expect((await fetch(`${server.url}/v2/full/mono/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
    // Nothing written of it is kept: no blob, no partial file.
    expect(await filesUnder(join(mount, 'storage'))).toEqual([]);
    const mine = server.lines.slice(from);
    expect(mine.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    expect(storageLines().slice(-1)[0]).toMatchObject({ level: 'warn', code: 'ENOSPC' });
    expect(mine.filter((l) => storageLines().includes(l))).toHaveLength(1);

    await rm(filler());
    const again = await fetch(`${server.url}/v2/full/mono/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(again.status).toBe(201);
    const got = await fetch(`${server.url}/v2/full/mono/blobs/${digest}`);
    expect(sha256(Buffer.from(await got.arrayBuffer()))).toBe(digest);
  });

  it('answers a chunk that does not fit 503, and the upload goes on from where it was once there is room', async () => {
    const first = randomBytes(1 << 20);
    const second = randomBytes(4 << 20);
    const digest = sha256(Buffer.concat([first, second]));
    const post = await fetch(`${server.url}/v2/full/chunked/blobs/uploads/`, { method: 'POST' });
    expect(post.status).toBe(202);
    const patch = (location: string, data: Buffer, start: number): Promise<Response> =>
      fetch(new URL(location, server.url), {
        method: 'PATCH',
        body: data,
        headers: {
          'content-type': 'application/octet-stream',
          'content-range': `${start}-${start + data.length - 1}`,
        },
      });
    const ok = await patch(post.headers.get('location')!, first, 0);
    expect(ok.status).toBe(202);
    const location = ok.headers.get('location')!;
    await fillBut(1 << 20);
    const from = server.lines.length;
    // On the keep-alive connection the next requests use too: the body that failed mid-way is read to its end
    // and thrown away, so the connection goes on serving (it used to be reset once the answer was out).
    const full = await patch(location, second, first.length);
    expect(full.status).toBe(503);
    expect(Number(full.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(((await full.json()) as { errors: { code: string }[] }).errors.map((e) => e.code)).toEqual([
      'UNAVAILABLE',
    ]);
    expect(server.lines.slice(from).filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    // The upload still ends where the accepted chunk did.
    const status = await fetch(new URL(location, server.url));
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe(`0-${first.length - 1}`);

    await rm(filler());
    const retried = await patch(location, second, first.length);
    expect(retried.status).toBe(202);
    const done = new URL(retried.headers.get('location')!, server.url);
    done.searchParams.set('digest', digest);
    const put = await fetch(done, { method: 'PUT' });
    expect(put.status).toBe(201);
    const got = await fetch(`${server.url}/v2/full/chunked/blobs/${digest}`);
    expect(sha256(Buffer.from(await got.arrayBuffer()))).toBe(digest);
  });
});
