import { Controller, Get, Inject, Req, Res } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Identity } from '@strata/identity';
import { RegistryError } from '@strata/oci';
import type { Config } from '../config/config';
import { CONFIG, IDENTITY, METRICS } from '../tokens';
import type { Metrics } from './metrics';
import { scrapeRefusal } from './metrics.endpoint';

/** `GET /metrics` on the registry's port, unless STRATA_METRICS_PORT moves it (or STRATA_METRICS turns it off). */
@Controller('metrics')
export class MetricsController {
  constructor(
    @Inject(METRICS) private readonly metrics: Metrics | null,
    @Inject(IDENTITY) private readonly identity: Identity | null,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  @Get()
  async scrape(@Req() req: FastifyRequest, @Res() reply: FastifyReply): Promise<void> {
    if (!this.metrics || this.config.metricsPort !== null)
      throw new RegistryError('ROUTE_UNKNOWN', {
        reason: 'metrics are off here (STRATA_METRICS, STRATA_METRICS_PORT)',
      });
    const refused = await scrapeRefusal(this.identity, req.headers.authorization, req.ip ?? null);
    if (refused) {
      if (refused.status === 401) reply.header('WWW-Authenticate', 'Basic realm="strata metrics"');
      throw refused;
    }
    const text = await this.metrics.registry.metrics();
    await reply.code(200).header('Content-Type', this.metrics.registry.contentType).send(text);
  }
}
