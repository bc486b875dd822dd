/**
 * SQLSTATE classes and codes Strata acts on, in one place: what a PostgreSQL error means for the request that
 * met it (https://www.postgresql.org/docs/current/errcodes-appendix.html).
 */
export const SQLSTATE = {
  foreignKeyViolation: '23503',
  uniqueViolation: '23505',
  serializationFailure: '40001',
  deadlockDetected: '40P01',
  adminShutdown: '57P01',
} as const;

/** The SQLSTATE of a PostgreSQL error, or null for anything else. */
export function sqlstate(e: unknown): string | null {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : null;
}

/**
 * A statement that failed before it could commit because of a conflict another statement caused: an integrity
 * constraint (class 23) or a rolled-back transaction (class 40: serialization failure, deadlock).
 */
export function lostConflict(e: unknown): boolean {
  const code = sqlstate(e);
  return code !== null && (code.startsWith('23') || code.startsWith('40'));
}

/** A transaction PostgreSQL rolled back to resolve a conflict (serialization failure, deadlock): try it again. */
export function retryableConflict(e: unknown): boolean {
  const code = sqlstate(e);
  return code === SQLSTATE.serializationFailure || code === SQLSTATE.deadlockDetected;
}

/**
 * An error that says the database is away or overloaded, not that the request was wrong: connection exceptions
 * (08), insufficient resources (53), operator intervention such as a shutdown or a terminated session (57), and
 * conflicts resolved by rolling back (40001, 40P01). The request may succeed when tried again.
 */
export function transientSqlstate(e: unknown): boolean {
  const code = sqlstate(e);
  return code !== null && (/^(08|53|57)/.test(code) || retryableConflict(e));
}
