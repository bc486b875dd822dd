import { databaseUnavailable, lostConflict, retryableConflict, sqlstate } from './sqlstate';

const pgError = (code: string, severity = 'ERROR'): Error =>
  Object.assign(new Error('x'), { code, severity });

describe('SQLSTATE meanings', () => {
  it('reads a SQLSTATE only where there is one', () => {
    expect(sqlstate(pgError('23505'))).toBe('23505');
    expect(sqlstate(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBeNull();
    expect(sqlstate(null)).toBeNull();
  });

  it('tells conflicts to try again from conflicts that fail the statement', () => {
    expect(retryableConflict(pgError('40P01'))).toBe(true);
    expect(retryableConflict(pgError('40001'))).toBe(true);
    expect(retryableConflict(pgError('23505'))).toBe(false);
    expect(lostConflict(pgError('23505'))).toBe(true);
    expect(lostConflict(pgError('40P01'))).toBe(true);
    expect(lostConflict(pgError('22P02'))).toBe(false);
  });

  it('calls the database away on restarts, lost sockets and refused connections, not on bad requests', () => {
    expect(databaseUnavailable(pgError('57P01', 'FATAL'))).toBe(true);
    expect(databaseUnavailable(pgError('53300', 'FATAL'))).toBe(true);
    expect(databaseUnavailable(pgError('40P01'))).toBe(true);
    expect(
      databaseUnavailable(
        Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', syscall: 'read' }),
      ),
    ).toBe(true);
    expect(databaseUnavailable(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(databaseUnavailable(new Error('Connection terminated unexpectedly'))).toBe(true);
    // A client that hangs up mid-body: Node's "aborted", with no system call.
    expect(databaseUnavailable(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }))).toBe(false);
    expect(databaseUnavailable(pgError('23505'))).toBe(false);
    expect(databaseUnavailable(pgError('22P02'))).toBe(false);
  });
});
