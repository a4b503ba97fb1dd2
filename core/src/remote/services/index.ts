/**
 * The data-mover services (issue 4): `ferry proxy serve` (source side) and `ferry repository serve`
 * (target side), and the backup server's side of them. The messages are in `protocol.ts`; the
 * wire layer below is `../wire`.
 */
export { startProxyService, startRepositoryService, loadServiceConfig, type ServiceConfig, type RunningService } from './service-host.js';
export { ProxyService, type ProxyServiceOptions } from './proxy-service.js';
export { RepositoryService, type RepositoryServiceOptions } from './repository-service.js';
export { RemoteBackup, connectRepositoryService, type RemoteSpec } from './remote-backup.js';
export { RemoteRestore, listRemotePoints } from './remote-restore.js';
export * from './protocol.js';
