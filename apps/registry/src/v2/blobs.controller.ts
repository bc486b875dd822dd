import { Controller, Delete, Get, Head, Inject, Param, Req, Res } from '@nestjs/common';
import type { Logger } from 'pino';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '@strata/oci';
import { BlobService } from '@strata/registry';
import { parseByteRange } from '../http/body';
import { sendObject } from '../http/send-object';
import { LOGGER } from '../tokens';
import { requestMeta } from '../http/request-context';

@Controller('v2/:name/blobs')
export class BlobsController {
  constructor(
    private readonly blobs: BlobService,
    @Inject(LOGGER) private readonly logger: Logger,
  ) {}

  @Head(':digest')
  async head(
    @Param('name') name: string,
    @Param('digest') digest: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const blob = await this.blobs.stat(name, digest);
    await reply
      .code(200)
      .headers({
        'Content-Length': String(blob.size),
        'Content-Type': 'application/octet-stream',
        'Docker-Content-Digest': blob.digest,
        'Accept-Ranges': 'bytes',
        ETag: `"${blob.digest}"`,
      })
      .send();
  }

  @Get(':digest')
  async get(
    @Param('name') name: string,
    @Param('digest') digest: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const blob = await this.blobs.stat(name, digest);
    const range = parseByteRange(req.headers.range, blob.size);
    const headers = {
      'Content-Type': 'application/octet-stream',
      'Docker-Content-Digest': blob.digest,
      'Accept-Ranges': 'bytes',
      ETag: `"${blob.digest}"`,
    };
    if (range === 'unsatisfiable') {
      throw new RegistryError('RANGE_INVALID', { size: blob.size });
    }
    if (blob.size === 0) {
      await reply
        .code(200)
        .headers({ ...headers, 'Content-Length': '0' })
        .send('');
      return;
    }
    const reader = await this.blobs.openReader(blob);
    if (reader) {
      await sendObject(
        reply,
        reader,
        range
          ? {
              status: 206,
              headers: {
                ...headers,
                'Content-Length': String(range.end - range.start + 1),
                'Content-Range': `bytes ${range.start}-${range.end}/${blob.size}`,
              },
              start: range.start,
              end: range.end,
            }
          : {
              status: 200,
              headers: { ...headers, 'Content-Length': String(blob.size) },
              start: 0,
              end: blob.size - 1,
            },
        this.logger,
      );
      return;
    }
    const stream = await this.blobs.open(blob, range ?? undefined);
    if (range) {
      await reply
        .code(206)
        .headers({
          ...headers,
          'Content-Length': String(range.end - range.start + 1),
          'Content-Range': `bytes ${range.start}-${range.end}/${blob.size}`,
        })
        .send(stream);
      return;
    }
    await reply
      .code(200)
      .headers({ ...headers, 'Content-Length': String(blob.size) })
      .send(stream);
  }

  @Delete(':digest')
  async unlink(
    @Param('name') name: string,
    @Param('digest') digest: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.blobs.unlink(name, digest, requestMeta(req));
    await reply.code(202).header('Content-Length', '0').send();
  }
}
