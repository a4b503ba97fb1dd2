import { randomBytes } from 'node:crypto';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  UploadPartCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { FerryError, type BackendRequestStats, type RepositoryBackend, type StorageProtection } from '@ferry/core/plugin';

const KEY = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

/** The `repository:` section of a job (or a repository YAML file) with `type: s3`. */
export interface S3RepositoryConfig {
  bucket: string;
  prefix?: string;
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  credentials?: 'env' | 'profile' | { accessKeyIdEnv: string; secretAccessKeyEnv: string };
  requests?: number;
  objectLock?: 'auto' | 'required' | 'off';
  objectLockMode?: 'compliance' | 'governance';
}

/** Knobs for tests and benchmarks; the defaults are what a job gets. */
export interface S3BackendOptions {
  /** Objects at least this large go up as a multipart upload (default 64 MiB). */
  multipartThreshold?: number;
  /** Part size of a multipart upload (default 16 MiB; S3's minimum is 5 MiB). */
  partSize?: number;
  /** Attempts per request before a transient failure is final (default 8). */
  maxAttempts?: number;
  /** First backoff delay in ms; doubles each retry, full jitter, capped at 20 s (default 200). */
  backoffMs?: number;
  /** Per-request timeout in ms (default 120 000). */
  requestTimeoutMs?: number;
  /** Environment to read credentials from (default process.env). */
  env?: NodeJS.ProcessEnv;
}

/** Requests sent, by kind, and payload bytes moved (for the session report). */
export interface S3RequestCounts {
  GET: number;
  PUT: number;
  LIST: number;
  DELETE: number;
  HEAD: number;
  /** Retries included in the counts above. */
  retries: number;
  bytesUp: number;
  bytesDown: number;
}

type Kind = 'GET' | 'PUT' | 'LIST' | 'DELETE' | 'HEAD';

/** Where probe objects go: never listed as keys. */
const PROBE_PREFIX = '.ferry-probe/';
const RETENTION_PREFIX = 'mutable/retention/';

/** Error names and statuses that no retry can fix. */
const PERMANENT = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'NoSuchBucket',
  'InvalidBucketName',
  'AllAccessDisabled',
  'AccountProblem',
  'InvalidRequest',
  'InvalidArgument',
  'MethodNotAllowed',
  'NotImplemented',
  'PermanentRedirect',
  'AuthorizationHeaderMalformed',
]);
const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET']);

interface AwsError {
  name?: string;
  code?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $response?: { statusCode?: number };
  $retryable?: unknown;
}

function statusOf(err: unknown): number | undefined {
  const e = err as AwsError;
  return e?.$metadata?.httpStatusCode ?? e?.$response?.statusCode;
}

function nameOf(err: unknown): string {
  const e = err as AwsError;
  return String(e?.Code ?? e?.name ?? e?.code ?? 'Error');
}

/** Whether a failed request may succeed when sent again (5xx, SlowDown, throttling, timeouts, resets). */
export function isTransient(err: unknown): boolean {
  const e = err as AwsError;
  const name = nameOf(err);
  if (PERMANENT.has(name)) return false;
  const status = statusOf(err);
  if (status !== undefined && status >= 500) return true;
  if (status === 429 || status === 408) return true;
  if (['SlowDown', 'ConditionalRequestConflict', 'Throttling', 'ThrottlingException', 'RequestTimeout', 'RequestTimeTooSkewed', 'InternalError', 'ServiceUnavailable', 'TimeoutError', 'RequestTimeoutException'].includes(name)) return true;
  if (e?.code && TRANSIENT_CODES.has(e.code)) return true;
  if (/socket hang up|ECONNRESET|EPIPE|timed? ?out|aborted|premature close|other side closed/i.test(String(e?.message ?? ''))) return true;
  // No HTTP status at all: the request never got an answer (connection-level failure).
  return status === undefined && !(err instanceof FerryError) && !PERMANENT.has(name) && name !== 'CredentialsProviderError';
}

/** A counting semaphore: at most `size` requests in flight. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(size: number) {
    this.free = size;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

/**
 * A repository in an S3 bucket (AWS S3 or an S3-compatible store), one object per key under
 * `prefix`. S3 makes every PUT atomic (readers see the whole old or the whole new object) and, since
 * December 2020, every read and list strongly consistent after a write or delete, which is what the
 * backend contract asks for. `putIfAbsent` sends `If-None-Match: *`; on a store that ignores it
 * (probed once per backend) it falls back to HEAD, PUT and a read-back of a unique marker (README).
 */
export class S3Backend implements RepositoryBackend {
  readonly location: string;
  private readonly client: S3Client;
  private readonly prefix: string;
  private readonly slots: Slots;
  private readonly opts: Required<Omit<S3BackendOptions, 'env'>>;
  private readonly counts: S3RequestCounts = { GET: 0, PUT: 0, LIST: 0, DELETE: 0, HEAD: 0, retries: 0, bytesUp: 0, bytesDown: 0 };
  private readyPromise?: Promise<void>;
  private conditionalPromise?: Promise<boolean>;
  /** Object Lock on the bucket, as found on first use (objectLock auto|required). */
  private objectLockActive = false;
  /** What the backend found that a report should say (Object Lock missing with `auto`, ...). */
  readonly notes: string[] = [];
  /** Per-key queues for the fallback `putIfAbsent`: one process never races itself. */
  private readonly keyQueues = new Map<string, Promise<unknown>>();

  constructor(
    readonly config: S3RepositoryConfig,
    options: S3BackendOptions = {},
  ) {
    this.opts = {
      multipartThreshold: options.multipartThreshold ?? 64 * 1024 * 1024,
      partSize: Math.max(options.partSize ?? 16 * 1024 * 1024, 1),
      maxAttempts: options.maxAttempts ?? 8,
      backoffMs: options.backoffMs ?? 200,
      requestTimeoutMs: options.requestTimeoutMs ?? 120_000,
    };
    const prefix = config.prefix ?? '';
    this.prefix = prefix === '' || prefix.endsWith('/') ? prefix.replace(/^\/+/, '') : `${prefix.replace(/^\/+/, '')}/`;
    this.location = `s3://${config.bucket}/${this.prefix}`;
    const requests = config.requests ?? 16;
    this.slots = new Slots(requests);
    const clientConfig: S3ClientConfig = {
      region: config.region ?? 'us-east-1',
      forcePathStyle: config.forcePathStyle,
      // Ferry retries itself (below), so it can count, classify and bound every attempt.
      maxAttempts: 1,
      requestHandler: { requestTimeout: this.opts.requestTimeoutMs, throwOnRequestTimeout: true, connectionTimeout: 30_000, httpsAgent: { maxSockets: requests, keepAlive: true }, httpAgent: { maxSockets: requests, keepAlive: true } },
      // Checksums only when an operation requires one: S3-compatible stores differ in what they accept.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
    if (config.endpoint) clientConfig.endpoint = config.endpoint;
    // The SDK warns once per process on Node < 22 (its releases after January 2027 will need 22);
    // Ferry supports Node 20, and the warning would land in every command's output.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const creds = credentialsFor(config, options.env ?? process.env);
    if (creds) clientConfig.credentials = creds;
    this.client = new S3Client(clientConfig);
  }

  /** Requests sent so far by kind, and bytes moved. */
  requestCounts(): S3RequestCounts {
    return { ...this.counts };
  }

  /** For the session report: the counts and what the backend found (Object Lock missing). */
  requestStats(): BackendRequestStats {
    return { ...this.counts, ...(this.notes.length && { notes: [...this.notes] }) };
  }

  async get(key: string): Promise<Uint8Array> {
    await this.ready();
    return this.send('GET', key, async () => {
      try {
        const r = await this.client.send(new GetObjectCommand({ Bucket: this.config.bucket, Key: this.k(key) }));
        const body = await r.Body!.transformToByteArray();
        this.counts.bytesDown += body.length;
        return body;
      } catch (err) {
        throw notFound(err, key) ?? err;
      }
    });
  }

  /** A ranged GET: a restore reads single blocks out of large packs. */
  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    if (length === 0) return new Uint8Array(0);
    await this.ready();
    const body = await this.send('GET', key, async () => {
      try {
        const r = await this.client.send(new GetObjectCommand({ Bucket: this.config.bucket, Key: this.k(key), Range: `bytes=${offset}-${offset + length - 1}` }));
        const b = await r.Body!.transformToByteArray();
        this.counts.bytesDown += b.length;
        return b;
      } catch (err) {
        throw notFound(err, key) ?? err;
      }
    });
    if (body.length !== length) throw new FerryError('REPO_CORRUPT_OBJECT', `object is shorter than ${offset + length} bytes (${this.location})`, { object: key });
    return body;
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    await this.ready();
    await this.upload(key, data, false);
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    await this.ready();
    if (await this.conditionalWrites()) return this.upload(key, data, true);
    return this.putIfAbsentFallback(key, data);
  }

  async has(key: string): Promise<boolean> {
    await this.ready();
    return (await this.head(key)) !== undefined;
  }

  async *list(prefix: string): AsyncIterable<string> {
    await this.ready();
    // Pages continue after the last key (StartAfter): every S3-compatible store tested takes it,
    // where some (s3rver) fail on continuation tokens.
    let after: string | undefined;
    for (;;) {
      const page = await this.send('LIST', prefix, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.config.bucket, Prefix: this.prefix + prefix, StartAfter: after, MaxKeys: 1000 })),
      );
      const items = page.Contents ?? [];
      for (const o of items) {
        const key = o.Key!.slice(this.prefix.length);
        if (!key.startsWith(PROBE_PREFIX)) yield key;
      }
      if (!page.IsTruncated || items.length === 0) break;
      after = items[items.length - 1].Key;
    }
  }

  async delete(key: string): Promise<void> {
    await this.ready();
    const until = key.startsWith('mutable/') ? undefined : await this.retainedUntil(key);
    if (until && until.getTime() > Date.now()) {
      throw new FerryError('REPO_IMMUTABLE', `${key} is retained until ${until.toISOString()} and cannot be deleted before then (${this.location})`, { object: key });
    }
    await this.send('DELETE', key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: this.k(key) })));
    if (until && !this.objectLockActive) {
      await this.send('DELETE', RETENTION_PREFIX + key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: this.k(RETENTION_PREFIX + key) })));
    }
  }

  /**
   * Format 2 retain-until dates. With Object Lock on the bucket: PutObjectRetention in the configured
   * mode (compliance by default), which the store itself enforces. Without it (`objectLock: auto` on
   * a bucket without Object Lock, or `off`): the date is recorded in `mutable/retention/<key>` and
   * only `delete` here enforces it. A date is never shortened.
   */
  async retain(keys: string[], requested: Date): Promise<StorageProtection> {
    await this.ready();
    // S3 keeps retention dates to the second: round up, never down.
    const until = new Date(Math.ceil(requested.getTime() / 1000) * 1000);
    await Promise.all(
      keys.map(async (key) => {
        const had = await this.retainedUntil(key);
        if (had && had.getTime() >= until.getTime()) return;
        if (this.objectLockActive) {
          await this.send('PUT', key, () =>
            this.client.send(
              new PutObjectRetentionCommand({
                Bucket: this.config.bucket,
                Key: this.k(key),
                Retention: { Mode: this.config.objectLockMode === 'governance' ? 'GOVERNANCE' : 'COMPLIANCE', RetainUntilDate: until },
              }),
            ),
          );
        } else {
          await this.upload(RETENTION_PREFIX + key, Buffer.from(until.toISOString() + '\n'), false);
        }
      }),
    );
    if (this.objectLockActive) return { readOnly: true, immutable: true };
    return {
      readOnly: false,
      immutable: false,
      note:
        this.config.objectLock === 'off'
          ? `objectLock is off for ${this.location}: retain-until dates are kept by Ferry only`
          : `bucket ${this.config.bucket} has no Object Lock: retain-until dates are kept by Ferry only`,
    };
  }

  async retainedUntil(key: string): Promise<Date | undefined> {
    await this.ready();
    if (this.objectLockActive) {
      try {
        const r = await this.send('GET', key, () => this.client.send(new GetObjectRetentionCommand({ Bucket: this.config.bucket, Key: this.k(key) })));
        return r.Retention?.RetainUntilDate ? new Date(r.Retention.RetainUntilDate) : undefined;
      } catch (err) {
        if (err instanceof FerryError && (err.code === 'REPO_OBJECT_NOT_FOUND' || /NoSuchObjectLockConfiguration/.test(err.message))) return undefined;
        throw err;
      }
    }
    let text: string;
    try {
      text = Buffer.from(await this.get(RETENTION_PREFIX + key)).toString('utf8');
    } catch (err) {
      if (err instanceof FerryError && err.code === 'REPO_OBJECT_NOT_FOUND') return undefined;
      throw err;
    }
    const t = Date.parse(text.trim());
    // An unreadable record keeps the object: never lift protection on a date that cannot be read.
    return new Date(Number.isNaN(t) ? 8.64e15 : t);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  // ---- internals ----

  private k(key: string): string {
    if (!KEY.test(key)) throw new FerryError('INTERNAL', `invalid repository key ${JSON.stringify(key)}`, { object: key });
    return this.prefix + key;
  }

  /** Checks the bucket once (fails fast on a missing bucket or bad credentials) and Object Lock. */
  private ready(): Promise<void> {
    this.readyPromise ??= (async () => {
      await this.send('HEAD', '', () => this.client.send(new HeadBucketCommand({ Bucket: this.config.bucket })));
      const mode = this.config.objectLock ?? 'auto';
      if (mode === 'off') return;
      let enabled = false;
      let why = '';
      try {
        const r = await this.send('GET', '?object-lock', () => this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.config.bucket })), true);
        enabled = r.ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled';
        if (!enabled) why = 'Object Lock is not enabled on it';
      } catch (err) {
        const name = nameOf((err as { cause?: unknown }).cause ?? err);
        if (!(err instanceof FerryError) || (!err.detail.startsWith('permanent') && err.code !== 'REPO_OBJECT_NOT_FOUND')) throw err;
        why = /ObjectLockConfigurationNotFound/.test(String(err.message) + name)
          ? 'Object Lock is not enabled on it'
          : /AccessDenied/.test(name)
            ? 'these credentials may not read its Object Lock configuration (AccessDenied)'
            : `the store does not support Object Lock (${name})`;
      }
      if (enabled) {
        this.objectLockActive = true;
        return;
      }
      if (mode === 'required') {
        throw new FerryError('REPO_OBJECT_LOCK', `objectLock: required, but bucket ${this.config.bucket} cannot lock objects: ${why}; enable Object Lock when creating the bucket, or set objectLock: auto or off`, {
          object: this.location,
        });
      }
      this.notes.push(`bucket ${this.config.bucket} has no Object Lock: ${why}; objects stay mutable at the store, and only Ferry's own rules keep retain-until dates`);
    })();
    // A failure is not remembered: the next operation checks again (after a network outage, say).
    this.readyPromise.catch(() => (this.readyPromise = undefined));
    return this.readyPromise;
  }

  /** Whether the store honours `If-None-Match: *` on PUT: probed once (a second create must fail). */
  private conditionalWrites(): Promise<boolean> {
    this.conditionalPromise ??= (async () => {
      const probe = `${PROBE_PREFIX}${randomBytes(12).toString('hex')}`;
      const putOnce = async (): Promise<boolean> => {
        try {
          await this.send('PUT', probe, () => this.client.send(new PutObjectCommand({ Bucket: this.config.bucket, Key: this.prefix + probe, Body: Buffer.from('probe'), IfNoneMatch: '*' })), true);
          return true;
        } catch (err) {
          if (err instanceof FerryError && /PreconditionFailed|\b412\b/.test(err.message)) return false;
          if (err instanceof FerryError && /NotImplemented|\b501\b/.test(err.message)) return true; // header refused: treat as unsupported
          throw err;
        }
      };
      try {
        await putOnce();
        const second = await putOnce();
        return !second;
      } finally {
        await this.send('DELETE', probe, () => this.client.send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: this.prefix + probe }))).catch(() => undefined);
      }
    })();
    this.conditionalPromise.catch(() => (this.conditionalPromise = undefined));
    return this.conditionalPromise;
  }

  /**
   * `putIfAbsent` on a store without conditional writes (s3rver, older MinIO/Ceph): queued per key in
   * this process, then HEAD; when missing, PUT with a unique marker in the object's metadata and read
   * the marker back: the call created the object only when the marker is still its own. Remaining
   * race (README): two processes that both HEAD before either PUTs both write; the second PUT
   * replaces the first, and a read-back that happens before the second PUT lands reports success to
   * both. Ferry's write-once objects are named by their content (packs, index objects) or by a unique
   * id (points), so two writers of one key write the same bytes or never meet.
   */
  private putIfAbsentFallback(key: string, data: Uint8Array): Promise<boolean> {
    const prev = this.keyQueues.get(key) ?? Promise.resolve();
    const run = prev.then(async () => {
      if ((await this.head(key)) !== undefined) return false;
      const marker = randomBytes(16).toString('hex');
      await this.upload(key, data, false, { 'ferry-writer': marker });
      const meta = await this.head(key);
      return meta?.['ferry-writer'] === marker;
    });
    const tail = run.catch(() => undefined);
    this.keyQueues.set(key, tail);
    void tail.then(() => {
      if (this.keyQueues.get(key) === tail) this.keyQueues.delete(key);
    });
    return run;
  }

  /** HEAD: the object's user metadata, or undefined when it does not exist. */
  private async head(key: string): Promise<Record<string, string> | undefined> {
    try {
      const r = await this.send('HEAD', key, () => this.client.send(new HeadObjectCommand({ Bucket: this.config.bucket, Key: this.k(key) })));
      return r.Metadata ?? {};
    } catch (err) {
      if (err instanceof FerryError && err.code === 'REPO_OBJECT_NOT_FOUND') return undefined;
      throw err;
    }
  }

  /** PUT, as one request or (large objects) a multipart upload; `ifAbsent` adds `If-None-Match: *`. */
  private async upload(key: string, data: Uint8Array, ifAbsent: boolean, metadata?: Record<string, string>): Promise<boolean> {
    const Key = this.k(key);
    const state = { retried: false };
    // A 412 after a retry may answer our own first attempt, which landed while its answer was lost
    // (a reset after the store acted): the object holding exactly our bytes means this call made it.
    const created = async (err: unknown): Promise<boolean> => {
      if (!(ifAbsent && err instanceof FerryError && /PreconditionFailed|\b412\b/.test(err.message))) throw err;
      if (!state.retried) return false;
      const now = await this.get(key).catch(() => undefined);
      return now !== undefined && Buffer.from(now).equals(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    };
    if (data.length < this.opts.multipartThreshold) {
      return this.send('PUT', key, async () => {
        await this.client.send(new PutObjectCommand({ Bucket: this.config.bucket, Key, Body: data, ContentLength: data.length, Metadata: metadata, ...(ifAbsent && { IfNoneMatch: '*' }) }));
        this.counts.bytesUp += data.length;
        return true;
      }, false, state).catch(created);
    }
    const up = await this.send('PUT', key, () => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.config.bucket, Key, Metadata: metadata })));
    const UploadId = up.UploadId!;
    try {
      const parts: { ETag: string; PartNumber: number }[] = [];
      const jobs: Promise<void>[] = [];
      for (let off = 0, n = 1; off < data.length; off += this.opts.partSize, n++) {
        const body = data.subarray(off, Math.min(off + this.opts.partSize, data.length));
        const PartNumber = n;
        jobs.push(
          this.send('PUT', key, async () => {
            const r = await this.client.send(new UploadPartCommand({ Bucket: this.config.bucket, Key, UploadId, PartNumber, Body: body, ContentLength: body.length }));
            this.counts.bytesUp += body.length;
            parts.push({ ETag: r.ETag!, PartNumber });
          }),
        );
      }
      await Promise.all(jobs);
      parts.sort((a, b) => a.PartNumber - b.PartNumber);
      return await this.send('PUT', key, async () => {
        await this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.config.bucket, Key, UploadId, MultipartUpload: { Parts: parts }, ...(ifAbsent && { IfNoneMatch: '*' }) }));
        return true;
      }, false, state).catch(created);
    } catch (err) {
      await this.send('DELETE', key, () => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.config.bucket, Key, UploadId }))).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Sends one request in a slot, counting it by kind, retrying transient failures with exponential
   * backoff and full jitter. A permanent failure (403, NoSuchBucket, InvalidAccessKeyId ...) throws
   * at once; a 404 is REPO_OBJECT_NOT_FOUND; everything else REPO_IO, naming bucket and key.
   */
  private async send<T>(kind: Kind, key: string, fn: () => Promise<T>, quiet = false, state?: { retried: boolean }): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        this.counts[kind]++;
        if (attempt > 1) {
          this.counts.retries++;
          if (state) state.retried = true;
        }
        return await this.slots.run(fn);
      } catch (err) {
        if (err instanceof FerryError) throw err;
        const status = statusOf(err);
        const name = nameOf(err);
        if (status === 404 && key === '') {
          throw new FerryError('REPO_IO', `permanent S3 error: bucket ${this.config.bucket} does not exist at ${this.config.endpoint ?? 'AWS'} (NoSuchBucket, not retried)`, { object: this.location }, { cause: err });
        }
        if (status === 404 && name !== 'NoSuchBucket') {
          throw new FerryError('REPO_OBJECT_NOT_FOUND', `no object ${key} in ${this.location} (${name})`, { object: key }, { cause: err });
        }
        if (status === 412 || name === 'PreconditionFailed') {
          throw new FerryError('REPO_OBJECT_EXISTS', `${key} exists already in ${this.location} (PreconditionFailed, 412)`, { object: key }, { cause: err });
        }
        const where = `s3://${this.config.bucket}/${this.prefix}${key}`;
        const what = `${name}${status ? `, HTTP ${status}` : ''}: ${String((err as AwsError).message ?? '').slice(0, 200)}`;
        if (!isTransient(err)) {
          throw new FerryError('REPO_IO', `permanent S3 error for ${where}: ${what} (not retried)`, { object: where }, { cause: err });
        }
        if (attempt >= this.opts.maxAttempts) {
          throw new FerryError('REPO_IO', `S3 request for ${where} failed ${attempt} times; last: ${what}`, { object: where }, { cause: err });
        }
        if (quiet && attempt >= 2) {
          throw new FerryError('REPO_IO', `S3 request for ${where} failed: ${what}`, { object: where }, { cause: err });
        }
        const cap = Math.min(20_000, this.opts.backoffMs * 2 ** (attempt - 1));
        await new Promise((r) => setTimeout(r, Math.random() * cap));
      }
    }
  }
}

function notFound(err: unknown, key: string): FerryError | undefined {
  const name = nameOf(err);
  if (name === 'NoSuchKey' || (statusOf(err) === 404 && name !== 'NoSuchBucket')) {
    return new FerryError('REPO_OBJECT_NOT_FOUND', `no object ${key} (${name})`, { object: key }, { cause: err });
  }
  return undefined;
}

/** Credentials from the configured source; undefined: the SDK's default chain (profile, env, instance role). */
function credentialsFor(config: S3RepositoryConfig, env: NodeJS.ProcessEnv): S3ClientConfig['credentials'] {
  const c = config.credentials ?? 'env';
  if (c === 'profile') return undefined;
  const [idVar, secretVar] = c === 'env' ? ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'] : [c.accessKeyIdEnv, c.secretAccessKeyEnv];
  const accessKeyId = env[idVar];
  const secretAccessKey = env[secretVar];
  if (!accessKeyId || !secretAccessKey) {
    // Name the variables, never their values.
    throw new FerryError('JOB_INVALID', `repository.credentials: environment variable ${!accessKeyId ? idVar : secretVar} is not set (S3 bucket ${config.bucket})`, {
      path: 'repository.credentials',
    });
  }
  const sessionToken = c === 'env' ? env.AWS_SESSION_TOKEN : undefined;
  return { accessKeyId, secretAccessKey, ...(sessionToken && { sessionToken }) };
}
