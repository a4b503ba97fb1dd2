import { runCompressorConformance } from '@ferry/core/testing';
import { ZstdCompressor } from './index.js';

runCompressorConformance('zstd', new ZstdCompressor());
