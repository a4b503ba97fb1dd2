import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import type { DefineTarget } from '@ferry/core/plugin';

/** `VmDefinition.format` of this host: the domain XML as `virsh dumpxml --migratable` prints it. */
export const DOMAIN_XML_FORMAT = 'libvirt-domain-xml';

/**
 * The domain XML in document order (fast-xml-parser's `preserveOrder` form: each element is
 * `{ tag: children[], ':@': attributes }`), so a definition is rewritten without losing or
 * reordering anything libvirt wrote.
 */
type OrderedNode = Record<string, unknown> & { ':@'?: Record<string, string> };

const opts = { ignoreAttributes: false, attributeNamePrefix: '@_', preserveOrder: true, parseTagValue: false, parseAttributeValue: false, trimValues: false } as const;
const parser = new XMLParser(opts);
const builder = new XMLBuilder({ ...opts, suppressEmptyNode: true });

function tagOf(n: OrderedNode): string | undefined {
  return Object.keys(n).find((k) => k !== ':@');
}

function children(n: OrderedNode): OrderedNode[] {
  const tag = tagOf(n);
  const c = tag ? n[tag] : undefined;
  return Array.isArray(c) ? (c as OrderedNode[]) : [];
}

function setChildren(n: OrderedNode, list: OrderedNode[]): void {
  n[tagOf(n)!] = list;
}

function find(n: OrderedNode, tag: string): OrderedNode | undefined {
  return children(n).find((c) => tagOf(c) === tag);
}

function attrs(n: OrderedNode | undefined): Record<string, string> {
  return (n?.[':@'] as Record<string, string> | undefined) ?? {};
}

function element(tag: string, attributes: Record<string, string> = {}, kids: OrderedNode[] = []): OrderedNode {
  return { [tag]: kids, ':@': Object.fromEntries(Object.entries(attributes).map(([k, v]) => [`@_${k}`, v])) };
}

function textElement(tag: string, text: string): OrderedNode {
  return { [tag]: [{ '#text': text }] };
}

export interface Redefined {
  xml: string;
  notes: string[];
}

/**
 * A new domain from a restore point's definition: named `target.name`, without the UUID (libvirt
 * makes a new one) or the MAC addresses (new ones, so the copy can run beside the original), each
 * restored disk a file at its restored path in its format, the guest agent's channel at a path
 * libvirt chooses. Devices the point has no disk for stay as they were, and the notes say so.
 */
export function redefine(definition: string, target: DefineTarget): Redefined {
  let doc: OrderedNode[];
  try {
    doc = parser.parse(definition) as OrderedNode[];
  } catch (err) {
    throw new Error(`the saved definition is not well-formed XML: ${err instanceof Error ? err.message : String(err)}`);
  }
  const domain = doc.find((n) => tagOf(n) === 'domain');
  if (!domain) throw new Error('the saved definition has no <domain> element');
  const notes: string[] = [];
  const restored = new Map(target.disks.map((d) => [d.name, d]));
  const used = new Set<string>();
  setChildren(
    domain,
    children(domain)
      .filter((c) => tagOf(c) !== 'uuid')
      .map((c) => (tagOf(c) === 'name' ? textElement('name', target.name) : c)),
  );
  const devices = find(domain, 'devices');
  let macs = 0;
  for (const dev of devices ? children(devices) : []) {
    const tag = tagOf(dev);
    if (tag === 'disk') {
      const name = attrs(find(dev, 'target'))['@_dev'];
      const r = name ? restored.get(name) : undefined;
      if (!r) {
        if (name && attrs(dev)['@_device'] === 'disk') notes.push(`disk ${name} kept as defined: the restore point has no copy of it`);
        continue;
      }
      used.add(r.name);
      dev[':@'] = { ...attrs(dev), '@_type': 'file' };
      // the restored file holds the guest's plain view: no network source, backing chain, auth or encryption
      const kids = children(dev).filter((c) => !['source', 'backingStore', 'auth', 'encryption'].includes(tagOf(c) ?? ''));
      const driver = kids.find((c) => tagOf(c) === 'driver');
      if (driver) driver[':@'] = { ...attrs(driver), '@_type': r.format };
      else kids.unshift(element('driver', { name: 'qemu', type: r.format }));
      kids.splice(kids.indexOf(driver ?? kids[0]) + 1, 0, element('source', { file: r.path }));
      setChildren(dev, kids);
    } else if (tag === 'interface') {
      const before = children(dev).length;
      setChildren(dev, children(dev).filter((c) => tagOf(c) !== 'mac'));
      macs += before - children(dev).length;
    } else if (tag === 'channel' && attrs(dev)['@_type'] === 'unix') {
      setChildren(dev, children(dev).filter((c) => tagOf(c) !== 'source'));
    }
  }
  for (const d of target.disks) if (!used.has(d.name)) throw new Error(`the saved definition has no disk with target ${d.name}`);
  notes.push(`new UUID${macs ? ` and ${macs} new MAC address${macs > 1 ? 'es' : ''}` : ''} (chosen by libvirt)`);
  return { xml: builder.build(doc) as string, notes };
}
