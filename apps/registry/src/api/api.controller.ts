import { Controller, Get, Inject, Query, Req } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import type { Identity } from '@strata/identity';
import { isValidName, RegistryError } from '@strata/oci';
import { BrowseService, parseBrowseLimit, type AuditFilter } from '@strata/registry';
import { browseAccess } from '../auth/access';
import type { Config } from '../config/config';
import { queryParam } from '../http/pagination';
import { CONFIG, IDENTITY } from '../tokens';

type Query = Record<string, unknown>;

/** A free-text parameter: at most `max` characters, no U+0000 (PostgreSQL text cannot carry it). */
function text(query: Query, key: string, max = 256): string | null {
  const v = queryParam(query[key]);
  if (v === undefined || v === '') return null;
  if (v.length > max || v.includes('\0'))
    throw new RegistryError('QUERY_INVALID', { parameter: key, reason: `at most ${max} characters, no NUL` });
  return v;
}

function required(query: Query, key: string, max = 256): string {
  const v = text(query, key, max);
  if (v === null) throw new RegistryError('QUERY_INVALID', { parameter: key, reason: 'required' });
  return v;
}

function repositoryParam(query: Query, key = 'repository'): string {
  const name = required(query, key);
  if (!isValidName(name)) throw new RegistryError('NAME_INVALID', { name });
  return name;
}

function time(query: Query, key: string): Date | null {
  const v = text(query, key, 64);
  if (v === null) return null;
  // A whole time with its zone: a date alone, or a local time, would be read in the server's zone.
  const m = /^(\d{4})-(\d{2})-(\d{2})T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/.exec(v);
  const t = new Date(v);
  // Date() rolls 2024-02-30 over into March; a day that does not exist is refused instead.
  const day = m && new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  if (
    !m ||
    Number.isNaN(t.getTime()) ||
    !day ||
    day.getUTCDate() !== Number(m[3]) ||
    day.getUTCMonth() !== Number(m[2]) - 1
  )
    throw new RegistryError('QUERY_INVALID', { parameter: key, reason: 'an ISO 8601 time with its zone' });
  return t;
}

function seq(query: Query, key: string): number | null {
  const v = text(query, key, 16);
  if (v === null) return null;
  if (!/^[1-9]\d{0,14}$/.test(v))
    throw new RegistryError('QUERY_INVALID', { parameter: key, reason: 'an event seq' });
  return Number(v);
}

/**
 * The web UI's JSON API: read-only views of the registry through the same services and permissions as /v2/
 * (the access hook in auth/access.ts admits the caller; browseAccess says what it may see). Repository names
 * travel as query parameters, since they hold slashes.
 */
@Controller('api/v1')
export class ApiController {
  constructor(
    private readonly browse: BrowseService,
    @Inject(IDENTITY) private readonly identity: Identity | null,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  @Get('session')
  session(@Req() req: FastifyRequest) {
    const { user, caller } = browseAccess(this.identity, req);
    return {
      auth: this.identity !== null,
      user,
      anonymous: (this.config.auth?.anonymousPull.length ?? 1) > 0,
      admin: caller.admin,
      registry: this.registryHost(req),
    };
  }

  @Get('repositories')
  repositories(@Query() query: Query, @Req() req: FastifyRequest) {
    return this.browse.repositoryPage(
      text(query, 'q') ?? '',
      text(query, 'after') ?? '',
      parseBrowseLimit(queryParam(query.limit)),
      browseAccess(this.identity, req).caller,
    );
  }

  @Get('tags')
  tags(@Query() query: Query, @Req() req: FastifyRequest) {
    return this.browse.tagPage(
      this.visibleRepository(query, req),
      text(query, 'q') ?? '',
      text(query, 'after') ?? '',
      parseBrowseLimit(queryParam(query.limit)),
    );
  }

  @Get('image')
  image(@Query() query: Query, @Req() req: FastifyRequest) {
    return this.browse.image(this.visibleRepository(query, req), required(query, 'reference', 200));
  }

  @Get('timeline')
  timeline(@Query() query: Query, @Req() req: FastifyRequest) {
    return this.browse.timeline(this.visibleRepository(query, req), required(query, 'tag', 128));
  }

  @Get('diff')
  diff(@Query() query: Query, @Req() req: FastifyRequest) {
    return this.browse.diff(
      this.visibleRepository(query, req),
      required(query, 'from', 200),
      required(query, 'to', 200),
    );
  }

  @Get('audit')
  audit(@Query() query: Query, @Req() req: FastifyRequest) {
    const { user, caller } = browseAccess(this.identity, req);
    // Who did what is for accounts, not for anonymous visitors (whatever they may pull).
    if (this.identity && user === null)
      throw new RegistryError('UNAUTHORIZED', { reason: 'the audit log needs an account' });
    const action = text(query, 'action', 64);
    if (action !== null && !/^[a-z]+(\.[a-z_]*)*$/.test(action))
      throw new RegistryError('QUERY_INVALID', {
        parameter: 'action',
        reason: 'an event type, or a prefix ending in .',
      });
    const repository = text(query, 'repository');
    if (repository !== null && !isValidName(repository))
      throw new RegistryError('NAME_INVALID', { name: repository });
    const filter: AuditFilter = {
      before: seq(query, 'before'),
      actor: text(query, 'actor'),
      repository,
      action,
      since: time(query, 'since'),
      until: time(query, 'until'),
    };
    return this.browse.audit(filter, parseBrowseLimit(queryParam(query.limit)), caller);
  }

  /**
   * The repository named by the query, when the caller may pull it. One it may not is answered as unknown, the
   * same as one that does not exist, so the API does not tell which names exist.
   */
  private visibleRepository(query: Query, req: FastifyRequest): string {
    const name = repositoryParam(query);
    if (!browseAccess(this.identity, req).caller.visible(name))
      throw new RegistryError('NAME_UNKNOWN', { name });
    return name;
  }

  /** host[:port] for pull lines: the configured external URL's, else the one the browser used. */
  private registryHost(req: FastifyRequest): string {
    const external = this.config.auth?.externalUrl;
    if (external) return new URL(external).host;
    const host = req.headers.host;
    return host && /^[A-Za-z0-9.:[\]-]{1,300}$/.test(host) ? host : 'localhost';
  }
}
