/**
 * Ferry's NBD read path alone, for the bench's comparison with nbdcopy (which copies to `null:`):
 * opens the export through the NBD transport plugin exactly as a backup does (base:allocation,
 * `connections` readers in all), walks the allocation (one block status query answers the whole
 * disk here) and reads every data extent in 1 MiB reads (the transport sends each as NBD requests of
 * its read request size, 512 KiB) with `inFlight` of them outstanding into reused buffers, then
 * discards them, like nbdcopy's
 * `null:` target. No hashing, compression or repository: the transport stage of a backup.
 *
 *   node bench/dist/nbd-read.js NBD_URI [connections] [inFlight]   prints JSON { bytesRead, ms, cpuMs }
 *
 * `ms` is the wall time from connecting to the last byte, `cpuMs` the process's CPU (user + system,
 * all threads) over the same span: the read path after Node's start-up.
 */
import { NbdTransport } from '@ferry/transport-nbd';

const MiB = 1024 * 1024;

async function main(): Promise<void> {
  const [address, connections = '4', inFlight = '16'] = process.argv.slice(2);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const handle = await new NbdTransport().open({ name: 'disk', nbd: { address, connections: Number(connections) } } as never);
  const ranges: { offset: number; length: number }[] = [];
  for (let at = 0; at < handle.size; ) {
    const got = await handle.blockStatus!(at, handle.size - at);
    for (const e of got) if (e.kind === 'data') for (let o = e.offset; o < e.offset + e.length; o += MiB) ranges.push({ offset: o, length: Math.min(MiB, e.offset + e.length - o) });
    at = got.at(-1)!.offset + got.at(-1)!.length;
  }
  let next = 0;
  let bytesRead = 0;
  const lane = async (): Promise<void> => {
    const buf = Buffer.allocUnsafe(MiB);
    while (next < ranges.length) {
      const r = ranges[next++];
      await handle.readInto!(r.offset, buf.subarray(0, r.length));
      bytesRead += r.length;
    }
  };
  await Promise.all(Array.from({ length: Number(inFlight) }, lane));
  await handle.close();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  console.log(JSON.stringify({ bytesRead, ms, cpuMs: (cpu.user + cpu.system) / 1000 }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
