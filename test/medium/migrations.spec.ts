import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { DEFAULT_MIGRATIONS_DIR, listMigrations, migrate, pendingMigrations } from '@strata/db';
import { dropDatabase, withDatabase } from '../support/postgres-provider';

/** Every table the migrations create, the bookkeeping table included. */
const EXPECTED_TABLES = [
  'access_tokens',
  'accounts',
  'blobs',
  'events',
  'grants',
  'group_members',
  'groups',
  'identity_version',
  'immutable_tag_rules',
  'manifest_references',
  'manifests',
  'repositories',
  'repository_blobs',
  'schema_migrations',
  'storage_objects',
  'tag_lifetimes',
  'tags',
  'upload_chunks',
  'uploads',
];

interface EmptyDatabase {
  readonly name: string;
  readonly pool: pg.Pool;
  close(): Promise<void>;
}

function adminUrl(): string {
  const url = process.env.STRATA_TEST_ADMIN_URL;
  if (!url) throw new Error('the PostgreSQL global setup did not run');
  return url;
}

/**
 * Ends the pool and waits until the server has closed every connection: pool.end() alone resolves earlier, and
 * the DROP ... WITH (FORCE) that follows would terminate a connection the pool still listens on.
 */
async function endPool(pool: pg.Pool): Promise<void> {
  let open = pool.totalCount;
  const closed = new Promise<void>((resolve) => {
    if (open === 0) resolve();
    pool.on('remove', () => {
      if (--open === 0) resolve();
    });
  });
  await pool.end();
  await closed;
}

/** A brand-new database on the test server, not cloned from the migrated template. */
async function createEmptyDatabase(): Promise<EmptyDatabase> {
  const name = `strata_m_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE template0`);
  } finally {
    await admin.end();
  }
  const pool = new pg.Pool({ connectionString: withDatabase(adminUrl(), name), max: 4 });
  return {
    name,
    pool,
    close: async () => {
      await endPool(pool);
      await dropDatabase(adminUrl(), name);
    },
  };
}

async function tables(pool: pg.Pool): Promise<string[]> {
  const r = await pool.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables
     WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name COLLATE "C"`,
  );
  return r.rows.map((row) => row.table_name);
}

async function appliedNames(pool: pg.Pool): Promise<string[]> {
  const r = await pool.query<{ name: string }>(
    'SELECT name FROM schema_migrations ORDER BY applied_at, name',
  );
  return r.rows.map((row) => row.name);
}

/** A migrations directory holding copies of the real files plus `extra`. */
async function migrationsDirWith(extra: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-migrations-'));
  for (const file of await listMigrations())
    await copyFile(join(DEFAULT_MIGRATIONS_DIR, file), join(dir, file));
  for (const [file, text] of Object.entries(extra)) await writeFile(join(dir, file), text);
  return dir;
}

describe('migrations', () => {
  let files: string[];
  const cleanup: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    files = await listMigrations();
  });
  afterAll(async () => {
    for (const fn of cleanup.reverse()) await fn();
  });

  async function emptyDatabase(): Promise<EmptyDatabase> {
    const db = await createEmptyDatabase();
    cleanup.push(db.close);
    return db;
  }

  it('lists every .sql file of migrations/ in name order', async () => {
    const onDisk = (await readdir(DEFAULT_MIGRATIONS_DIR)).filter((f) => f.endsWith('.sql'));
    expect(files).toEqual([...onDisk].sort());
    expect(files.length).toBeGreaterThanOrEqual(3);
    expect(files.slice(0, 3)).toEqual([
      '0001_event_store.sql',
      '0002_registry.sql',
      '0003_large_object_storage.sql',
    ]);
    for (const f of files) expect(f).toMatch(/^\d{4}_[a-z0-9_]+\.sql$/);
  });

  it('migrates an empty database from zero, every file once in name order, and then has nothing to do', async () => {
    const { pool } = await emptyDatabase();
    expect(await tables(pool)).toEqual([]);
    expect(await pendingMigrations(pool)).toEqual(files);

    const first = await migrate(pool);
    expect(first).toEqual({ applied: files, alreadyApplied: [] });
    expect(await appliedNames(pool)).toEqual(files);
    expect(await tables(pool)).toEqual(EXPECTED_TABLES);
    expect(await pendingMigrations(pool)).toEqual([]);

    const second = await migrate(pool);
    expect(second).toEqual({ applied: [], alreadyApplied: files });
    expect(await appliedNames(pool)).toEqual(files);
  });

  it('applies each file once when two processes migrate the same empty database at the same time', async () => {
    const { name, pool } = await emptyDatabase();
    // Two pools, as two replicas starting together would have.
    const other = new pg.Pool({ connectionString: withDatabase(adminUrl(), name), max: 2 });
    try {
      const results = await Promise.all([migrate(pool), migrate(other)]);
      const applied = results.flatMap((r) => r.applied);
      expect([...applied].sort()).toEqual(files);
      // The advisory lock serialises them: whoever came second found everything done.
      const [winner, loser] = results[0].applied.length > 0 ? results : [results[1], results[0]];
      expect(winner.applied).toEqual(files);
      expect(loser).toEqual({ applied: [], alreadyApplied: files });
    } finally {
      await endPool(other);
    }
    const counts = await pool.query<{ name: string; n: number }>(
      'SELECT name, count(*)::int AS n FROM schema_migrations GROUP BY name ORDER BY name',
    );
    expect(counts.rows).toEqual(files.map((f) => ({ name: f, n: 1 })));
    expect(await tables(pool)).toEqual(EXPECTED_TABLES);
  });

  it('rolls a failing migration back alone, keeps the ones before it, and releases the lock', async () => {
    const broken = '9999_broken.sql';
    const dir = await migrationsDirWith({
      [broken]:
        'CREATE TABLE broken_probe (id int);\nINSERT INTO broken_probe VALUES (1);\nSELECT * FROM no_such_table;\n',
    });
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const { pool } = await emptyDatabase();
    expect(await pendingMigrations(pool, dir)).toEqual([...files, broken]);

    await expect(migrate(pool, dir)).rejects.toThrow(
      `failed to apply migration ${broken}: relation "no_such_table" does not exist`,
    );
    expect(await appliedNames(pool)).toEqual(files);
    expect(await tables(pool)).toEqual(EXPECTED_TABLES);
    expect(await pendingMigrations(pool, dir)).toEqual([broken]);
    const locks = await pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_locks
       WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    expect(locks.rows[0]!.n).toBe(0);

    // Once fixed, the next run applies exactly that file.
    await writeFile(join(dir, broken), 'CREATE TABLE broken_probe (id int);\n');
    expect(await migrate(pool, dir)).toEqual({ applied: [broken], alreadyApplied: files });
    expect(await tables(pool)).toEqual([...EXPECTED_TABLES, 'broken_probe'].sort());
    expect(await pendingMigrations(pool, dir)).toEqual([]);
  });

  it('stops at a failing migration and applies none after it', async () => {
    const dir = await migrationsDirWith({
      '9998_fails.sql': 'SELECT 1 / 0;\n',
      '9999_after.sql': 'CREATE TABLE after_probe (id int);\n',
    });
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const { pool } = await emptyDatabase();
    await expect(migrate(pool, dir)).rejects.toThrow(
      'failed to apply migration 9998_fails.sql: division by zero',
    );
    expect(await pendingMigrations(pool, dir)).toEqual(['9998_fails.sql', '9999_after.sql']);
    expect(await tables(pool)).not.toContain('after_probe');
  });
});
