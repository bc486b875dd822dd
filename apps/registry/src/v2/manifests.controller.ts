import { Controller, Delete, Get, Head, Param, Put, Req, Res } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { assertName, MAX_MANIFEST_BYTES, RegistryError } from '@strata/oci';
import { type ManifestInfo, ManifestService, parseReference } from '@strata/registry';
import { readLimited, requestBody } from '../http/body';
import { requestMeta } from '../http/request-context';

const manifestHeaders = (m: ManifestInfo): Record<string, string> => ({
  'Content-Type': m.mediaType,
  'Content-Length': String(m.size),
  'Docker-Content-Digest': m.digest,
  ETag: `"${m.digest}"`,
});

@Controller('v2/:name/manifests')
export class ManifestsController {
  constructor(private readonly manifests: ManifestService) {}

  @Put(':reference')
  async put(
    @Param('name') name: string,
    @Param('reference') reference: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    // A bad name or reference, and a declared oversize body, are refused before the body is read (the error
    // filter then reads and discards it to a bound, so the client gets the answer instead of a reset connection).
    assertName(name);
    if (parseReference(reference) === null) throw new RegistryError('TAG_INVALID', { tag: reference });
    if (Number(req.headers['content-length'] ?? 0) > MAX_MANIFEST_BYTES) {
      throw new RegistryError('MANIFEST_TOO_LARGE', { limit: MAX_MANIFEST_BYTES });
    }
    const pushed = await this.manifests.put(
      name,
      reference,
      req.headers['content-type'],
      await readLimited(requestBody(req), MAX_MANIFEST_BYTES),
      requestMeta(req),
    );
    await reply
      .code(201)
      .headers({
        Location: `/v2/${name}/manifests/${pushed.digest}`,
        'Docker-Content-Digest': pushed.digest,
        ...(pushed.subject === null ? {} : { 'OCI-Subject': pushed.subject }),
      })
      .send();
  }

  /** Served whatever the Accept header says: the stored media type is the only one there is. */
  @Get(':reference')
  async get(
    @Param('name') name: string,
    @Param('reference') reference: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const manifest = await this.manifests.get(name, reference);
    await reply.code(200).headers(manifestHeaders(manifest)).send(manifest.content);
  }

  @Head(':reference')
  async head(
    @Param('name') name: string,
    @Param('reference') reference: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const manifest = await this.manifests.stat(name, reference);
    await reply.code(200).headers(manifestHeaders(manifest)).send();
  }

  @Delete(':reference')
  async delete(
    @Param('name') name: string,
    @Param('reference') reference: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.manifests.delete(name, reference, requestMeta(req));
    await reply.code(202).header('Content-Length', '0').send();
  }
}
