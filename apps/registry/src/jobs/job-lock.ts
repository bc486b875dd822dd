import type pg from 'pg';

/** Job ids for `pg_try_advisory_lock`: one replica at a time runs each job. */
export const JOB_LOCKS = {
  'expire-uploads': 0x5374_0001,
  'storage-maintenance': 0x5374_0002,
} as const;

/**
 * Runs `fn` holding the job's session advisory lock, or returns null at once when another replica holds it. The
 * lock lives as long as its session: when the database ends that session while `fn` runs (a restart), the lock is
 * gone with it, `fn`'s outcome stands, and the connection is discarded rather than returned to the pool. Jobs must
 * therefore be safe to run twice at once, as every statement of theirs decides by conditions on the rows it changes.
 */
export async function withJobLock<T>(
  pool: pg.Pool,
  job: keyof typeof JOB_LOCKS,
  fn: () => Promise<T>,
): Promise<T | null> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [
      JOB_LOCKS[job],
    ]);
    if (!rows[0]?.ok) return null;
    try {
      return await fn();
    } finally {
      // Ending the session releases the lock too: a connection that cannot unlock is destroyed below.
      await client.query('SELECT pg_advisory_unlock($1)', [JOB_LOCKS[job]]).catch((e: unknown) => {
        broken = e instanceof Error ? e : new Error(String(e));
      });
    }
  } catch (e) {
    broken ??= e instanceof Error ? e : new Error(String(e));
    throw e;
  } finally {
    client.release(broken);
  }
}
