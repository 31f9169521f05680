#!/usr/bin/env node
import { segmemMain } from '../dist/src/cli/segmem-main.js';

await segmemMain(process.argv.slice(2));
