import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { type ErrorName, RegistryError } from '@strata/oci';

/** Node's HTTP parser errors and timeouts, by the error table's name for them. */
function errorName(code: string | undefined): ErrorName {
  switch (code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 'REQUEST_TIMEOUT';
    case 'HPE_HEADER_OVERFLOW':
      return 'HEADERS_TOO_LARGE';
    default:
      return 'REQUEST_INVALID';
  }
}

/**
 * Answers a request that broke HTTP's framing before any route saw it (a bad Content-Length or header value, a
 * truncated or malformed chunked body, headers too large or too slow) with the OCI error envelope, as every other
 * refusal, then closes the connection: after a framing error nothing more on it can be read reliably. Nothing is
 * written when the socket is gone or a response on it has already begun.
 */
export function answerClientError(logger: Logger) {
  return (error: Error & { code?: string }, socket: Socket): void => {
    if (error.code === 'ECONNRESET' || socket.destroyed) return;
    const e = new RegistryError(errorName(error.code), error.code ?? error.message);
    logger.info({ code: error.code, reason: error.message, status: e.status }, 'refused a malformed request');
    const started = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage
      ?.headersSent;
    if (socket.writable && !started) {
      const body = JSON.stringify(e.toEnvelope());
      socket.write(
        `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status] ?? ''}\r\n` +
          'Content-Type: application/json; charset=utf-8\r\n' +
          `Content-Length: ${Buffer.byteLength(body)}\r\n` +
          'Docker-Distribution-API-Version: registry/2.0\r\n' +
          'Connection: close\r\n\r\n' +
          body,
      );
    }
    socket.destroySoon();
  };
}
