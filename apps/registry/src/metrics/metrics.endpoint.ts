import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { ANONYMOUS, type Identity, type Principal } from '@strata/identity';
import { RegistryError } from '@strata/oci';
import { parseBasic } from '../auth/access';
import type { Metrics } from './metrics';

/**
 * Who may scrape: anyone with authentication off; with it on, an account granted `admin` on `**` (Basic
 * credentials or a bearer token of it). Null when allowed, else the refusal.
 */
export async function scrapeRefusal(
  identity: Identity | null,
  authorization: string | undefined,
  clientAddr: string | null,
): Promise<RegistryError | null> {
  if (!identity) return null;
  let principal: Principal = ANONYMOUS;
  try {
    if (authorization?.startsWith('Bearer ')) {
      principal = (await identity.bearer(authorization.slice(7).trim()))?.principal ?? ANONYMOUS;
    } else if (authorization) {
      const basic = parseBasic(authorization);
      if (basic)
        principal = await identity.login(basic.username, basic.password, {
          actor: 'anonymous',
          requestId: null,
          clientAddr,
          userAgent: null,
        });
    }
  } catch (e) {
    if (e instanceof RegistryError) return e;
    throw e;
  }
  if (principal.kind === 'anonymous')
    return new RegistryError('UNAUTHORIZED', { reason: 'metrics need an account with admin on **' });
  return identity.directory.isGlobalAdmin(principal)
    ? null
    : new RegistryError('DENIED', { reason: 'metrics need an account with admin on **' });
}

/** STRATA_METRICS_PORT: /metrics alone, on a port of its own (so the registry port need not expose it). */
export function startMetricsServer(
  metrics: Metrics,
  identity: Identity | null,
  host: string,
  port: number,
  logger: Logger,
): Promise<Server> {
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' || path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify(new RegistryError('ROUTE_UNKNOWN', { path }).toEnvelope()));
        return;
      }
      const refused = await scrapeRefusal(
        identity,
        req.headers.authorization,
        req.socket.remoteAddress ?? null,
      );
      if (refused) {
        res.writeHead(refused.status, {
          'content-type': 'application/json',
          ...(refused.status === 401 ? { 'www-authenticate': 'Basic realm="strata metrics"' } : {}),
        });
        res.end(JSON.stringify(refused.toEnvelope()));
        return;
      }
      const text = await metrics.registry.metrics();
      res.writeHead(200, { 'content-type': metrics.registry.contentType });
      res.end(text);
    })().catch((err: unknown) => {
      logger.error({ err }, 'failed to serve metrics');
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
