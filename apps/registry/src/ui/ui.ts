import fastifyStatic from '@fastify/static';
import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';

/**
 * Where `npm run build` put the web UI: beside the compiled apps/ (dist/ui), or, when running from the sources
 * (the tests' in-process app), the build in dist/ of the working directory.
 */
function uiRoot(): string | null {
  const candidates = [join(__dirname, '..', '..', '..', '..', 'ui'), join(process.cwd(), 'dist', 'ui')];
  return candidates.find((dir) => existsSync(join(dir, 'index.html'))) ?? null;
}

// The UI loads only its own script and style, is never framed, and sends no referrer off the registry.
const UI_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  // Not fingerprinted: revalidated (by ETag) on every load, so a new build shows at once.
  'Cache-Control': 'no-cache',
};

/** Serves the built single-page app at /ui/ (it reads the registry through /api/v1). */
export async function installUi(app: NestFastifyApplication, logger: Logger): Promise<void> {
  const root = uiRoot();
  if (root === null) {
    logger.warn('the web UI is not built (npm run build builds it): /ui/ is not served');
    return;
  }
  await app.register(fastifyStatic, {
    root,
    prefix: '/ui/',
    cacheControl: false,
    // The router ignores a trailing slash, so one route serves /ui and /ui/: it redirects the first (the page's
    // relative links need the slash) and answers the second with the page.
    index: false,
    wildcard: true,
    setHeaders: (res) => {
      for (const [k, v] of Object.entries(UI_HEADERS)) res.setHeader(k, v);
    },
  });
  const fastify = app.getHttpAdapter().getInstance();
  fastify.get('/ui', (req, reply) => {
    const [path, query] = (req.raw.url ?? '/ui').split('?', 2);
    if (path === '/ui') return reply.redirect(`/ui/${query === undefined ? '' : `?${query}`}`, 301);
    return reply.sendFile('index.html');
  });
}
