import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type pg from 'pg';

/** The advisory lock key every migrating process takes, so replicas starting together migrate once. */
const MIGRATION_LOCK = 0x5374_7261; // "Stra"

/** `migrations/` of the checkout, found upward from this file both in the sources and in `dist/`. */
function findMigrationsDir(): string {
  for (let dir = __dirname; dir !== dirname(dir); dir = dirname(dir)) {
    const candidate = join(dir, 'migrations');
    if (existsSync(join(candidate, '0001_event_store.sql'))) return candidate;
  }
  throw new Error(`failed to find the migrations directory above ${__dirname}`);
}

export const DEFAULT_MIGRATIONS_DIR = findMigrationsDir();

export interface MigrationResult {
  readonly applied: string[];
  readonly alreadyApplied: string[];
}

export async function listMigrations(dir = DEFAULT_MIGRATIONS_DIR): Promise<string[]> {
  return (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
}

/**
 * Applies the `.sql` files of `dir` in name order, each in its own transaction, under a session advisory lock.
 * A file that was applied is never run again; one that fails rolls back alone and stops the run.
 */
export async function migrate(pool: pg.Pool, dir = DEFAULT_MIGRATIONS_DIR): Promise<MigrationResult> {
  const files = await listMigrations(dir);
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    try {
      await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
        name text PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
      const done = new Set(
        (await client.query<{ name: string }>('SELECT name FROM schema_migrations')).rows.map((r) => r.name),
      );
      const applied: string[] = [];
      for (const file of files) {
        if (done.has(file)) continue;
        const sql = await readFile(join(dir, file), 'utf8');
        await client.query('BEGIN');
        try {
          await client.query(sql);
          await client.query('INSERT INTO schema_migrations (name) VALUES ($1)', [file]);
          await client.query('COMMIT');
        } catch (e) {
          await client.query('ROLLBACK');
          throw new Error(`failed to apply migration ${file}: ${(e as Error).message}`, { cause: e });
        }
        applied.push(file);
      }
      return { applied, alreadyApplied: files.filter((f) => done.has(f)) };
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]);
    }
  } finally {
    client.release();
  }
}

/** The migrations of `dir` that the database has not applied; empty when it is current. */
export async function pendingMigrations(pool: pg.Pool, dir = DEFAULT_MIGRATIONS_DIR): Promise<string[]> {
  const files = await listMigrations(dir);
  const exists = await pool.query<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t");
  if (!exists.rows[0]?.t) return files;
  const done = new Set(
    (await pool.query<{ name: string }>('SELECT name FROM schema_migrations')).rows.map((r) => r.name),
  );
  return files.filter((f) => !done.has(f));
}
