import { Controller, Get, Header } from '@nestjs/common';

@Controller('v2')
export class BaseController {
  /** API version check: the registry speaks OCI distribution (registry/2.0). */
  @Get()
  @Header('Docker-Distribution-API-Version', 'registry/2.0')
  base(): Record<string, never> {
    return {};
  }
}
