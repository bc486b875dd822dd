import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createDb, createPool, type Db } from '@strata/db';
import { dropDatabase, withDatabase } from './postgres-provider';

export interface TestDatabase {
  readonly url: string;
  readonly pool: pg.Pool;
  readonly db: Db;
  drop(): Promise<void>;
}

/** A fresh database for one test file: a clone of the migrated template, dropped at the end. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = process.env.STRATA_TEST_ADMIN_URL;
  const template = process.env.STRATA_TEST_TEMPLATE;
  if (!adminUrl || !template) throw new Error('the PostgreSQL global setup did not run');
  const name = `strata_t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template}`);
    await admin.query(`ALTER DATABASE ${name} SET synchronous_commit = off`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(adminUrl, name);
  const pool = createPool({ connectionString: url, max: 40 });
  const db = createDb(pool);
  return {
    url,
    pool,
    db,
    drop: async () => {
      // The server ends this database's connections when it is dropped; an idle one must not crash the test.
      pool.on('error', () => undefined);
      await db.destroy();
      if (!pool.ending) await pool.end();
      await dropDatabase(adminUrl, name);
    },
  };
}
