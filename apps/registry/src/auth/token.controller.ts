import { Controller, Get, Inject, Post, Req, Res } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  type Access,
  ANONYMOUS,
  formatScope,
  type Identity,
  parseScope,
  type Principal,
  ScopeError,
} from '@strata/identity';
import { RegistryError } from '@strata/oci';
import type { Config } from '../config/config';
import { readLimited, requestBody } from '../http/body';
import { requestMeta } from '../http/request-context';
import { CONFIG, IDENTITY } from '../tokens';
import { basicLogin } from './access';

const FORM_MAX_BYTES = 64 * 1024;
const MAX_SCOPES = 64;

/** The OAuth2 form, whole, or TOKEN_REQUEST_INVALID past FORM_MAX_BYTES. */
async function readForm(req: FastifyRequest): Promise<Buffer> {
  if (Number(req.headers['content-length'] ?? 0) > FORM_MAX_BYTES)
    throw new RegistryError('TOKEN_REQUEST_INVALID', { reason: `the form is over ${FORM_MAX_BYTES} bytes` });
  try {
    return await readLimited(requestBody(req), FORM_MAX_BYTES);
  } catch (e) {
    if (e instanceof RegistryError && e.name_ === 'MANIFEST_TOO_LARGE')
      throw new RegistryError('TOKEN_REQUEST_INVALID', {
        reason: `the form is over ${FORM_MAX_BYTES} bytes`,
      });
    throw e;
  }
}

function list(v: unknown): string[] {
  if (Array.isArray(v)) return v.flatMap(list);
  return typeof v === 'string' ? [v] : [];
}

function scopes(raw: string[]): Access[] {
  if (raw.length > MAX_SCOPES)
    throw new RegistryError('SCOPE_INVALID', { reason: `at most ${MAX_SCOPES} scopes` });
  try {
    // A scope parameter may hold several scopes separated by spaces (OAuth2's form), or be repeated.
    return raw
      .flatMap((s) => s.split(' '))
      .filter((s) => s !== '')
      .map(parseScope);
  } catch (e) {
    if (e instanceof ScopeError) throw new RegistryError('SCOPE_INVALID', { reason: e.message });
    throw e;
  }
}

/**
 * The token endpoint of the Docker token specification: GET with Basic credentials (or none, for anonymous
 * access) as docker, podman, skopeo and crane use it, and POST with the OAuth2 form (password and refresh_token
 * grants) as docker and containerd use it. A scope the caller may not have is left out of the token, not
 * refused; what the token then lacks is refused at the request that needs it.
 */
@Controller('auth')
export class TokenController {
  constructor(
    @Inject(IDENTITY) private readonly identity: Identity | null,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  @Get('token')
  async get(@Req() req: FastifyRequest, @Res() reply: FastifyReply): Promise<void> {
    const identity = this.enabled();
    const query = req.query as Record<string, unknown>;
    this.checkService(list(query.service)[0]);
    const requested = scopes(list(query.scope));
    const header = req.headers.authorization;
    const principal: Principal = header ? await basicLogin(identity, req, header) : ANONYMOUS;
    const offline = list(query.offline_token)[0] === 'true';
    await this.answer(reply, identity, principal, requested, offline);
  }

  @Post('token')
  async post(@Req() req: FastifyRequest, @Res() reply: FastifyReply): Promise<void> {
    const identity = this.enabled();
    const type = String(req.headers['content-type'] ?? '')
      .split(';')[0]!
      .trim()
      .toLowerCase();
    if (type !== 'application/x-www-form-urlencoded')
      throw new RegistryError('TOKEN_REQUEST_INVALID', {
        reason: 'expected an application/x-www-form-urlencoded body',
      });
    const form = new URLSearchParams((await readForm(req)).toString('utf8'));
    this.checkService(form.get('service') ?? undefined);
    const requested = scopes(form.getAll('scope'));
    const grant = form.get('grant_type');
    let principal: Principal;
    let refresh: string | null = null;
    if (grant === 'password') {
      principal = await identity.login(
        form.get('username') ?? '',
        form.get('password') ?? '',
        requestMeta(req),
      );
    } else if (grant === 'refresh_token') {
      refresh = form.get('refresh_token') ?? '';
      const found = await identity.tokens.verifyRefresh(refresh);
      // Void once the password changed, or the account was disabled, or removed and created again.
      const current = found ? identity.current(found) : null;
      if (!current) throw new RegistryError('UNAUTHORIZED', { reason: 'invalid or expired refresh token' });
      principal = current;
    } else {
      throw new RegistryError('TOKEN_REQUEST_INVALID', {
        reason: 'grant_type must be password or refresh_token',
      });
    }
    const offline = grant === 'password' && form.get('access_type') === 'offline';
    await this.answer(reply, identity, principal, requested, offline, refresh);
  }

  @Get('jwks')
  jwks(): unknown {
    return this.enabled().tokens.jwks;
  }

  private async answer(
    reply: FastifyReply,
    identity: Identity,
    principal: Principal,
    requested: Access[],
    offline: boolean,
    refresh: string | null = null,
  ): Promise<void> {
    const access = identity.grant(principal, requested);
    const issued = await identity.issue(principal, access);
    const refreshToken =
      refresh ?? (offline && principal.kind !== 'anonymous' ? await identity.issueRefresh(principal) : null);
    await reply
      .code(200)
      .header('Cache-Control', 'no-store')
      .send({
        token: issued.token,
        access_token: issued.token,
        expires_in: issued.expiresIn,
        issued_at: issued.issuedAt,
        // What was granted, space-separated, as OAuth2's token response has it.
        scope: access.map(formatScope).join(' '),
        ...(refreshToken ? { refresh_token: refreshToken } : {}),
      });
  }

  private enabled(): Identity {
    if (!this.identity)
      throw new RegistryError('ROUTE_UNKNOWN', { reason: 'authentication is off (STRATA_AUTH)' });
    return this.identity;
  }

  private checkService(service: string | undefined): void {
    if (service !== undefined && service !== this.config.auth!.service)
      throw new RegistryError('TOKEN_REQUEST_INVALID', {
        reason: `this registry's service is ${this.config.auth!.service}`,
        service: service.slice(0, 200),
      });
  }
}
