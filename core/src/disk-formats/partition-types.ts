/**
 * Names for partition types, as `sfdisk` and the UEFI spec spell them. Only the names other code
 * looks for are stable API: `linux`, `linux-swap`, `ntfs` (MBR 0x07, also exFAT/HPFS),
 * `microsoft-basic-data` (GPT, NTFS/FAT/exFAT), `efi`, `extended`, `gpt-protective`.
 */

const MBR_TYPES: Record<number, string> = {
  0x01: 'fat12',
  0x04: 'fat16',
  0x05: 'extended',
  0x06: 'fat16',
  0x07: 'ntfs',
  0x0b: 'fat32',
  0x0c: 'fat32',
  0x0e: 'fat16',
  0x0f: 'extended',
  0x27: 'windows-recovery',
  0x82: 'linux-swap',
  0x83: 'linux',
  0x85: 'extended',
  0x8e: 'linux-lvm',
  0xa5: 'freebsd',
  0xee: 'gpt-protective',
  0xef: 'efi',
  0xfd: 'linux-raid',
};

const GPT_TYPES: Record<string, string> = {
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'linux',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'linux-swap',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'linux-root-x86-64',
  '44479540-f297-41b2-9af7-d131d5f0458a': 'linux-root-x86',
  'b921b045-1df0-41c3-af44-4c6f280d3fae': 'linux-root-arm64',
  '933ac7e1-2eb4-4f13-b844-0e14e2aef915': 'linux-home',
  'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'linux-extended-boot',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'linux-lvm',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'linux-raid',
  'ca7d7ccb-63ed-4c53-861c-1742536059cc': 'linux-luks',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'microsoft-basic-data',
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'microsoft-reserved',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'windows-recovery',
  '5808c8aa-7e8f-42e0-85d2-e1e90434cfb3': 'microsoft-ldm-metadata',
  'af9b60a0-1431-4f62-bc68-3311714a69ad': 'microsoft-ldm-data',
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'efi',
  '21686148-6449-6e6f-744e-656564454649': 'bios-boot',
  '516e7cb4-6ecf-11d6-8ff8-00022d09712b': 'freebsd',
};

export function mbrTypeName(type: number): string {
  return MBR_TYPES[type] ?? 'unknown';
}

export function gptTypeName(guid: string): string {
  return GPT_TYPES[guid.toLowerCase()] ?? 'unknown';
}

/** A GUID stored mixed-endian (first three fields little-endian) as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case. */
export function formatGuid(bytes: Uint8Array): string {
  const b = Buffer.from(bytes.subarray(0, 16));
  const hex = (from: number, to: number, reverse: boolean): string => {
    const part = Buffer.from(b.subarray(from, to));
    return (reverse ? part.reverse() : part).toString('hex');
  };
  return `${hex(0, 4, true)}-${hex(4, 6, true)}-${hex(6, 8, true)}-${hex(8, 10, false)}-${hex(10, 16, false)}`;
}
