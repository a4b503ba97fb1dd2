import { expect } from 'chai';
import { formatNbdEndpoint, parseNbdAddress } from './nbd-address.js';

describe('parseNbdAddress', () => {
  it('reads unix: and tcp: addresses', () => {
    expect(parseNbdAddress('unix:/run/ferry/vm1.sock')).to.deep.equal({ kind: 'unix', path: '/run/ferry/vm1.sock' });
    expect(parseNbdAddress('tcp:10.0.0.5:10809')).to.deep.equal({ kind: 'tcp', host: '10.0.0.5', port: 10809 });
    expect(parseNbdAddress('tcp:[::1]:10810')).to.deep.equal({ kind: 'tcp', host: '::1', port: 10810 });
  });

  it('reads NBD URIs with their export, socket and TLS', () => {
    expect(parseNbdAddress('nbd://host.example:10900/disk%200')).to.deep.equal({ kind: 'tcp', host: 'host.example', port: 10900, exportName: 'disk 0', tls: false });
    expect(parseNbdAddress('nbds://[fe80::1]/vda')).to.deep.equal({ kind: 'tcp', host: 'fe80::1', port: 10809, exportName: 'vda', tls: true });
    expect(parseNbdAddress('nbd+unix:///vda?socket=/tmp/s.sock')).to.deep.equal({ kind: 'unix', path: '/tmp/s.sock', exportName: 'vda', tls: false });
    expect(parseNbdAddress('nbd+unix://?socket=/tmp/s.sock')).to.include({ kind: 'unix', exportName: '' });
  });

  it('refuses what it cannot read, saying why', () => {
    expect(() => parseNbdAddress('10.0.0.5:10809')).to.throw(/not unix:\/path, tcp:host:port/);
    expect(() => parseNbdAddress('tcp:host')).to.throw(/not tcp:host:port/);
    expect(() => parseNbdAddress('tcp:host:99999')).to.throw(/invalid port/);
    expect(() => parseNbdAddress('unix:')).to.throw(/no socket path/);
    expect(() => parseNbdAddress('nbd+unix:///vda')).to.throw(/no \?socket=/);
  });

  it('formats endpoints the way errors name them', () => {
    expect(formatNbdEndpoint(parseNbdAddress('nbd+unix:///vda?socket=/tmp/s.sock'))).to.equal('unix:/tmp/s.sock');
    expect(formatNbdEndpoint(parseNbdAddress('nbd://[::1]:99/x'))).to.equal('tcp:[::1]:99');
  });
});
