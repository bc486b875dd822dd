import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import pino from 'pino';
import { type BlobStorage, FilesystemDriver, LargeObjectDriver } from '@strata/storage';
import { loadConfig, type StorageDriverName } from '../../apps/registry/src/config/config';
import { createApp } from '../../apps/registry/src/http/create-app';
import { Metrics } from '../../apps/registry/src/metrics/metrics';
import { type Runtime, startIdentity } from '../../apps/registry/src/runtime';
import { createTestDatabase, type TestDatabase } from './test-database';

export interface TestApp {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly app: NestFastifyApplication;
  readonly runtime: Runtime;
  readonly database: TestDatabase;
  readonly dataDir: string;
  /** Every log line the app wrote, parsed. */
  readonly logs: Record<string, unknown>[];
  /** Log lines at level error or fatal, or any response with a 5xx status: each is a bug. */
  serverErrors(): Record<string, unknown>[];
  close(): Promise<void>;
}

export interface TestAppOptions {
  readonly storage?: StorageDriverName;
  /** Reuse a database (another replica of the same registry). */
  readonly database?: TestDatabase;
  readonly dataDir?: string;
  readonly env?: Record<string, string>;
}

/** The whole registry in this process, on a real port, on a fresh database and a temp data directory. */
export async function startTestApp(options: TestAppOptions = {}): Promise<TestApp> {
  const database = options.database ?? (await createTestDatabase());
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'strata-test-data-')));
  const config = loadConfig({
    DATABASE_URL: database.url,
    STRATA_DATA_DIR: dataDir,
    STRATA_STORAGE: options.storage ?? 'filesystem',
    PORT: '0',
    HOST: '127.0.0.1',
    STRATA_JOBS: 'false',
    STRATA_MIGRATE_ON_BOOT: 'false',
    STRATA_LOG_LEVEL: 'info',
    ...options.env,
  });
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n'))
        if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const logger = pino(
    { level: 'info', base: { service: 'strata' }, formatters: { level: (l) => ({ level: l }) } },
    sink,
  );
  const storage: BlobStorage =
    config.storage === 'postgres'
      ? new LargeObjectDriver(database.db)
      : new FilesystemDriver(join(dataDir, 'storage'));
  await storage.init();
  const identity = config.auth ? await startIdentity(config, database.pool, logger) : null;
  const runtime: Runtime = {
    config,
    logger,
    pool: database.pool,
    db: database.db,
    storage,
    embedded: null,
    identity,
    metrics: config.metrics ? new Metrics(database.pool) : null,
  };
  const app = await createApp(runtime);
  await app.listen(0, '127.0.0.1');
  const address = app.getHttpAdapter().getInstance().server.address();
  if (!address || typeof address === 'string') throw new Error('no address');
  const ownsDatabase = options.database === undefined;
  const ownsDir = options.dataDir === undefined;
  return {
    url: `http://127.0.0.1:${address.port}`,
    app,
    runtime,
    database,
    dataDir,
    logs,
    serverErrors: () =>
      logs.filter(
        (l) =>
          l.level === 'error' || l.level === 'fatal' || (typeof l.status === 'number' && l.status >= 500),
      ),
    close: async () => {
      // A client that stopped sending a body the server already answered keeps its connection busy; tests do
      // not wait out the keep-alive timeout for it.
      const server = app.getHttpAdapter().getInstance().server;
      const cut = setTimeout(() => server.closeAllConnections(), 1000);
      await app.close();
      clearTimeout(cut);
      await identity?.close();
      if (ownsDatabase) await database.drop();
      if (ownsDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
