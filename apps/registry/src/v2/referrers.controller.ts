import { Controller, Get, Param, Query, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { MEDIA_TYPE } from '@strata/oci';
import { CatalogService } from '@strata/registry';
import { queryParams } from '../http/pagination';

@Controller('v2/:name/referrers')
export class ReferrersController {
  constructor(private readonly catalog: CatalogService) {}

  @Get(':digest')
  async list(
    @Param('name') name: string,
    @Param('digest') digest: string,
    @Query() query: Record<string, unknown>,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const artifactTypes = queryParams(query.artifactType);
    const index = await this.catalog.referrers(name, digest, artifactTypes);
    if (artifactTypes.length > 0) reply.header('OCI-Filters-Applied', 'artifactType');
    // A Buffer, so Fastify appends no charset to the media type clients compare exactly.
    await reply
      .code(200)
      .header('Content-Type', MEDIA_TYPE.OCI_INDEX)
      .send(Buffer.from(JSON.stringify(index)));
  }
}
