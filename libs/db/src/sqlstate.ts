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
  /** Strata's own (migration 0016): a change to a tag an immutable-tag rule protects. */
  immutableTag: 'ST001',
} as const;

/** The rule named by an ST001 refusal (its detail, JSON), or null for any other error. */
export function immutableRefusal(
  e: unknown,
): { rule: number; repository_pattern: string; tag_pattern: string; tag: string } | null {
  if (sqlstate(e) !== SQLSTATE.immutableTag) return null;
  const detail = (e as { detail?: unknown }).detail;
  if (typeof detail !== 'string') return null;
  return JSON.parse(detail) as { rule: number; repository_pattern: string; tag_pattern: string; tag: string };
}

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
 * SQLSTATE classes and codes of a database that is away or overloaded for a while: connection exceptions (08),
 * insufficient resources (53), operator intervention (57: shutdown, restart, a cancelled or timed-out statement),
 * serialization failures and deadlocks (40001, 40P01). The request may succeed when tried again.
 */
const TRANSIENT_SQLSTATE = /^(08|53|57)|^40001$|^40P01$/;
/** What the pg driver and its pool throw, without a SQLSTATE, when a connection cannot be had or is lost. */
const LOST_CONNECTION =
  /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error)/;

/** Errors of a connection to the database that cannot be made. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);
/**
 * Errors of a socket that was connected and broke: a database restarting resets its connections. They count only
 * with the system call that saw them (`read ECONNRESET`), which is how the pg driver passes its socket's errors
 * on. A client that hangs up mid-body fails the body with ECONNRESET too, but as Node's "aborted", with no system
 * call: that is not the database's doing.
 */
const BROKEN = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT']);

/**
 * True for failures of the database that a client should retry rather than report (503, not 500): the one place
 * that decides it, for requests and jobs alike.
 */
export function databaseUnavailable(error: unknown): boolean {
  const { code, message, severity } = (error ?? {}) as {
    code?: unknown;
    message?: unknown;
    severity?: unknown;
  };
  // A PostgreSQL error carries its severity and SQLSTATE. A FATAL one ends the session, whatever its code: the
  // server refused or dropped the connection (too many clients, a database not accepting connections, a
  // restart), so the request itself was not at fault.
  if (typeof severity === 'string' && typeof code === 'string')
    return severity === 'FATAL' || severity === 'PANIC' || TRANSIENT_SQLSTATE.test(code);
  if (typeof code === 'string' && UNREACHABLE.has(code)) return true;
  const { syscall } = error as { syscall?: unknown };
  if (typeof code === 'string' && BROKEN.has(code) && typeof syscall === 'string') return true;
  return typeof message === 'string' && LOST_CONNECTION.test(message);
}
