import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault = 'slowdown' | 'internal' | 'reset-before' | 'reset-after' | 'slow' | 'forbidden';

/**
 * A loopback HTTP proxy in front of an S3 endpoint that injects faults: `pick(n)` chooses, for the
 * n-th request (0-based), a fault or none. `slowdown` answers 503 SlowDown and `internal` 500
 * InternalError without forwarding; `reset-before` drops the connection without forwarding;
 * `reset-after` forwards, lets the store act, then drops the connection instead of answering (the
 * client cannot know the request landed); `slow` waits 1.5 s before forwarding; `forbidden` answers
 * 403 AccessDenied. The Host header passes unchanged, so SigV4 signatures stay valid.
 */
export async function startFaultProxy(target: string, pick: (n: number) => Fault | undefined): Promise<{ endpoint: string; faults: Record<string, number>; requests: () => number; maxInFlight: () => number; stop: () => Promise<void> }> {
  const to = new URL(target);
  const faults: Record<string, number> = {};
  let n = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const xml = (res: http.ServerResponse, status: number, code: string): void => {
    res.writeHead(status, { 'content-type': 'application/xml' });
    res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected ${code}</Message></Error>`);
  };
  const server = http.createServer((req, res) => {
    const fault = pick(n++);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.on('close', () => inFlight--);
    if (fault) faults[fault] = (faults[fault] ?? 0) + 1;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (fault === 'slowdown') return xml(res, 503, 'SlowDown');
      if (fault === 'internal') return xml(res, 500, 'InternalError');
      if (fault === 'forbidden') return xml(res, 403, 'AccessDenied');
      if (fault === 'reset-before') return req.socket.destroy();
      const forward = (): void => {
        const up = http.request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
          const body: Buffer[] = [];
          ur.on('data', (c: Buffer) => body.push(c));
          ur.on('end', () => {
            if (fault === 'reset-after') return req.socket.destroy();
            res.writeHead(ur.statusCode!, ur.headers);
            res.end(Buffer.concat(body));
          });
        });
        up.on('error', () => req.socket.destroy());
        up.end(Buffer.concat(chunks));
      };
      if (fault === 'slow') setTimeout(forward, 1500);
      else forward();
    });
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    faults,
    requests: () => n,
    maxInFlight: () => maxInFlight,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
