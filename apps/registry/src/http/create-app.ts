import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '@strata/oci';
import { AppModule } from '../app.module';
import { installAccessControl } from '../auth/access';
import { installUi } from '../ui/ui';
import type { Runtime } from '../runtime';
import { discardBody, requestBody } from './body';
import { answerClientError } from './client-error';
import { ConnectionGuard, refusal } from './connection-guard';
import { PinoNestLogger } from './logger';
import { countStorageErrors, OciExceptionFilter, sendError } from './oci-exception.filter';
import { rewriteOciUrl } from './oci-route';
import { requestContext } from './request-context';
import { readTlsFiles } from './tls';

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * The HTTP application: Fastify with every request body left as a stream for the handlers, nested repository
 * names routed, one error envelope, and a request id on every response and log line.
 */
export async function createApp(runtime: Runtime): Promise<NestFastifyApplication> {
  const { logger } = runtime;
  const { config } = runtime;
  const { tls } = config;
  // Node answers 408 to a request head not received in time; it checks every so often, so the check runs often
  // enough for the bound to hold to within a tenth of it. No bound on a whole request (requestTimeout): a large
  // blob over a slow link takes as long as it takes, and the ConnectionGuard below cuts only a client gone quiet.
  const timeouts = {
    headersTimeout: config.headerTimeoutMs,
    requestTimeout: 0,
    connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.floor(config.headerTimeoutMs / 10))),
  };
  const adapter = new FastifyAdapter({
    // HTTPS on the same port; main's SIGHUP handler swaps in a renewed certificate. A TLS handshake gets the
    // head's time bound, not Node's two minutes.
    ...(tls
      ? { https: { ...readTlsFiles(tls), ...timeouts, handshakeTimeout: config.headerTimeoutMs } }
      : { http: timeouts }),
    loggerInstance: logger,
    disableRequestLogging: true,
    exposeHeadRoutes: false,
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 1024 },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    keepAliveTimeout: config.keepAliveTimeoutMs,
    requestTimeout: 0,
    // Requests that break HTTP's framing, and errors Fastify raises before routing (a URL that does not decode),
    // get the same envelope as everything else.
    clientErrorHandler: answerClientError(logger),
    frameworkErrors: (error: FastifyError, req: FastifyRequest, reply: FastifyReply) =>
      sendError(
        error.code === 'FST_ERR_BAD_URL' ? new RegistryError('URL_INVALID', error.message) : error,
        req,
        reply,
        logger,
      ),
    rewriteUrl: (req: IncomingMessage) => rewriteOciUrl(req.url ?? '/'),
    genReqId: (req: IncomingMessage) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID_RE.test(given) ? given : randomUUID();
    },
  });
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.register(runtime), adapter, {
    logger: new PinoNestLogger(logger),
    bodyParser: false,
  });
  const fastify = app.getHttpAdapter().getInstance();
  const guard = new ConnectionGuard(fastify.server, config, logger);

  // Bodies reach handlers unread, whatever their type: blobs stream to storage, manifests are read to a limit.
  fastify.removeAllContentTypeParsers();
  fastify.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));

  fastify.addHook('onRequest', (req, reply, done) => {
    reply.header('X-Request-Id', req.id);
    reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    if (guard.onRequest(req.raw.socket, reply.raw, String(req.id))) {
      // A connection beyond the limits: told to come back, then closed.
      const { status, headers, body } = refusal();
      if (requestBody(req) !== null) discardBody(req);
      void reply.code(status).headers(headers).send(body);
      return;
    }
    requestContext.run({ requestId: String(req.id) }, done);
  });
  fastify.addHook('onResponse', (req, reply, done) => {
    // A 503 is the database or the process going away for a while, answered to be retried: a warning, not an error.
    const level = reply.statusCode === 503 ? 'warn' : reply.statusCode >= 500 ? 'error' : 'info';
    req.log[level](
      {
        method: req.method,
        url: req.originalUrl,
        status: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
        remote: req.ip,
      },
      'request completed',
    );
    done();
  });
  // Errors Fastify raises after routing (a bad Content-Length, a hook's failure) reach Nest's own error handler,
  // which it installs at init and which passes them to the global filter below: setting a second one here would
  // only make Fastify warn (FSTWRN004) at every start.

  if (runtime.metrics) {
    runtime.metrics.install(fastify);
    const errors = runtime.metrics.storageErrors;
    countStorageErrors((code) => errors.inc({ code }));
  }
  if (runtime.identity && config.auth) installAccessControl(fastify, runtime.identity, config.auth, logger);
  await installUi(app, logger);
  app.useGlobalFilters(new OciExceptionFilter(logger));
  return app;
}
