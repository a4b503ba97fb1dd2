import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** An s3rver on loopback with its own temp folder and one bucket; s3rver's fixed test credentials. */
export interface S3Server {
  endpoint: string;
  bucket: string;
  /** Environment with the credentials s3rver accepts (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY). */
  env: Record<string, string>;
  /** The `repository:` mapping of a job for this server, under `prefix`. */
  repository(prefix: string, extra?: Record<string, unknown>): Record<string, unknown>;
  stop(): Promise<void>;
}

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 's3rver-main.js');

/** Starts s3rver as a child process (its own process group) and waits, bounded, until it listens. */
export async function startS3Server(bucket = 'ferry-test'): Promise<S3Server> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-s3rver-'));
  const child = spawn(process.execPath, ['--openssl-legacy-provider', MAIN, dir, bucket], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      process.kill(-child.pid!, 'SIGTERM');
      const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 3000);
      await gone;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`s3rver did not start in 15 s: ${err}`)), 15_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { port: number }).port);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`s3rver exited (${code}) before listening: ${err}`));
    });
  }).catch(async (e: unknown) => {
    await stop();
    throw e;
  });
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    bucket,
    env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' },
    repository: (prefix, extra = {}) => ({ type: 's3', bucket, prefix, endpoint, region: 'us-east-1', forcePathStyle: true, credentials: 'env', ...extra }),
    stop,
  };
}
