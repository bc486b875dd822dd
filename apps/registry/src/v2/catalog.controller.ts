import { Controller, Get, Query, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { CatalogService, parsePage } from '@strata/registry';
import { nextLink, queryParam } from '../http/pagination';

/** A static route: the router prefers it to `v2/:name/...`, and `_catalog` is no valid repository name anyway. */
@Controller('v2/_catalog')
export class CatalogController {
  constructor(private readonly catalog: CatalogService) {}

  @Get()
  async list(@Query() query: Record<string, unknown>, @Res() reply: FastifyReply): Promise<void> {
    const page = await this.catalog.repositoryNames(parsePage(queryParam(query.n), queryParam(query.last)));
    const link = nextLink('/v2/_catalog', page);
    if (link !== null) reply.header('Link', link);
    await reply.code(200).send({ repositories: page.items });
  }
}
