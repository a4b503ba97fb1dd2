export * from './vm-image.js';
export * from './repository-conformance.js';
export * from './transport-conformance.js';
export * from './memory-backend.js';
export * from './compressor-conformance.js';
export * from './test-skips.js';
export * from './block-filter-conformance.js';
export * from './load-plugin.js';
