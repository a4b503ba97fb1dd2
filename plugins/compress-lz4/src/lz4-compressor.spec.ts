import { runCompressorConformance } from '@ferry/core/testing';
import { Lz4Compressor } from './index.js';

runCompressorConformance('lz4', new Lz4Compressor());
