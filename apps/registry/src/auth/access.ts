import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import {
  type Action,
  ANONYMOUS,
  type Identity,
  patternRegex,
  type Principal,
  type TokenClaims,
} from '@strata/identity';
import type { Caller as BrowseCaller } from '@strata/registry';
import { isValidName, RegistryError } from '@strata/oci';
import type { AuthConfig } from '../config/config';
import { sendError } from '../http/oci-exception.filter';
import { requestMeta, setPrincipal } from '../http/request-context';

/** What a route needs: nothing, any authenticated caller (the version check, the catalog), or an action. */
type Need =
  | { readonly kind: 'none' }
  | { readonly kind: 'login' }
  | { readonly kind: 'catalog' }
  | { readonly kind: 'session' }
  | { readonly kind: 'browse' }
  | { readonly kind: 'repository'; readonly action: Action; readonly scope: string };

const PULL = { kind: 'repository', action: 'pull', scope: 'pull' } as const;
const PUSH = { kind: 'repository', action: 'push', scope: 'pull,push' } as const;
const DELETE = { kind: 'repository', action: 'delete', scope: 'delete' } as const;

/** By route template and method; routes not listed (health, the token endpoint, unknown paths) need nothing. */
function need(route: string | undefined, method: string): Need {
  switch (route) {
    case '/v2':
    case '/v2/':
      return { kind: 'login' };
    case '/v2/_catalog':
      return { kind: 'catalog' };
    case '/v2/:name/manifests/:reference':
      return method === 'PUT' ? PUSH : method === 'DELETE' ? DELETE : PULL;
    case '/v2/:name/blobs/:digest':
      return method === 'DELETE' ? DELETE : PULL;
    case '/v2/:name/blobs/uploads':
    case '/v2/:name/blobs/uploads/:id':
      return PUSH;
    case '/v2/:name/tags/list':
    case '/v2/:name/referrers/:digest':
      return PULL;
    case '/api/v1/session':
      return { kind: 'session' };
    default:
      return route?.startsWith('/api/v1/') ? { kind: 'browse' } : { kind: 'none' };
  }
}

/** Who the request is, and how: no credentials, a bearer token (with the access it carries), or Basic credentials. */
interface Caller {
  readonly principal: Principal;
  readonly via: 'none' | 'bearer' | 'basic';
  readonly claims: TokenClaims | null;
}

const callers = new WeakMap<FastifyRequest, Caller>();

function tokenAllows(claims: TokenClaims, repository: string, action: Action): boolean {
  return claims.access.some(
    (a) =>
      a.type === 'repository' &&
      a.name === repository &&
      (a.actions.includes(action) || a.actions.includes('*')),
  );
}

/**
 * Whether the request's caller may do `action` on `repository` now (true when authentication is off): a
 * cross-repository mount asks this about its `from`, the catalog about each name.
 */
export function callerMay(
  identity: Identity | null,
  req: FastifyRequest,
  repository: string,
  action: Action,
): boolean {
  if (!identity) return true;
  const caller = callers.get(req);
  if (!caller) return false;
  if (caller.claims && !tokenAllows(caller.claims, repository, action)) return false;
  return identity.allows(caller.principal, repository, action);
}

/** The catalog's filter: what the caller may pull (no filter when authentication is off). */
export function catalogFilter(
  identity: Identity | null,
  req: FastifyRequest,
): ((name: string) => boolean) | undefined {
  if (!identity) return undefined;
  const caller = callers.get(req);
  if (!caller) return () => false;
  // The catalog shows what the account may pull, not only what this token names.
  return (name) => identity.allows(caller.principal, name, 'pull');
}

/**
 * What the web UI's API shows the caller: every repository and event to an administrator (and with
 * authentication off), else what the account may pull, as a check for one name and as a filter for SQL.
 */
export function browseAccess(
  identity: Identity | null,
  req: FastifyRequest,
): { user: string | null; caller: BrowseCaller } {
  if (!identity) return { user: null, caller: { admin: true, visible: () => true, filter: null } };
  const found = callers.get(req);
  const principal = found?.principal ?? ANONYMOUS;
  const user = principal.kind === 'anonymous' ? null : principal.name;
  if (identity.directory.isGlobalAdmin(principal))
    return { user, caller: { admin: true, visible: () => true, filter: null } };
  const p = identity.directory.pullPatterns(principal);
  return {
    user,
    caller: {
      admin: false,
      visible: (name) => identity.allows(principal, name, 'pull'),
      filter: {
        anonymous: p.anonymous.map(patternRegex),
        granted: p.granted.map(patternRegex),
        scoped: p.scoped && p.scoped.map(patternRegex),
      },
    },
  };
}

const MAX_AUTHORIZATION = 8192;
const CATALOG_SCOPE = 'registry:catalog:*';

/** Basic credentials of an Authorization header; null when it is not Basic; throws when it is broken. */
export function parseBasic(header: string): { username: string; password: string } | null {
  const m = /^Basic +([A-Za-z0-9+/=_-]*) *$/i.exec(header);
  if (!m) {
    if (/^Basic(\s|$)/i.test(header))
      throw new RegistryError('UNAUTHORIZED', { reason: 'malformed Basic credentials' });
    return null;
  }
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0 || decoded.includes('\uFFFD'))
    throw new RegistryError('UNAUTHORIZED', { reason: 'malformed Basic credentials' });
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** The challenge's realm: the configured external URL, else what the client used to reach us. */
export function realmBase(auth: AuthConfig, req: FastifyRequest): string {
  if (auth.externalUrl) return auth.externalUrl;
  const host =
    req.headers.host && /^[A-Za-z0-9.:[\]-]{1,300}$/.test(req.headers.host) ? req.headers.host : 'localhost';
  return `${req.protocol}://${host}`;
}

/**
 * Authentication and authorization of every registry request (STRATA_AUTH=token), after routing so the route's
 * template says what the request needs. A refusal is 401 with the Bearer challenge clients follow (the scope
 * of what was refused, so they ask for the right token), or 403 DENIED for credentials that are valid but do not
 * allow it.
 */
export function installAccessControl(
  fastify: FastifyInstance,
  identity: Identity,
  auth: AuthConfig,
  logger: Logger,
): void {
  const challenge = (req: FastifyRequest, scope: string | null, error: string | null): string =>
    `Bearer realm="${realmBase(auth, req)}/auth/token",service="${auth.service}"` +
    (scope ? `,scope="${scope}"` : '') +
    (error ? `,error="${error}"` : '');

  const refuse = (
    req: FastifyRequest,
    reply: FastifyReply,
    e: RegistryError,
    scope: string | null,
    error: string | null,
  ): void => {
    if (e.status === 401) reply.header('WWW-Authenticate', challenge(req, scope, error));
    sendError(e, req, reply, logger);
  };

  fastify.addHook('preHandler', async (req, reply) => {
    const n = need(req.routeOptions.url, req.method);
    if (n.kind === 'none') return;
    const name = n.kind === 'repository' ? ((req.params as { name?: string }).name ?? '') : '';
    // A name outside the grammar is refused as such before any pattern is matched against it.
    if (n.kind === 'repository' && !isValidName(name)) {
      sendError(new RegistryError('NAME_INVALID', { name: name.slice(0, 256) }), req, reply, logger);
      return reply;
    }
    const scope =
      n.kind === 'repository'
        ? `repository:${name}:${n.scope}`
        : n.kind === 'catalog' || n.kind === 'browse'
          ? CATALOG_SCOPE
          : null;
    let caller: Caller;
    try {
      caller = await identify(identity, req);
    } catch (e) {
      // Anything but a refusal is a bug, answered and logged as one by the error filter.
      if (!(e instanceof RegistryError)) throw e;
      refuse(req, reply, e, scope, e.status === 401 ? 'invalid_token' : null);
      return reply;
    }
    callers.set(req, caller);
    setPrincipal(req, caller.principal);
    // The UI asks who it is before it logs in; anonymous callers browse only what anonymous pulls allow.
    if (
      n.kind === 'session' ||
      (n.kind === 'browse' && caller.via === 'none' && auth.anonymousPull.length > 0)
    )
      return;
    if (n.kind !== 'repository') {
      if (caller.via === 'none') {
        refuse(
          req,
          reply,
          new RegistryError('UNAUTHORIZED', { reason: 'authentication required' }),
          scope,
          null,
        );
        return reply;
      }
      // The catalog, as docker's registry has it: a token must name registry:catalog:* (the list then shows what
      // the account may pull); Basic credentials list the same. The UI's API lists too, so it asks the same.
      if (
        (n.kind === 'catalog' || n.kind === 'browse') &&
        caller.claims &&
        !caller.claims.access.some((a) => a.type === 'registry')
      ) {
        refuse(
          req,
          reply,
          new RegistryError('UNAUTHORIZED', [{ Type: 'registry', Name: 'catalog', Action: '*' }]),
          scope,
          'insufficient_scope',
        );
        return reply;
      }
      return;
    }
    if (caller.claims && !tokenAllows(caller.claims, name, n.action)) {
      // The token does not name this: the client asks for one that does (and gets it, if the account may).
      refuse(
        req,
        reply,
        new RegistryError('UNAUTHORIZED', [{ Type: 'repository', Name: name, Action: n.action }]),
        scope,
        'insufficient_scope',
      );
      return reply;
    }
    if (identity.allows(caller.principal, name, n.action)) return;
    if (caller.via === 'none') {
      refuse(
        req,
        reply,
        new RegistryError('UNAUTHORIZED', [{ Type: 'repository', Name: name, Action: n.action }]),
        scope,
        null,
      );
    } else {
      refuse(req, reply, new RegistryError('DENIED', { repository: name, action: n.action }), scope, null);
    }
    return reply;
  });
}

async function identify(identity: Identity, req: FastifyRequest): Promise<Caller> {
  const header = req.headers.authorization;
  if (header === undefined || header === '') return { principal: ANONYMOUS, via: 'none', claims: null };
  const bearer = header.length <= MAX_AUTHORIZATION && /^Bearer +([A-Za-z0-9._~+/=-]+) *$/i.exec(header);
  if (bearer) {
    const found = await identity.bearer(bearer[1]!);
    if (!found) throw new RegistryError('UNAUTHORIZED', { reason: 'invalid or expired token' });
    return { principal: found.principal, via: 'bearer', claims: found.claims };
  }
  return { principal: await basicLogin(identity, req, header), via: 'basic', claims: null };
}

/** The account of a Basic Authorization header; UNAUTHORIZED for any other header, or wrong credentials. */
export async function basicLogin(
  identity: Identity,
  req: FastifyRequest,
  header: string,
): Promise<Principal> {
  if (header.length > MAX_AUTHORIZATION)
    throw new RegistryError('UNAUTHORIZED', { reason: 'credentials too long' });
  const basic = parseBasic(header);
  if (!basic)
    throw new RegistryError('UNAUTHORIZED', { reason: 'expected Basic credentials or a Bearer token' });
  return identity.login(basic.username, basic.password, requestMeta(req));
}
