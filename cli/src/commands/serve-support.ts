import { formatAddress } from '@ferry/core/remote/wire';
import { loadServiceConfig, type RunningService, type ServiceConfig } from '@ferry/core/remote/services';

/** Options both serve verbs share. */
export interface ServeArgs {
  listen?: string;
  certs?: string;
  config?: string;
}

/** The config file's values, overridden by what the command line names. */
export function serviceConfig(args: ServeArgs, extra: Partial<ServiceConfig>): ServiceConfig {
  const fromFile = args.config ? loadServiceConfig(args.config) : {};
  const merged: ServiceConfig = { ...fromFile };
  if (args.listen) merged.listen = args.listen;
  if (args.certs) merged.certs = args.certs;
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) (merged as Record<string, unknown>)[k] = v;
  return merged;
}

/**
 * Prints `listening on HOST:PORT` (the real port when 0 was asked for), then serves until SIGTERM or
 * SIGINT, and stops cleanly: no new connections, open ones closed, sessions without a commit left
 * uncommitted.
 */
export async function serveUntilSignal(name: string, start: () => Promise<RunningService>): Promise<void> {
  const svc = await start();
  process.stdout.write(`listening on ${formatAddress(svc.host, svc.port)}\n`);
  const sig = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  process.stderr.write(`ferry ${name}: ${sig}: stopping\n`);
  await svc.close();
}

export function log(name: string): (line: string) => void {
  return (line) => process.stderr.write(`ferry ${name}: ${line}\n`);
}
