import type pg from 'pg';

/** Job ids for `pg_try_advisory_lock`: one replica at a time runs each job. */
export const JOB_LOCKS = {
  'expire-uploads': 0x5374_0001,
} as const;

/** Runs `fn` holding the job's session advisory lock, or returns null at once when another replica holds it. */
export async function withJobLock<T>(
  pool: pg.Pool,
  job: keyof typeof JOB_LOCKS,
  fn: () => Promise<T>,
): Promise<T | null> {
  const client = await pool.connect();
  try {
    const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [
      JOB_LOCKS[job],
    ]);
    if (!rows[0]?.ok) return null;
    try {
      return await fn();
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [JOB_LOCKS[job]]);
    }
  } finally {
    client.release();
  }
}
