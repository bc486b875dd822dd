import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushBlob, sha256 } from '../support/http';
import { startServer, type ServerProcess } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const READERS = 96;
const BLOB = 64 << 20;
/** What each reader takes before it stops reading. */
const TASTE = 256 << 10;
/** Linux's USER_HZ, the unit of /proc/<pid>/stat times. */
const CLOCK_TICKS = 100;

/** A download read by hand: the bytes received so far, and a pause once `taste` bytes have come. */
interface Reader {
  readonly socket: Socket;
  readonly received: () => number;
  readonly paused: Promise<void>;
  readonly closed: Promise<void>;
  readonly body: () => Buffer;
}

function download(port: number, path: string, taste: number): Promise<Reader> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    const parts: Buffer[] = [];
    let received = 0;
    let tasted = false;
    let markPaused!: () => void;
    const paused = new Promise<void>((r) => (markPaused = r));
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      parts.push(d);
      received += d.length;
      if (received >= taste && !tasted) {
        tasted = true;
        socket.pause();
        markPaused();
      }
    });
    socket.once('connect', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
      resolve({
        socket,
        received: () => received,
        paused,
        closed,
        body: () => {
          const all = Buffer.concat(parts);
          const end = all.indexOf('\r\n\r\n');
          return end < 0 ? Buffer.alloc(0) : all.subarray(end + 4);
        },
      });
    });
    socket.once('error', reject);
  });
}

/** The server's CPU time so far (user and system), in milliseconds. */
async function cpuMs(server: ServerProcess): Promise<number> {
  const stat = await readFile(`/proc/${server.child.pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

async function timedGet(url: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(url);
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
  return performance.now() - t0;
}

describe.each(['postgres', 'filesystem'] as const)(
  'downloads from %s storage whose clients stop reading',
  (driver) => {
    let database: TestDatabase;
    let dataDir: string;
    let server: ServerProcess;

    beforeAll(async () => {
      database = await createTestDatabase();
      dataDir = await mkdtemp(join(tmpdir(), 'strata-paused-readers-'));
      server = await startServer({
        DATABASE_URL: database.url,
        STRATA_DATA_DIR: dataDir,
        STRATA_STORAGE: driver,
        // The readers stay paused for the whole test: what bounds them must be the reads, not the idle cut.
        STRATA_CLIENT_IDLE_TIMEOUT: '10m',
      });
    });
    afterAll(async () => {
      server.child.kill('SIGTERM');
      await server.exited;
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    });

    it(`hold little memory each: ${READERS} paused readers of a 64 MiB blob keep the server under 250 MiB, and /v2/ answering within 50 ms`, async () => {
      const blob = randomBytes(BLOB);
      const digest = sha256(blob);
      expect((await pushBlob(server.url, 'paused/readers', blob, digest)).status).toBe(201);
      const path = `/v2/paused/readers/blobs/${digest}`;
      // One whole download first, so what is measured next is the readers, not code and pools warming up.
      const whole = await fetch(`${server.url}${path}`);
      expect(sha256(Buffer.from(await whole.arrayBuffer()))).toBe(digest);
      const from = server.lines.length;
      const idle = await server.rssKiB('VmRSS');

      const readers = await Promise.all(
        Array.from({ length: READERS }, () => download(server.port, path, TASTE)),
      );
      await Promise.all(readers.map((r) => r.paused));
      // The server goes on sending until every socket's buffers are full. Once it has stopped working (its CPU time
      // no longer advances), the readers are only held: that is when memory and /v2/ are measured.
      const filling: number[] = [];
      const deadline = Date.now() + 120_000;
      for (let last = await cpuMs(server); ; ) {
        filling.push(await timedGet(`${server.url}/v2/`));
        await new Promise((r) => setTimeout(r, 500));
        const now = await cpuMs(server);
        if (now - last < 25) break;
        if (Date.now() > deadline) throw new Error('the server did not go quiet with its readers paused');
        last = now;
      }
      const held: number[] = [];
      for (let i = 0; i < 20; i++) held.push(await timedGet(`${server.url}/v2/`));
      const peak = await server.rssKiB('VmHWM');
      const slowest = (ms: number[]): string => Math.max(...ms).toFixed(1);
      console.log(
        `${driver}: ${READERS} paused readers: RSS idle ${Math.round(idle / 1024)} MiB, peak ${Math.round(peak / 1024)} MiB; ` +
          `/v2/ slowest ${slowest(held)} ms of ${held.length} while held, ${slowest(filling)} ms of ` +
          `${filling.length} while their buffers filled`,
      );
      expect(peak / 1024).toBeLessThanOrEqual(250);
      expect(Math.max(...held)).toBeLessThan(50);

      // A paused reader that reads again gets the whole blob, intact.
      const [first, ...rest] = readers;
      for (const r of rest) r.socket.destroy();
      first!.socket.resume();
      const until = Date.now() + 60_000;
      while (first!.body().length < BLOB && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      expect(first!.body().length).toBe(BLOB);
      expect(`sha256:${createHash('sha256').update(first!.body()).digest('hex')}`).toBe(digest);
      first!.socket.destroy();

      const problems = server.lines
        .slice(from)
        .filter(
          (l) =>
            l.level === 'error' || l.level === 'fatal' || (typeof l.status === 'number' && l.status >= 500),
        );
      expect(problems).toEqual([]);
    }, 180_000);
  },
);
