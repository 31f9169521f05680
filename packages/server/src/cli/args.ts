/**
 * The command-line model both binaries share: each command declares its arguments and options once, and
 * that declaration parses argv strictly (unknown options, stray arguments, missing or repeated values are
 * refused), and prints the command's --help. docs/operations.md lists the same options; a test compares them.
 */
import { SegmemError } from '@segmem/protocol';

export interface OptionSpec {
  /** Long name, without the dashes. */
  name: string;
  /** One-letter alias (only -h is used). */
  short?: string;
  /** Placeholder of the value (`N`, `FILE`); absent for a flag. */
  value?: string;
  help: string;
  /** What applies when the option is absent, as the help shows it. */
  default?: string;
  /** Accepted values; anything else is a usage error. */
  choices?: readonly string[];
  /** May be given several times, and as a comma-separated list: the values add up. */
  list?: boolean;
  /** Also takes the arguments after it, up to the next option (`--data D1 D2 D3`). Implies `list`. */
  multi?: boolean;
}

export interface ArgSpec {
  /** Placeholder (`NAME`, `FILE`). */
  name: string;
  optional?: boolean;
  /** Added to the message when the argument is missing. */
  hint?: string;
}

export interface CommandSpec {
  /** The words after the program name: `up`, `cluster add`. */
  name: string;
  args: ArgSpec[];
  /** One line for the overview. */
  summary: string;
  /** Paragraphs for --help, after the usage line. */
  description: string;
  options: OptionSpec[];
  /** Arguments after `--` are passed on as they are (segmem up passes them to every server). */
  passThrough?: string;
}

/** A mistake in the command line: the one error that prints the command's usage after its message. */
export class UsageError extends SegmemError {
  constructor(
    message: string,
    readonly command: CommandSpec | null,
  ) {
    super('INVALID_ARGUMENT', message);
  }
}

export interface Parsed {
  args: string[];
  /** Last value of each single-valued option given. */
  values: Map<string, string>;
  /** Every value of each list option, in order, comma lists split. */
  lists: Map<string, string[]>;
  flags: Set<string>;
  /** After `--`, for commands that take them. */
  rest: string[];
  help: boolean;
  version: boolean;
}

export const HELP_OPTION: OptionSpec = { name: 'help', short: 'h', help: 'print this help and exit' };
export const VERSION_OPTION: OptionSpec = { name: 'version', help: 'print the version and exit' };

/** Parses `argv` (the words after the command's name) against `spec`; a mistake is a {@link UsageError}. */
export function parseCommand(spec: CommandSpec, argv: string[]): Parsed {
  const out: Parsed = {
    args: [],
    values: new Map(),
    lists: new Map(),
    flags: new Set(),
    rest: [],
    help: false,
    version: false,
  };
  const usage = (message: string) => new UsageError(message, spec);
  const byName = new Map<string, OptionSpec>();
  for (const o of [...spec.options, HELP_OPTION, VERSION_OPTION]) {
    byName.set(`--${o.name}`, o);
    if (o.short) byName.set(`-${o.short}`, o);
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      if (!spec.passThrough) throw usage(`${commandLine(spec)} takes no arguments after --`);
      out.rest = argv.slice(i + 1);
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      out.args.push(arg);
      continue;
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const key = eq > 0 ? arg.slice(0, eq) : arg;
    const opt = byName.get(key);
    if (!opt) throw usage(`unknown option ${key}`);
    if (opt === HELP_OPTION || opt === VERSION_OPTION) {
      if (eq > 0) throw usage(`${key} takes no value`);
      if (opt === HELP_OPTION) out.help = true;
      else out.version = true;
      continue;
    }
    if (opt.value === undefined) {
      if (eq > 0) throw usage(`--${opt.name} takes no value`);
      out.flags.add(opt.name);
      continue;
    }
    let value: string;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      // "--out --json" is a forgotten value, not a file named --json; --name=--x gives one on purpose.
      if (next === undefined || (next.startsWith('--') && next.length > 2))
        throw usage(`--${opt.name} needs a value (${opt.value})`);
      value = next;
      i++;
    }
    if (opt.choices && !opt.choices.includes(value))
      throw usage(`--${opt.name} must be one of ${opt.choices.join(', ')}; got ${JSON.stringify(value)}`);
    if (opt.list || opt.multi) {
      const values = out.lists.get(opt.name) ?? [];
      values.push(...splitList(value));
      // --data D1 D2 D3: the words up to the next option belong to it.
      if (opt.multi && eq < 0) {
        while (i + 1 < argv.length && !argv[i + 1]!.startsWith('-')) values.push(...splitList(argv[++i]!));
      }
      out.lists.set(opt.name, values);
      continue;
    }
    if (out.values.has(opt.name)) throw usage(`--${opt.name} is given twice`);
    out.values.set(opt.name, value);
  }
  if (out.help || out.version) return out;
  const required = spec.args.filter((a) => !a.optional).length;
  if (out.args.length > spec.args.length) {
    const extra = out.args.slice(spec.args.length);
    throw usage(
      `unexpected argument${extra.length > 1 ? 's' : ''} ${extra.map((a) => JSON.stringify(a)).join(' ')}` +
        (spec.args.length === 0
          ? ` (${commandLine(spec)} takes none)`
          : ` (${commandLine(spec)} takes ${spec.args.map((a) => a.name).join(' ')})`),
    );
  }
  if (out.args.length < required) {
    const missing = spec.args[out.args.length]!;
    throw usage(`${commandLine(spec)} needs ${missing.name}${missing.hint ? ` (${missing.hint})` : ''}`);
  }
  return out;
}

function splitList(value: string): string[] {
  const parts = value.split(',').filter((p) => p.length > 0);
  if (parts.length === 0) throw new UsageError(`empty list ${JSON.stringify(value)}`, null);
  return parts;
}

function commandLine(spec: CommandSpec): string {
  return `${spec.name.startsWith('segmem') ? '' : 'segmem '}${spec.name}`;
}

/** The one-line synopsis: `segmem put NAME [options]`. */
export function synopsis(spec: CommandSpec): string {
  const args = spec.args.map((a) => (a.optional ? `[${a.name}]` : a.name));
  const options = spec.options.length > 0 ? ['[options]'] : [];
  const rest = spec.passThrough ? [`[-- ${spec.passThrough}]`] : [];
  return [commandLine(spec), ...args, ...options, ...rest].join(' ');
}

/** The option's left column: `--servers HOST:PORT,...`, `-h, --help`. */
export function optionLabel(o: OptionSpec): string {
  const long = `--${o.name}${o.value ? ` ${o.value}` : ''}`;
  return o.short ? `-${o.short}, ${long}` : long;
}

/** The full --help text of a command. */
export function helpText(spec: CommandSpec): string {
  const options = [...spec.options, HELP_OPTION, VERSION_OPTION];
  const width = Math.min(28, Math.max(...options.map((o) => optionLabel(o).length)) + 2);
  const lines = [`usage: ${synopsis(spec)}`, '', ...wrap(spec.description, 100, ''), '', 'options:'];
  for (const o of options) {
    const label = optionLabel(o);
    let text = o.help;
    if (o.choices && !o.value?.includes('|')) text += ` (one of ${o.choices.join(', ')})`;
    if (o.default !== undefined) text += ` (default: ${o.default})`;
    const pad = ' '.repeat(2 + width);
    const body = wrap(text, 100 - pad.length, '');
    if (label.length + 2 <= width) {
      lines.push(`  ${label.padEnd(width)}${body[0]}`);
    } else {
      lines.push(`  ${label}`, `${pad}${body[0]}`);
    }
    for (const more of body.slice(1)) lines.push(`${pad}${more}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Words of `text` in lines of at most `width` characters; blank lines in `text` separate paragraphs. */
function wrap(text: string, width: number, indent: string): string[] {
  const out: string[] = [];
  for (const para of text.split(/\n\s*\n/)) {
    if (out.length > 0) out.push('');
    let line = '';
    for (const word of para.split(/\s+/).filter(Boolean)) {
      if (line && line.length + 1 + word.length > width) {
        out.push(indent + line);
        line = word;
      } else line = line ? `${line} ${word}` : word;
    }
    if (line) out.push(indent + line);
  }
  return out;
}

/** A non-negative integer option or argument, or a usage error naming it. */
export function parseCount(what: string, value: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max)
    throw new UsageError(`${what} must be an integer ${min}..${max}; got ${JSON.stringify(value)}`, null);
  return n;
}
