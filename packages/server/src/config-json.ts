/**
 * A small JSON reader for the config file: the values JSON.parse gives, plus the line of every key path
 * (`groups[1].start`), so a config mistake can name where it is; and it refuses duplicate keys, which
 * JSON.parse silently resolves by keeping the last.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A JSON text read with positions. */
export interface PositionedJson {
  readonly value: JsonValue;
  /** The line (1-based) where the value at `path` starts (its key, for an object member); 1 for ''. */
  lineOf(path: string): number;
}

/** A syntax mistake or duplicate key, at `line`. */
export class JsonSyntaxError extends Error {
  constructor(
    readonly line: number,
    readonly problem: string,
  ) {
    super(`line ${line}: ${problem}`);
    this.name = 'JsonSyntaxError';
  }
}

/** `base.key`, or `base["odd key"]` for a key that is not a plain word. */
export function memberPath(base: string, key: string): string {
  if (/^[A-Za-z_$][\w$-]*$/.test(key)) return base === '' ? key : `${base}.${key}`;
  return `${base}[${JSON.stringify(key)}]`;
}

export function elementPath(base: string, index: number): string {
  return `${base}[${index}]`;
}

/** Deeper than this is no config file; refusing it keeps the recursion bounded. */
const MAX_DEPTH = 64;

export function parseJsonWithPositions(text: string): PositionedJson {
  const lines = new Map<string, number>();
  let pos = 0;
  let line = 1;

  const fail = (problem: string): never => {
    throw new JsonSyntaxError(line, problem);
  };
  const skipSpace = () => {
    while (pos < text.length) {
      const c = text[pos]!;
      if (c === '\n') line++;
      else if (c !== ' ' && c !== '\t' && c !== '\r') return;
      pos++;
    }
  };
  const describeHere = () => (pos < text.length ? JSON.stringify(text[pos]) : 'the end of the file');
  const expect = (c: string) => {
    if (text[pos] !== c) fail(`expected ${JSON.stringify(c)}, found ${describeHere()}`);
    pos++;
  };

  const readString = (): string => {
    expect('"');
    let out = '';
    for (;;) {
      if (pos >= text.length) fail('unterminated string');
      const c = text[pos++]!;
      if (c === '"') return out;
      if (c === '\n' || c < ' ') fail('control character in a string');
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = text[pos++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          const hex = text.slice(pos, pos + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape in a string');
          out += String.fromCharCode(Number.parseInt(hex, 16));
          pos += 4;
          break;
        }
        default:
          fail(`bad escape \\${e ?? ''} in a string`);
      }
    }
  };

  const readNumber = (): number => {
    const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(pos, pos + 400));
    if (!m) fail(`unexpected ${describeHere()}`);
    pos += m![0].length;
    return Number(m![0]);
  };

  const readWord = (word: string, value: JsonValue): JsonValue => {
    if (text.startsWith(word, pos)) {
      pos += word.length;
      return value;
    }
    return fail(`unexpected ${describeHere()}`);
  };

  const readValue = (path: string, depth: number): JsonValue => {
    if (depth > MAX_DEPTH) fail(`nested deeper than ${MAX_DEPTH} levels`);
    skipSpace();
    if (!lines.has(path)) lines.set(path, line);
    const c = text[pos];
    if (c === '{') return readObject(path, depth);
    if (c === '[') return readArray(path, depth);
    if (c === '"') return readString();
    if (c === 't') return readWord('true', true);
    if (c === 'f') return readWord('false', false);
    if (c === 'n') return readWord('null', null);
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return readNumber();
    return fail(`unexpected ${describeHere()}`);
  };

  const readObject = (path: string, depth: number): JsonValue => {
    expect('{');
    // No prototype: a key such as "__proto__" is an ordinary key.
    const out = Object.create(null) as { [key: string]: JsonValue };
    const keyLines = new Map<string, number>();
    skipSpace();
    if (text[pos] === '}') {
      pos++;
      return out;
    }
    for (;;) {
      skipSpace();
      const keyLine = line;
      const key = readString();
      const keyPath = memberPath(path, key);
      const earlier = keyLines.get(key);
      if (earlier !== undefined)
        fail(`${keyPath}: duplicate key ${JSON.stringify(key)} (first on line ${earlier})`);
      keyLines.set(key, keyLine);
      lines.set(keyPath, keyLine);
      skipSpace();
      expect(':');
      out[key] = readValue(keyPath, depth + 1);
      skipSpace();
      if (text[pos] === ',') {
        pos++;
        continue;
      }
      expect('}');
      return out;
    }
  };

  const readArray = (path: string, depth: number): JsonValue => {
    expect('[');
    const out: JsonValue[] = [];
    skipSpace();
    if (text[pos] === ']') {
      pos++;
      return out;
    }
    for (;;) {
      out.push(readValue(elementPath(path, out.length), depth + 1));
      skipSpace();
      if (text[pos] === ',') {
        pos++;
        continue;
      }
      expect(']');
      return out;
    }
  };

  const value = readValue('', 0);
  skipSpace();
  if (pos < text.length) fail(`unexpected ${describeHere()} after the value`);
  return { value, lineOf: (path) => lines.get(path) ?? 1 };
}
