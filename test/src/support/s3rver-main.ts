/**
 * Runs s3rver on loopback (port chosen by the system) in a folder, with one bucket, and prints
 * `{"port":N}` on stdout once it listens. Started by `startS3Server` as its own process, under
 * `--openssl-legacy-provider`: s3rver builds its list continuation tokens with DES, which OpenSSL 3
 * offers only through the legacy provider. Usage: node s3rver-main.js DIR BUCKET
 */
// @ts-expect-error s3rver ships no declaration file
import S3rverModule from 's3rver';

interface S3rverInstance {
  run(): Promise<{ port: number }>;
  close(): Promise<void>;
}
const S3rver = S3rverModule as new (opts: Record<string, unknown>) => S3rverInstance;

const [dir, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: dir, configureBuckets: [{ name: bucket, configs: [] }] });
const addr = await server.run();
process.stdout.write(JSON.stringify({ port: addr.port }) + '\n');
const stop = (): void => {
  void server.close().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
