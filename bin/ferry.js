#!/usr/bin/env node
// The root package's `ferry` bin: the CLI lives in the cli/ workspace.
import '../cli/dist/bin.js';
