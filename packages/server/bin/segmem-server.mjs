#!/usr/bin/env node
import { serverMain } from '../dist/src/cli/server-main.js';

await serverMain(process.argv.slice(2));
