import { expect } from 'chai';
import type { PreviousPoint } from '@ferry/core/plugin';
import type { BlockNode, DirtyBitmap } from './block-state.js';
import { planTracking, type PlanInput } from './change-tracking.js';
import { bitmapName, fleeceNames, isJobBitmap, isJobFleeceNode } from './ferry-names.js';

const SIZE = 4 * 1024 * 1024;
const PREV = 'ferry.j.P1';

function bitmap(over: Partial<DirtyBitmap> = {}): DirtyBitmap {
  return { name: PREV, recording: true, persistent: true, busy: false, granularity: 65536, count: 0, ...over };
}

function input(over: { bitmaps?: DirtyBitmap[]; node?: Partial<BlockNode>; previous?: PreviousPoint | null } = {}): PlanInput {
  const previous: PreviousPoint = { id: 'P1', disks: [{ name: 'disk0', sizeBytes: SIZE, changeTracking: { id: PREV, node: 'disk0' } }] };
  return {
    job: 'j',
    sessionId: 'S2',
    disk: 'disk0',
    node: { nodeName: 'disk0', drv: 'qcow2', ro: false, virtualSize: SIZE, filename: 'd.qcow2', bitmaps: over.bitmaps ?? [bitmap()], ...over.node },
    previous: over.previous === null ? undefined : (over.previous ?? previous),
  };
}

describe('change tracking plan', function () {
  it('incremental when the previous bitmap is there, recording, persistent and consistent', function () {
    expect(planTracking(input())).to.deep.equal({ node: 'disk0', newBitmap: 'ferry.j.S2', previousBitmap: PREV, since: 'P1' });
  });

  const fullCases: [string, Parameters<typeof input>[0], RegExp][] = [
    ['no previous point', { previous: null }, /no previous restore point of this job/],
    ['bitmap deleted', { bitmaps: [] }, /bitmap ferry\.j\.P1 is missing on node disk0 \(deleted, or QEMU stopped before saving it\?\)/],
    ['bitmap inconsistent', { bitmaps: [bitmap({ inconsistent: true })] }, /inconsistent/],
    ['bitmap disabled', { bitmaps: [bitmap({ recording: false })] }, /not recording/],
    ['bitmap not persistent', { bitmaps: [bitmap({ persistent: false })] }, /not persistent/],
    ['bitmap busy', { bitmaps: [bitmap({ busy: true })] }, /in use/],
    ['disk resized', { node: { virtualSize: 2 * SIZE } }, /disk was resized \(4194304 → 8388608 bytes\)/],
    ['disk moved to another node', { node: { nodeName: 'disk9' } }, /was on node disk0, the disk is now node disk9/],
    [
      "another job's bitmap",
      { previous: { id: 'P1', disks: [{ name: 'disk0', sizeBytes: SIZE, changeTracking: { id: 'ferry.k.P1', node: 'disk0' } }] } },
      /not one of job j's bitmaps/,
    ],
    ['no tracking recorded', { previous: { id: 'P1', disks: [{ name: 'disk0', sizeBytes: SIZE }] } }, /recorded no dirty bitmap/],
    ['disk new in the job', { previous: { id: 'P1', disks: [{ name: 'other', sizeBytes: SIZE }] } }, /has no disk disk0/],
  ];
  for (const [what, over, reason] of fullCases) {
    it(`full when ${what}, with the reason`, function () {
      const plan = planTracking(input(over));
      expect(plan.since).to.equal(undefined);
      expect(plan.previousBitmap).to.equal(undefined);
      expect(plan.newBitmap).to.equal('ferry.j.S2');
      expect(plan.fullReason).to.match(reason);
    });
  }

  it('a raw disk cannot keep bitmaps: full, and nothing to track', function () {
    const plan = planTracking(input({ node: { drv: 'raw' } }));
    expect(plan.newBitmap).to.equal(undefined);
    expect(plan.fullReason).to.match(/raw: QEMU keeps persistent dirty bitmaps only in qcow2/);
  });
});

describe('ferry names', function () {
  it('bitmaps belong to exactly one job, even when job names share a prefix', function () {
    expect(bitmapName('a', 'S1')).to.equal('ferry.a.S1');
    expect(isJobBitmap('a', 'ferry.a.S1')).to.equal(true);
    expect(isJobBitmap('a', 'ferry.a.b.S1')).to.equal(false);
    expect(isJobBitmap('a.b', 'ferry.a.b.S1')).to.equal(true);
    expect(isJobBitmap('a', 'other')).to.equal(false);
    expect(isJobBitmap('a', undefined)).to.equal(false);
  });

  it('fleecing node names fit QEMU\'s 31 characters and carry the job', function () {
    const n = fleeceNames('a-very-long-job-name-of-128-characters'.repeat(3), '20250101T000000Z-abcdef', 99, '/tmp');
    expect(n.node.length).to.be.at.most(31);
    expect(n.fileNode.length).to.be.at.most(31);
    expect(n.exportId).to.equal('ferry-20250101T000000Z-abcdef-99');
    expect(isJobFleeceNode('a-very-long-job-name-of-128-characters'.repeat(3), n.node)).to.equal(true);
    expect(isJobFleeceNode('other', n.node)).to.equal(false);
    expect(() => fleeceNames('j', 's', 100, '/tmp')).to.throw(RangeError);
  });
});
