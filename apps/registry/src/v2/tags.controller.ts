import { Controller, Get, Param, Query, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { CatalogService, parsePage } from '@strata/registry';
import { nextLink, queryParam } from '../http/pagination';

@Controller('v2/:name/tags')
export class TagsController {
  constructor(private readonly catalog: CatalogService) {}

  @Get('list')
  async list(
    @Param('name') name: string,
    @Query() query: Record<string, unknown>,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const page = await this.catalog.tags(name, parsePage(queryParam(query.n), queryParam(query.last)));
    const link = nextLink(`/v2/${name}/tags/list`, page);
    if (link !== null) reply.header('Link', link);
    await reply.code(200).send({ name, tags: page.items });
  }
}
