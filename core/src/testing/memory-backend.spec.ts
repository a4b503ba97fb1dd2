import { MemoryBackend } from './memory-backend.js';
import { runRepositoryConformance } from './repository-conformance.js';

runRepositoryConformance('memory', async () => ({ backend: new MemoryBackend(), cleanup: async () => undefined }));
