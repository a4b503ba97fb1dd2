/**
 * The data-mover services (issue 4): `ferry proxy serve` (source side) and `ferry repository serve`
 * (target side). The backup server's side of them is a session (`../../session/remote-backup.ts`,
 * `remote-restore.ts`). The messages are in `protocol.ts`; the
 * wire layer below is `../wire`.
 */
export { startProxyService, startRepositoryService, loadServiceConfig, type ServiceConfig, type RunningService } from './service-host.js';
export { ProxyService, type ProxyServiceOptions } from './proxy-service.js';
export { RepositoryService, type RepositoryServiceOptions } from './repository-service.js';
export * from './protocol.js';
