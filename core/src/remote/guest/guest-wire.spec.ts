import assert from 'node:assert/strict';
import { guestRequestProblem } from './guest-wire.js';

describe('guest proxy requests are checked before the proxy acts', function () {
  const options = { os: 'windows', via: 'ssh', timeoutSeconds: 60, credentials: {}, scripts: { preFreeze: { name: 'pre.ps1', data: '' } }, applications: [] };

  it('accepts well-formed connect, call and abort requests', function () {
    assert.equal(guestRequestProblem('guest.connect', { id: 1, vm: 'vm1', options }), undefined);
    assert.equal(guestRequestProblem('guest.call', { id: 2, method: 'freeze' }), undefined);
    assert.equal(guestRequestProblem('guest.call', { id: 3, method: 'skipExtents', disk: { name: 'disk0', size: 1048576 } }), undefined);
    assert.equal(guestRequestProblem('guest.abort', { id: 2 }), undefined);
  });

  it('names the field of a malformed request', function () {
    assert.match(guestRequestProblem('guest.call', { id: 'x', method: 'freeze' })!, /header\.id/);
    assert.match(guestRequestProblem('guest.call', { id: 1, method: 'format-disk' })!, /header\.method/);
    assert.match(guestRequestProblem('guest.call', { id: 1, method: 'skipExtents' })!, /header\.disk/);
    assert.match(guestRequestProblem('guest.connect', { id: 1, vm: 'vm1', options: { ...options, timeoutSeconds: 0 } })!, /timeoutSeconds/);
    assert.match(guestRequestProblem('guest.connect', { id: 1, vm: 'vm1', options: { ...options, scripts: { preFreeze: '/etc/shadow' } } })!, /\{name, data\}/);
    assert.match(guestRequestProblem('guest.exec', { id: 1 })!, /unknown request/);
  });
});
