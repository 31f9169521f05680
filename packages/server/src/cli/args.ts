/** A small, strict command-line parser: --name value and --flag, nothing positional unless allowed. */
import { SegmemError } from '@segmem/protocol';

export interface ParsedArgs {
  values: Map<string, string>;
  flags: Set<string>;
  positional: string[];
}

export function parseArgs(
  argv: string[],
  spec: { values: string[]; flags: string[]; positional?: boolean },
): ParsedArgs {
  const out: ParsedArgs = { values: new Map(), flags: new Set(), positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      if (spec.positional) {
        out.positional.push(arg);
        continue;
      }
      throw new SegmemError('INVALID_ARGUMENT', `unexpected argument ${JSON.stringify(arg)}`);
    }
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    if (spec.flags.includes(name)) {
      out.flags.add(name);
      continue;
    }
    if (!spec.values.includes(name)) throw new SegmemError('INVALID_ARGUMENT', `unknown option --${name}`);
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new SegmemError('INVALID_ARGUMENT', `--${name} needs a value`);
    out.values.set(name, value);
  }
  return out;
}
