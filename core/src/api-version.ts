/**
 * The core's plugin API version. A plugin built for `M.m` loads when `M` equals the core's major and
 * `m` is at most the core's minor (minors only add).
 */
export const CORE_API_VERSION = '1.2';

export function supportedApiRange(): string {
  const [major] = CORE_API_VERSION.split('.');
  return `>=${major}.0 <=${CORE_API_VERSION}`;
}

export function isApiCompatible(pluginVersion: string): boolean {
  const m = /^(\d+)\.(\d+)$/.exec(pluginVersion);
  if (!m) return false;
  const [coreMajor, coreMinor] = CORE_API_VERSION.split('.').map(Number);
  return Number(m[1]) === coreMajor && Number(m[2]) <= coreMinor;
}
