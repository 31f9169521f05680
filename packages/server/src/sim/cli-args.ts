/**
 * The option reading both simulator CLIs share (this package's and @segmem/sim's): `--name value` pairs,
 * bare flags and integers with a lower bound. `--help` prints the usage and exits 0; an option the CLI
 * does not know, a missing value or a bad number prints the mistake and the usage and exits 2.
 */
import { BROKEN_VARIANTS } from './simulator.js';

export interface SimCli {
  /** The usage line(s). */
  usage: string;
  /** Options that take a value (without the leading `--`). */
  values: readonly string[];
  /** Options that stand alone. */
  flags: readonly string[];
}

export function simArgs(
  args: string[],
  cli: SimCli,
): {
  opt(name: string): string | undefined;
  int(name: string, value: string | undefined, min: number): number | undefined;
  fail(message: string): never;
} {
  const fail = (message: string): never => {
    process.stderr.write(`${message}\n${cli.usage}\n`);
    process.exit(2);
  };
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${cli.usage}\n`);
    process.exit(0);
  }
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const name = a.startsWith('--') ? a.slice(2) : null;
    if (name !== null && cli.values.includes(name)) {
      const v = args[i + 1];
      if (v === undefined || v.startsWith('--')) fail(`--${name} needs a value`);
      i++;
    } else if (name === null || !cli.flags.includes(name)) fail(`unknown option ${a}`);
  }
  return {
    opt(name) {
      const i = args.indexOf(`--${name}`);
      return i < 0 ? undefined : args[i + 1];
    },
    int(name, value, min) {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}`);
      return n;
    },
    fail,
  };
}

/** What the core simulator's CLI (cli.ts) takes; @segmem/sim's CLI passes these on with --core. */
export const CORE_SIM_CLI: SimCli = {
  usage: `usage: npm run sim -- --core --seeds N [--seed S] [--from F] [--nodes 3|5] [--ticks T] [--broken ${BROKEN_VARIANTS.join('|')}] [--params JSON] [--no-durability-check] [--verbose] [--trace]`,
  values: ['seeds', 'seed', 'from', 'nodes', 'ticks', 'broken', 'params'],
  flags: ['verbose', 'trace', 'no-durability-check'],
};
