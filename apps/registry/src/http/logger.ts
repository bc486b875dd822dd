import type { LoggerService } from '@nestjs/common';
import pino, { type Logger } from 'pino';
import { currentRequestId } from './request-context';

/**
 * Fastify's request logger is a child already bound to `reqId`: adding it again would repeat the key. Its
 * bindings are kept as serialized JSON; reading that string is cheaper than `bindings()` parsing it per line.
 */
function boundToRequest(logger: Logger): boolean {
  const chindings = (logger as unknown as Record<symbol, unknown>)[pino.symbols.chindingsSym];
  return typeof chindings === 'string' && chindings.includes('"reqId":');
}

/** JSON lines on stdout; every line written inside a request carries its `reqId`. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'strata' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    mixin(mergeObject: object, _level: number, logger: Logger) {
      const reqId = currentRequestId();
      return reqId === undefined || 'reqId' in mergeObject || boundToRequest(logger) ? {} : { reqId };
    },
  });
}

/** Nest's own messages, in the same JSON lines. */
export class PinoNestLogger implements LoggerService {
  constructor(private readonly logger: Logger) {}

  log(message: unknown, context?: string): void {
    this.logger.info({ context }, String(message));
  }
  error(message: unknown, trace?: string, context?: string): void {
    this.logger.error({ context, stack: trace }, String(message));
  }
  warn(message: unknown, context?: string): void {
    this.logger.warn({ context }, String(message));
  }
  debug(message: unknown, context?: string): void {
    this.logger.debug({ context }, String(message));
  }
  verbose(message: unknown, context?: string): void {
    this.logger.trace({ context }, String(message));
  }
}
