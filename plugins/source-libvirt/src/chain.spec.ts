import { expect } from 'chai';
import type { PreviousPoint } from '@ferry/core/plugin';
import { previousCheckpoints, sessionFiles, whyFull, type ChainFacts } from './chain.js';

const UUID = '6c4d1b0e-3a8f-4c52-9a61-0d1e2f3a4b5c';
const CP = 'ferry.nightly.20261204T100000000Z-aaaaaa';

function facts(over: Partial<ChainFacts> = {}, previous?: PreviousPoint | null): ChainFacts {
  return {
    job: 'nightly',
    domain: { name: 'web1', uuid: UUID },
    disk: { dev: 'vda', format: 'qcow2', size: 1024 },
    previous: previous === null ? undefined : (previous ?? { id: 'P1', disks: [{ name: 'vda', sizeBytes: 1024, changeTracking: { id: CP, domain: UUID } }] }),
    checkpoints: new Map([[CP, { name: CP, bitmaps: new Set(['vda']) }]]),
    ...over,
  };
}

describe('libvirt checkpoint chain', () => {
  it('is incremental only when every fact holds', () => {
    expect(whyFull(facts())).to.equal(undefined);
  });

  it('names each reason for a full read', () => {
    const cases: [ChainFacts, RegExp][] = [
      [facts({ disk: { dev: 'vda', format: 'raw', size: 1024 } }), /only in qcow2 images/],
      [facts({}, null), /no previous restore point/],
      [facts({}, { id: 'P1', disks: [] }), /has no disk vda/],
      [facts({}, { id: 'P1', disks: [{ name: 'vda', sizeBytes: 1024 }] }), /recorded no checkpoint/],
      [facts({}, { id: 'P1', disks: [{ name: 'vda', sizeBytes: 1024, changeTracking: { id: 'ferry.other.1', domain: UUID } }] }), /not one of job nightly's/],
      [facts({ job: 'night' }), /not one of job night's/],
      [facts({ domain: { name: 'web1', uuid: 'other' } }), /defined anew/],
      [facts({ checkpoints: new Map() }), /missing on domain web1.*transient domain/],
      [facts({ checkpoints: new Map([[CP, { name: CP, bitmaps: new Set(['vdb']) }]]) }), /does not track disk vda/],
      [facts({ disk: { dev: 'vda', format: 'qcow2', size: 2048 } }), /resized \(1024 → 2048 bytes\)/],
    ];
    for (const [f, reason] of cases) expect(whyFull(f)).to.match(reason);
  });

  it('keeps only this job\'s checkpoints of this domain from the previous point', () => {
    const prev = { id: 'P', disks: [
      { name: 'vda', sizeBytes: 1, changeTracking: { id: CP, domain: UUID } },
      { name: 'vdb', sizeBytes: 1, changeTracking: { id: 'ferry.nightly.X', domain: 'other-domain' } },
      { name: 'vdc', sizeBytes: 1, changeTracking: { id: 'ferry.daily.Y', domain: UUID } },
    ] };
    expect([...previousCheckpoints(prev, 'nightly', UUID)]).to.deep.equal([CP]);
  });

  it('names session files so jobs, domains and sessions never share one, within a unix socket path', () => {
    const a = sessionFiles('/var/lib/ferry', 'nightly', UUID, 'S1');
    const b = sessionFiles('/var/lib/ferry', 'nightly', UUID, 'S2');
    const c = sessionFiles('/var/lib/ferry', 'daily', UUID, 'S1');
    expect(a.prefix).to.equal(b.prefix);
    expect(a.socket).to.not.equal(b.socket);
    expect(a.prefix).to.not.equal(c.prefix);
    expect(a.socket.startsWith(`/var/lib/ferry/${a.prefix}`)).to.equal(true);
    expect(Buffer.byteLength(a.imageSocket('vdaa'))).to.be.lessThan(80);
  });
});
