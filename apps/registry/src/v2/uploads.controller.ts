import {
  Controller,
  Delete,
  Get,
  Head,
  Inject,
  Param,
  Patch,
  Post,
  Put,
  Query,
  Req,
  Res,
} from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { assertName, RegistryError } from '@strata/oci';
import type { Identity } from '@strata/identity';
import { BlobService, uploadRange, UploadService } from '@strata/registry';
import { callerMay } from '../auth/access';
import { IDENTITY } from '../tokens';
import { parseContentRange, requestBody } from '../http/body';
import { requestMeta } from '../http/request-context';
import { blobExisted } from '../metrics/metrics';

const uploadLocation = (name: string, id: string): string => `/v2/${name}/blobs/uploads/${id}`;
const blobLocation = (name: string, digest: string): string => `/v2/${name}/blobs/${digest}`;

function single(v: unknown): string | undefined {
  if (Array.isArray(v)) return single(v[0]);
  return typeof v === 'string' ? v : undefined;
}

@Controller('v2/:name/blobs/uploads')
export class UploadsController {
  constructor(
    private readonly uploads: UploadService,
    private readonly blobs: BlobService,
    @Inject(IDENTITY) private readonly identity: Identity | null,
  ) {}

  /** Starts an upload; `?digest=` with a body uploads in one request; `?mount=&from=` links an existing blob. */
  @Post()
  async start(
    @Param('name') name: string,
    @Query() query: Record<string, unknown>,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    assertName(name);
    const meta = requestMeta(req);
    const mount = single(query.mount);
    const from = single(query.from);
    // A mount from a repository the caller may not pull is an ordinary upload session, as the spec allows: the
    // answer does not tell whether the blob is there.
    if (
      mount !== undefined &&
      from !== undefined &&
      callerMay(this.identity, req, from, 'pull') &&
      (await this.blobs.mount(name, mount, from, meta))
    ) {
      await reply
        .code(201)
        .headers({ Location: blobLocation(name, mount), 'Docker-Content-Digest': mount })
        .send();
      return;
    }
    const digest = single(query.digest);
    const body = requestBody(req);
    if (digest !== undefined && mount === undefined) {
      const blob = await this.uploads.upload(name, digest, body ?? (async function* () {})(), meta);
      if (blob.existed) blobExisted(req);
      await reply
        .code(201)
        .headers({ Location: blobLocation(name, blob.digest), 'Docker-Content-Digest': blob.digest })
        .send();
      return;
    }
    const upload = await this.uploads.start(name, meta);
    await reply
      .code(202)
      .headers({
        Location: uploadLocation(name, upload.id),
        'Docker-Upload-UUID': upload.id,
        Range: uploadRange(0),
      })
      .send();
  }

  @Patch(':id')
  async append(
    @Param('name') name: string,
    @Param('id') id: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    assertName(name);
    const range = parseContentRange(req.headers['content-range']);
    const body = requestBody(req) ?? (async function* () {})();
    const upload = await this.uploads.append(name, id, body, range, requestMeta(req));
    await reply
      .code(202)
      .headers({
        Location: uploadLocation(name, id),
        'Docker-Upload-UUID': id,
        Range: uploadRange(upload.size),
      })
      .send();
  }

  @Put(':id')
  async commit(
    @Param('name') name: string,
    @Param('id') id: string,
    @Query('digest') digest: unknown,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    assertName(name);
    const d = single(digest);
    if (d === undefined) throw new RegistryError('DIGEST_INVALID', 'the digest query parameter is required');
    const blob = await this.uploads.commit(name, id, d, requestBody(req), requestMeta(req));
    if (blob.existed) blobExisted(req);
    await reply
      .code(201)
      .headers({ Location: blobLocation(name, blob.digest), 'Docker-Content-Digest': blob.digest })
      .send();
  }

  @Get(':id')
  async status(
    @Param('name') name: string,
    @Param('id') id: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.sendStatus(name, id, reply);
  }

  @Head(':id')
  async statusHead(
    @Param('name') name: string,
    @Param('id') id: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.sendStatus(name, id, reply);
  }

  private async sendStatus(name: string, id: string, reply: FastifyReply): Promise<void> {
    assertName(name);
    const upload = await this.uploads.status(name, id);
    await reply
      .code(204)
      .headers({
        Location: uploadLocation(name, id),
        'Docker-Upload-UUID': id,
        Range: uploadRange(upload.size),
      })
      .send();
  }

  @Delete(':id')
  async cancel(
    @Param('name') name: string,
    @Param('id') id: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    assertName(name);
    await this.uploads.cancel(name, id, requestMeta(req));
    await reply.code(204).send();
  }
}
