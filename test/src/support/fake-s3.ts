import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request the fake saw: method, key (path without the bucket), query and the headers that matter here. */
export interface SeenRequest {
  method: string;
  key: string;
  query: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * A few S3 calls on loopback, enough to test the requests Ferry sends for Object Lock and conditional
 * writes, which neither s3rver nor any other store installable here implements: HEAD bucket,
 * GET ?object-lock, PUT/GET/HEAD/DELETE object (PUT honours `If-None-Match: *` with 412), PUT and
 * GET ?retention (a compliance date cannot be shortened, and DELETE of an object before its date is
 * refused with 403 AccessDenied, as AWS documents). Path-style URLs only.
 */
export async function startFakeS3(opts: { bucket: string; objectLock: boolean }): Promise<{ endpoint: string; seen: SeenRequest[]; retention: Map<string, { mode: string; until: string }>; stop: () => Promise<void> }> {
  const objects = new Map<string, Buffer>();
  const retention = new Map<string, { mode: string; until: string }>();
  const seen: SeenRequest[] = [];
  const error = (res: http.ServerResponse, status: number, code: string): void => {
    res.writeHead(status, { 'content-type': 'application/xml' });
    res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`);
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url!, 'http://x');
      const [, bucket, ...rest] = url.pathname.split('/');
      const key = decodeURIComponent(rest.join('/'));
      const body = Buffer.concat(chunks);
      const query = url.search.replace(/^\?/, '');
      seen.push({ method: req.method!, key, query, headers: req.headers, body: body.toString('utf8') });
      if (bucket !== opts.bucket) return error(res, 404, 'NoSuchBucket');
      const q = url.searchParams;
      if (!key) {
        if (req.method === 'HEAD') return res.writeHead(200).end();
        if (q.has('object-lock')) {
          if (!opts.objectLock) return error(res, 404, 'ObjectLockConfigurationNotFoundError');
          res.writeHead(200, { 'content-type': 'application/xml' });
          return res.end('<?xml version="1.0" encoding="UTF-8"?><ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>');
        }
        return error(res, 501, 'NotImplemented');
      }
      if (q.has('retention')) {
        if (!objects.has(key)) return error(res, 404, 'NoSuchKey');
        if (req.method === 'PUT') {
          const mode = /<Mode>([^<]+)<\/Mode>/.exec(body.toString())?.[1] ?? '';
          const until = /<RetainUntilDate>([^<]+)<\/RetainUntilDate>/.exec(body.toString())?.[1] ?? '';
          const had = retention.get(key);
          if (had && had.mode === 'COMPLIANCE' && Date.parse(until) < Date.parse(had.until)) return error(res, 403, 'AccessDenied');
          retention.set(key, { mode, until });
          return res.writeHead(200).end();
        }
        const r = retention.get(key);
        if (!r) return error(res, 404, 'NoSuchObjectLockConfiguration');
        res.writeHead(200, { 'content-type': 'application/xml' });
        return res.end(`<?xml version="1.0" encoding="UTF-8"?><Retention><Mode>${r.mode}</Mode><RetainUntilDate>${r.until}</RetainUntilDate></Retention>`);
      }
      switch (req.method) {
        case 'PUT':
          if (req.headers['if-none-match'] === '*' && objects.has(key)) return error(res, 412, 'PreconditionFailed');
          objects.set(key, body);
          return res.writeHead(200, { etag: '"e"' }).end();
        case 'GET':
          if (!objects.has(key)) return error(res, 404, 'NoSuchKey');
          return res.writeHead(200, { 'content-length': objects.get(key)!.length }).end(objects.get(key));
        case 'HEAD':
          return res.writeHead(objects.has(key) ? 200 : 404, { 'content-length': objects.get(key)?.length ?? 0 }).end();
        case 'DELETE': {
          const r = retention.get(key);
          if (r && Date.parse(r.until) > Date.now()) return error(res, 403, 'AccessDenied');
          objects.delete(key);
          retention.delete(key);
          return res.writeHead(204).end();
        }
      }
      return error(res, 501, 'NotImplemented');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    seen,
    retention,
    stop: () => new Promise<void>((r) => server.close(() => r())),
  };
}
