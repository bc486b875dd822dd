import { join } from 'node:path';
import type pg from 'pg';
import type { Logger } from 'pino';
import { createDb, createPool, type Db, EmbeddedPostgres, migrate, PreparedStatements } from '@strata/db';
import { systemMeta } from '@strata/events';
import { Identity } from '@strata/identity';
import { type BlobStorage, FilesystemDriver, LargeObjectDriver } from '@strata/storage';
import type { Config } from './config/config';
import { Metrics } from './metrics/metrics';

/** What the application runs on: started before Nest, stopped after it. */
export interface Runtime {
  readonly config: Config;
  readonly logger: Logger;
  readonly pool: pg.Pool;
  readonly db: Db;
  readonly storage: BlobStorage;
  readonly embedded: EmbeddedPostgres | null;
  /** Accounts, tokens and permissions when STRATA_AUTH=token; null when authentication is off. */
  readonly identity: Identity | null;
  /** Prometheus metrics (STRATA_METRICS); null when off. */
  readonly metrics: Metrics | null;
}

export async function startDatabase(
  config: Config,
  logger: Logger,
): Promise<{ connectionString: string; embedded: EmbeddedPostgres | null }> {
  if (config.databaseUrl) return { connectionString: config.databaseUrl, embedded: null };
  const embedded = new EmbeddedPostgres({
    dir: join(config.dataDir, 'postgres'),
    database: 'strata',
    log: (line) => logger.debug({ component: 'postgres' }, line),
    report: (level, fields, message) => logger[level]({ component: 'postgres', ...fields }, message),
  });
  logger.info({ dir: join(config.dataDir, 'postgres') }, 'starting embedded PostgreSQL');
  const connectionString = await embedded.start();
  // Where psql finds it (`strata sql` does this for you); the password stays in the credentials file.
  logger.info(embedded.address, 'embedded PostgreSQL ready');
  return { connectionString, embedded };
}

export async function startRuntime(config: Config, logger: Logger): Promise<Runtime> {
  const { connectionString, embedded } = await startDatabase(config, logger);
  const pool = createPool({
    connectionString,
    max: config.dbPoolMax,
    idleInTransactionTimeoutMs: config.dbIdleInTransactionSeconds * 1000,
    onConnectionLost: (err) => logger.warn({ err }, 'database connection lost'),
  });
  try {
    if (config.migrateOnBoot) {
      const { applied } = await migrate(pool);
      if (applied.length) logger.info({ applied }, 'applied migrations');
    }
    const db = createDb(pool);
    const storage: BlobStorage =
      config.storage === 'postgres'
        ? new LargeObjectDriver(db)
        : new FilesystemDriver(join(config.dataDir, 'storage'), {
            directIo: config.directIo,
            cachedHead: config.directIoAfter,
          });
    await storage.init();
    const identity = config.auth ? await startIdentity(config, pool, logger) : null;
    const metrics = config.metrics ? new Metrics(pool) : null;
    return { config, logger, pool, db, storage, embedded, identity, metrics };
  } catch (e) {
    await pool.end().catch(() => undefined);
    await embedded?.stop().catch(() => undefined);
    throw e;
  }
}

export async function startIdentity(config: Config, pool: pg.Pool, logger: Logger): Promise<Identity> {
  const auth = config.auth!;
  const identity = await Identity.create({
    statements: new PreparedStatements(pool),
    pool,
    logger,
    keyFile: auth.keyFile,
    createKey: auth.createKey,
    issuer: auth.issuer,
    service: auth.service,
    tokenTtlSeconds: auth.tokenTtlSeconds,
    anonymousPull: auth.anonymousPull,
    loginCache: auth.loginCache,
  });
  await identity.start();
  if (
    auth.adminPassword !== null &&
    (await identity.ensureAdmin(auth.adminPassword, systemMeta('bootstrap')))
  )
    logger.info('created the account admin (STRATA_ADMIN_PASSWORD) with every grant');
  if (identity.directory.accountCount === 0)
    logger.warn(
      'authentication is on but there are no accounts: set STRATA_ADMIN_PASSWORD, or add one with strata users add',
    );
  return identity;
}

export async function stopRuntime(runtime: Runtime): Promise<void> {
  await runtime.identity?.close();
  // Connections still closing when the embedded server stops are ended by it: expected now, not an error.
  runtime.pool.removeAllListeners('error');
  runtime.pool.on('error', () => undefined);
  // pg-pool's end() resolves once it has asked each connection to close, not once they have: stopping the
  // embedded server before they are gone would end them with 57P01 and a warning for each.
  const open = runtime.pool.totalCount;
  let removed = 0;
  const closed = new Promise<void>((res) => {
    if (open === 0) res();
    runtime.pool.on('remove', () => void (++removed >= open && res()));
  });
  await runtime.db
    .destroy()
    // Kysely ends the pool only if a query of its own ran: an idle registry's pool holds the migrator's.
    .then(() => (runtime.pool.ending ? undefined : runtime.pool.end()))
    .catch((err: unknown) => runtime.logger.warn({ err }, 'failed to close database pool'));
  if (runtime.embedded) {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise((res) => (timer = setTimeout(res, 5000)))]);
    clearTimeout(timer);
    await runtime.embedded.stop();
  }
}
