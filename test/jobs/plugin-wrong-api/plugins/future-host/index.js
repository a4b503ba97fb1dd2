// Never imported: the core refuses the package from its package.json alone.
throw new Error('a plugin of an incompatible API version must not be loaded');
