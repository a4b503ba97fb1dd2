import { expect } from 'chai';
import { Slots } from './slots.js';

describe('proxy task slots', function () {
  it('lets at most `size` holders in and hands freed slots to waiters in arrival order', async function () {
    const slots = new Slots(2);
    const order: string[] = [];
    const a = await slots.acquire();
    const b = await slots.acquire();
    const c = slots.acquire().then((release) => (order.push('c'), release));
    const d = slots.acquire().then((release) => (order.push('d'), release));
    await new Promise((r) => setImmediate(r));
    expect(slots.busy).to.equal(2);
    expect(slots.waiting).to.equal(2);
    expect(order).to.deep.equal([]);
    b();
    b(); // a second release of the same slot changes nothing
    const releaseC = await c;
    expect(order).to.deep.equal(['c']);
    expect(slots.waiting).to.equal(1);
    a();
    const releaseD = await d;
    expect(order).to.deep.equal(['c', 'd']);
    releaseC();
    releaseD();
    expect(slots.busy).to.equal(0);
  });

  it('refuses a size that is not a positive integer', function () {
    expect(() => new Slots(0)).to.throw(RangeError);
    expect(() => new Slots(1.5)).to.throw(RangeError);
  });
});
