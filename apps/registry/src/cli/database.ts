import { join } from 'node:path';
import type pg from 'pg';
import { createPool, EmbeddedPostgres, migrate } from '@strata/db';
import type { Config } from '../config/config';

/**
 * A pool on the registry's database for a command: DATABASE_URL; else the embedded cluster, joined if the
 * registry is running, or started for the command and stopped after. Migrations are applied first, so the
 * command works on a database no registry has started yet.
 */
export async function withDatabase<T>(config: Config, run: (pool: pg.Pool) => Promise<T>): Promise<T> {
  let connectionString = config.databaseUrl;
  let session: EmbeddedPostgres | null = null;
  if (connectionString === null) {
    const dir = join(config.dataDir, 'postgres');
    const running = await EmbeddedPostgres.findRunning({ dir, database: 'strata' });
    if (running) {
      const { host, port, database, user } = running.address;
      connectionString = `postgres://${encodeURIComponent(user)}:${encodeURIComponent(running.password)}@${host}:${port}/${database}`;
    } else {
      session = new EmbeddedPostgres({ dir, database: 'strata' });
      connectionString = await session.start();
    }
  }
  const pool = createPool({ connectionString, max: 2 });
  try {
    await migrate(pool);
    return await run(pool);
  } finally {
    await pool.end();
    await session?.stop();
  }
}
