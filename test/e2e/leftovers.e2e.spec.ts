import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type ServerProcess } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

/** A PATCH that sends `first` bytes of a declared `total` and then waits for `rest()` before the remainder. */
function heldPatch(url: string, total: number, first: number) {
  const req = request(url, {
    method: 'PATCH',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(total) },
  });
  const status = new Promise<number>((resolve, reject) => {
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
  });
  req.write(randomBytes(first));
  return {
    status,
    finish: (): void => void req.end(randomBytes(total - first)),
    abandon: (): void => void req.destroy(),
  };
}

/** The partial files under each process's temp directory, by directory. */
async function partials(dataDir: string): Promise<Map<string, number>> {
  const top = join(dataDir, 'storage', 'tmp');
  const found = new Map<string, number>();
  for (const dir of await readdir(top)) {
    let bytes = 0;
    for (const f of await readdir(join(top, dir))) bytes += (await stat(join(top, dir, f))).size;
    found.set(dir, bytes);
  }
  return found;
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('partial files of uploads cut by a crash', () => {
  let database: TestDatabase;
  let dataDir: string;
  const running: ServerProcess[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-leftovers-'));
  });
  afterAll(async () => {
    for (const s of running) s.child.kill('SIGKILL');
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  const start = async (): Promise<ServerProcess> => {
    const s = await startServer({ DATABASE_URL: database.url, STRATA_DATA_DIR: dataDir });
    running.push(s);
    return s;
  };
  const upload = async (s: ServerProcess): Promise<string> => {
    const post = await fetch(`${s.url}/v2/leftovers/blobs/uploads/`, { method: 'POST' });
    expect(post.status).toBe(202);
    return `${s.url}${post.headers.get('location')!}`;
  };

  it('are removed at the next start, while a live upload of another replica keeps its bytes', async () => {
    const a = await start();
    // A live upload on replica a, half sent: its bytes sit in a's temp directory.
    const live = heldPatch(await upload(a), 4 << 20, 1 << 20);
    let aDir = '';
    await until('the live upload to reach storage', async () => {
      for (const [dir, bytes] of await partials(dataDir)) if (bytes >= 1 << 20) aDir = dir;
      return aDir !== '';
    });
    // Another replica starting on the same storage leaves them alone, and the upload completes.
    const b = await start();
    expect((await partials(dataDir)).get(aDir)).toBeGreaterThanOrEqual(1 << 20);
    live.finish();
    expect(await live.status).toBe(202);

    // Now a is killed in the middle of another upload: its partial file is left behind.
    const cut = heldPatch(await upload(a), 4 << 20, 1 << 20);
    // Its client sees the connection die with the process.
    const cutEnded = cut.status.catch(() => 0);
    await until(
      'the cut upload to reach storage',
      async () => ((await partials(dataDir)).get(aDir) ?? 0) >= 1 << 20,
    );
    a.child.kill('SIGKILL');
    await a.exited;
    cut.abandon();
    await cutEnded;
    expect((await partials(dataDir)).get(aDir)).toBeGreaterThanOrEqual(1 << 20);

    // The next start removes it; the running replica's directory stays.
    const c = await start();
    const after = await partials(dataDir);
    expect(after.has(aDir)).toBe(false);
    expect(after.size).toBe(2);
    for (const s of [b, c]) {
      s.child.kill('SIGTERM');
      expect(await s.exited).toBe(0);
    }
  });
});
