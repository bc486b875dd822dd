import type { Logger } from 'pino';
import { databaseUnavailable } from '@strata/db';
import type { Metrics } from '../metrics/metrics';

/**
 * Runs one step of a job, so a failure of one step does not skip the others. A database that is away (a restart,
 * a failover) is an expected state that the next run outlives: one warning line, no stack. Anything else is a bug
 * and is logged with its stack.
 */
export async function jobStep(
  logger: Logger,
  job: string,
  what: string,
  metrics: Metrics | null,
  step: () => Promise<void>,
): Promise<void> {
  try {
    await (metrics ? metrics.job(job, step) : step());
  } catch (err) {
    if (databaseUnavailable(err)) {
      const { code, message } = err as { code?: unknown; message?: unknown };
      logger.warn(
        { job, code: typeof code === 'string' ? code : undefined, reason: String(message) },
        `failed to ${what}: the database is unavailable`,
      );
    } else logger.error({ err, job }, `failed to ${what}`);
  }
}
