export * from './vm-image.js';
