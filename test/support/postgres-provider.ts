import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { EmbeddedPostgres, migrate } from '../../libs/db/src';

/** Where the tests' PostgreSQL comes from, in order: DATABASE_URL, testcontainers (if Docker answers), embedded. */
export interface ProvidedPostgres {
  readonly kind: 'DATABASE_URL' | 'testcontainers' | 'embedded';
  /** A connection to a maintenance database on the server, for CREATE/DROP DATABASE. */
  readonly adminUrl: string;
  stop(): Promise<void>;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

async function dockerAnswers(): Promise<boolean> {
  if (!process.env.DOCKER_HOST && !existsSync('/var/run/docker.sock')) return false;
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await Promise.race([
      getContainerRuntimeClient(),
      new Promise((_, rej) => setTimeout(() => rej(new Error('docker did not answer')), 10_000)),
    ]);
    return true;
  } catch {
    return false;
  }
}

export async function providePostgres(): Promise<ProvidedPostgres> {
  const url = process.env.DATABASE_URL;
  if (url) return { kind: 'DATABASE_URL', adminUrl: url, stop: () => Promise.resolve() };

  if (await dockerAnswers()) {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer('postgres:15-alpine')
      .withCommand([
        'postgres',
        '-c',
        'fsync=off',
        '-c',
        'full_page_writes=off',
        '-c',
        'synchronous_commit=off',
        '-c',
        'max_connections=300',
      ])
      .start();
    return {
      kind: 'testcontainers',
      adminUrl: container.getConnectionUri(),
      stop: async () => void (await container.stop()),
    };
  }

  const dir = await mkdtemp(join(tmpdir(), 'strata-test-pg-'));
  const embedded = new EmbeddedPostgres({ dir, database: 'strata_admin', fast: true });
  await embedded.start();
  return {
    kind: 'embedded',
    adminUrl: embedded.connectionString,
    stop: async () => {
      await embedded.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Creates the migrated template every test file clones. */
export async function createTemplate(adminUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name}`);
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const pool = new pg.Pool({ connectionString: withDatabase(adminUrl, name), max: 1 });
  try {
    await migrate(pool);
  } finally {
    await pool.end();
  }
}

export async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

export { withDatabase };
