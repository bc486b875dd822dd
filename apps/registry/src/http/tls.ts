import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { createSecureContext, Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';

/** Where the serving certificate (PEM, the leaf first, then any intermediates) and its private key (PEM) live. */
export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

/** What node's TLS server takes: the bytes of both files, checked to belong together. */
export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** A certificate or key that cannot be served, naming which of the two files is at fault. */
export class TlsFileError extends Error {
  constructor(
    readonly file: 'cert' | 'key',
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
  }
}

function read(file: 'cert' | 'key', path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new TlsFileError(file, path, `cannot read: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/**
 * Reads both files and checks them as node will use them: a PEM certificate, a PEM private key (unencrypted),
 * and the key being the certificate's. Throws TlsFileError naming the file at fault.
 */
export function readTlsFiles(files: TlsFiles): TlsMaterial {
  const cert = read('cert', files.certFile);
  const key = read('key', files.keyFile);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new TlsFileError('cert', files.certFile, 'is not a PEM certificate');
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new TlsFileError('key', files.keyFile, 'is not an unencrypted PEM private key');
  }
  if (!x509.checkPrivateKey(privateKey))
    throw new TlsFileError('key', files.keyFile, `is not the key of the certificate in ${files.certFile}`);
  try {
    createSecureContext({ cert, key });
  } catch (e) {
    throw new TlsFileError('cert', files.certFile, `is refused by TLS: ${(e as Error).message}`);
  }
  return { cert, key };
}

/** What the log says of the certificate being served: enough to tell which one it is and when it expires. */
function certificateFields(material: TlsMaterial): Record<string, string> {
  const x509 = new X509Certificate(material.cert);
  return { subject: x509.subject, fingerprint256: x509.fingerprint256, validTo: x509.validTo };
}

/**
 * On SIGHUP, serves the certificate and key now on disk to every new connection (connections already open keep
 * theirs). A pair that cannot be served is logged once and the one in use stays.
 */
export function reloadOnHangup(server: unknown, files: TlsFiles, logger: Logger): void {
  if (!(server instanceof TlsServer)) throw new Error('TLS is configured but the server is not a TLS server');
  process.on('SIGHUP', () => {
    let material: TlsMaterial;
    try {
      material = readTlsFiles(files);
    } catch (e) {
      const err = e instanceof TlsFileError ? { file: e.path, reason: e.reason } : { err: e };
      logger.error(
        { ...err, signal: 'SIGHUP' },
        'failed to reload TLS certificate, still serving the old one',
      );
      return;
    }
    server.setSecureContext({ cert: material.cert, key: material.key });
    logger.info({ signal: 'SIGHUP', ...certificateFields(material) }, 'reloaded TLS certificate');
  });
}

/** `localhost`, 127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z): only this machine can connect. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || (h.startsWith('::ffff:') && isLoopbackHost(h.slice(7)));
  return false;
}

/**
 * Bound beyond this machine with neither TLS nor authentication, anyone on the network can read and replace
 * images, and the operator should hear it once at start.
 */
export function warnIfExposed(
  logger: Logger,
  listen: { readonly host: string; readonly port: number; readonly tls: boolean; readonly auth: boolean },
): void {
  if (listen.tls || listen.auth || isLoopbackHost(listen.host)) return;
  logger.warn(
    { host: listen.host, port: listen.port, tls: false, auth: false },
    'serving plain HTTP without authentication beyond loopback: anyone who can reach this port can push and pull; ' +
      'set STRATA_TLS_CERT and STRATA_TLS_KEY, or bind HOST to 127.0.0.1',
  );
}
