#!/usr/bin/env node
/**
 * The `eigenlorax` command (package.json `bin`). The commands live in lib/cli/, one file
 * each; lib/cli/program.ts assembles them and lib/cli/report.ts sets the exit code.
 */
import { runCli } from './cli/program.js';

process.exitCode = await runCli(process.argv.slice(2));
