import { Controller, Get, Inject, Query, Req, Res } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Identity } from '@strata/identity';
import { CatalogService, parsePage } from '@strata/registry';
import { catalogFilter } from '../auth/access';
import { nextLink, queryParam } from '../http/pagination';
import { IDENTITY } from '../tokens';

/** A static route: the router prefers it to `v2/:name/...`, and `_catalog` is no valid repository name anyway. */
@Controller('v2/_catalog')
export class CatalogController {
  constructor(
    private readonly catalog: CatalogService,
    @Inject(IDENTITY) private readonly identity: Identity | null,
  ) {}

  @Get()
  async list(
    @Query() query: Record<string, unknown>,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const page = await this.catalog.repositoryNames(
      parsePage(queryParam(query.n), queryParam(query.last)),
      catalogFilter(this.identity, req),
    );
    const link = nextLink('/v2/_catalog', page);
    if (link !== null) reply.header('Link', link);
    await reply.code(200).send({ repositories: page.items });
  }
}
