/**
 * Time and randomness reach the code only through an injected Env (@segmem/protocol's env.ts), so the
 * simulator can run that code under its own clock and seed: no source file under the roots below reads the
 * clock, sets a timer or draws a random number through the globals. The entry points (which choose the real
 * Env) and the few files listed in ALLOW, each with its reason, are the exceptions.
 * An offender is reported as path:line with the call.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

/** Source trees checked, relative to the repository root. */
const ROOTS = ['packages/server/src', 'packages/client/src'];

/** Files (or folders, ending in /) that may use the globals, relative to the repository root. */
const ALLOW: { path: string; rules?: string[]; why: string }[] = [
  { path: 'packages/server/src/cli/', why: 'entry points: they run on the real clock and choose systemEnv' },
  {
    path: 'packages/server/src/storage/datadir.ts',
    rules: ['new Date()', 'crypto random'],
    why: "meta.json's creation and walStartedAt stamps, and the cluster id of a directory created without one (a single server)",
  },
  {
    path: 'packages/server/src/storage/fs.ts',
    rules: ['Date.now', 'new Date()', 'crypto random'],
    why:
      'the real file system: a LOCK file age is its mtime (set by the system clock) against the system ' +
      'clock; creation stamps, nonces and temporary names are those of real files',
  },
  {
    path: 'packages/server/src/storage/page-file.ts',
    rules: ['performance.now'],
    why: 'times a real file write for the log line that reports it; nothing decides on it',
  },
  {
    path: 'packages/server/src/sim/drive.ts',
    rules: ['setImmediate'],
    why: "the simulator's driver yields to the real event loop so the simulated code's promise continuations run; it sets no time",
  },
  {
    path: 'packages/server/src/storage/snapshot-serialise.ts',
    rules: ['setImmediate'],
    why: 'yields a turn of the event loop between slices of CPU work over a frozen view; sets no time',
  },
  {
    path: 'packages/client/src/mapped-segment.ts',
    rules: ['crypto random'],
    why: 'the unique name of the mapped segment file on a real disk (unlinked at once)',
  },
  {
    path: 'packages/server/src/secret-file.ts',
    rules: ['crypto random'],
    why: 'a new cluster secret (segmem secret new, segmem up): it must be unguessable',
  },
  {
    path: 'packages/server/src/storage/restore.ts',
    rules: ['crypto random'],
    why: 'the cluster id of a cluster rebuilt from a file by the restore command (an entry point)',
  },
];

interface Rule {
  name: string;
  pattern: RegExp;
}

/**
 * A name followed by a parameter list that starts with a typed parameter (or is empty and followed by a
 * type or a body) is a declaration (an Env implementation's method, an interface member), not a call.
 */
const NOT_A_DECLARATION = String.raw`(?!\s*\(\s*(?:[\w$]+\s*\??\s*:|\)\s*[:{]))`;
const bare = (names: string) => new RegExp(String.raw`(?<![\w$.])(?:${names})\b${NOT_A_DECLARATION}`, 'g');

export const RULES: Rule[] = [
  { name: 'setTimeout', pattern: bare('setTimeout|clearTimeout') },
  { name: 'setInterval', pattern: bare('setInterval|clearInterval') },
  { name: 'setImmediate', pattern: bare('setImmediate|clearImmediate') },
  { name: 'Date.now', pattern: /(?<![\w$.])Date\s*\.\s*now\b/g },
  { name: 'new Date()', pattern: /\bnew\s+Date\s*\(\s*\)/g },
  { name: 'performance.now', pattern: /(?<![\w$.])performance\s*\.\s*now\b/g },
  { name: 'process.hrtime', pattern: /(?<![\w$.])process\s*\.\s*hrtime\b/g },
  { name: 'Math.random', pattern: /(?<![\w$.])Math\s*\.\s*random\b/g },
  {
    name: 'crypto random',
    pattern: new RegExp(
      String.raw`(?<![\w$]|(?<!crypto)\.)(?:randomBytes|randomUUID|randomInt|randomFill|randomFillSync|getRandomValues)\b${NOT_A_DECLARATION}(?!\s*[,}]|\s+as\b)`,
      'g',
    ),
  },
  {
    name: 'globalThis',
    pattern:
      /\b(?:globalThis|global)\s*\.\s*(?:setTimeout|setInterval|setImmediate|Date|performance|Math|crypto)\b/g,
  },
];

/** The code of a TypeScript file with comments and the text of string literals blanked (lines kept). */
export function codeOnly(source: string): string {
  const out: string[] = [];
  let i = 0;
  const n = source.length;
  /** Open template literals' `${` nesting: the brace depth at which each substitution ends. */
  const templates: number[] = [];
  let depth = 0;
  const blank = (from: number, to: number) => {
    for (let k = from; k < to; k++) out.push(source[k] === '\n' ? '\n' : ' ');
  };
  const template = (): void => {
    // Inside a template's text, from i; ends at the closing backtick or a `${`.
    const start = i;
    while (i < n) {
      const c = source[i];
      if (c === '\\') i += 2;
      else if (c === '`') {
        blank(start, i);
        out.push('`');
        i++;
        return;
      } else if (c === '$' && source[i + 1] === '{') {
        blank(start, i);
        out.push('${');
        i += 2;
        templates.push(depth);
        depth++;
        return;
      } else i++;
    }
    blank(start, n);
  };
  while (i < n) {
    const c = source[i]!;
    const next = source[i + 1];
    if (c === '/' && next === '/') {
      const end = source.indexOf('\n', i);
      const stop = end < 0 ? n : end;
      blank(i, stop);
      i = stop;
    } else if (c === '/' && next === '*') {
      const end = source.indexOf('*/', i + 2);
      const stop = end < 0 ? n : end + 2;
      blank(i, stop);
      i = stop;
    } else if (c === "'" || c === '"') {
      let j = i + 1;
      while (j < n && source[j] !== c && source[j] !== '\n') j += source[j] === '\\' ? 2 : 1;
      out.push(c);
      blank(i + 1, j);
      if (j < n) out.push(source[j]!);
      i = j + 1;
    } else if (c === '`') {
      out.push('`');
      i++;
      template();
    } else if (c === '{') {
      depth++;
      out.push(c);
      i++;
    } else if (c === '}') {
      depth--;
      out.push(c);
      i++;
      if (templates.length > 0 && templates[templates.length - 1] === depth) {
        templates.pop();
        template();
      }
    } else {
      out.push(c);
      i++;
    }
  }
  return out.join('');
}

export interface Offender {
  file: string;
  line: number;
  rule: string;
  text: string;
}

/** Every use of a rule's global in the .ts files under `roots` (folders or files), except what `allow` lets through. */
export function findAmbientUses(repo: string, roots: string[], allow: typeof ALLOW): Offender[] {
  const offenders: Offender[] = [];
  const files: string[] = [];
  const walk = (p: string) => {
    if (statSync(p).isDirectory()) for (const name of readdirSync(p).sort()) walk(join(p, name));
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) files.push(p);
  };
  for (const root of roots) walk(join(repo, root));
  for (const file of files) {
    const rel = relative(repo, file).split('\\').join('/');
    const allowed = allow.filter((a) => (a.path.endsWith('/') ? rel.startsWith(a.path) : rel === a.path));
    const source = readFileSync(file, 'utf8');
    const code = codeOnly(source);
    const lines = source.split('\n');
    for (const rule of RULES) {
      if (allowed.some((a) => !a.rules || a.rules.includes(rule.name))) continue;
      for (const m of code.matchAll(rule.pattern)) {
        const line = code.slice(0, m.index).split('\n').length;
        offenders.push({ file: rel, line, rule: rule.name, text: lines[line - 1]!.trim() });
      }
    }
  }
  return offenders.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line);
}

test('no source file reads the clock, sets a timer or draws randomness except through an Env', (t) => {
  const offenders = findAmbientUses(REPO, ROOTS, ALLOW);
  t.deepEqual(
    offenders.map((o) => `${o.file}:${o.line}: ${o.rule}: ${o.text}`),
    [],
    'take an Env (an option that entry points default to systemEnv) instead',
  );
});

test('every allow-list entry names a file that exists and still needs it', (t) => {
  for (const a of ALLOW) {
    const p = join(REPO, a.path);
    t.notThrows(() => statSync(p), `${a.path} is listed but missing`);
    if (a.path.endsWith('/') || !a.rules) continue;
    // An entry whose file no longer uses what it allows is stale: remove it.
    const used = findAmbientUses(REPO, [a.path], []).map((o) => o.rule);
    for (const rule of a.rules) t.true(used.includes(rule), `${a.path} no longer uses ${rule}: drop it`);
  }
});

test('the scanner sees calls in code and ignores comments, strings, member calls and declarations', (t) => {
  const found = (code: string) =>
    RULES.flatMap((r) => [...codeOnly(code).matchAll(r.pattern)].map(() => r.name)).sort();
  t.deepEqual(found('setTimeout(() => f(), 10);'), ['setTimeout']);
  t.deepEqual(found('const t = setInterval(tick, 50);\nclearInterval(t);'), ['setInterval', 'setInterval']);
  t.deepEqual(found('await new Promise((r) => setImmediate(r));'), ['setImmediate']);
  t.deepEqual(found('const started = Date.now();'), ['Date.now']);
  t.deepEqual(found('const at = new Date().toISOString();'), ['new Date()']);
  t.deepEqual(found('const ms = performance.now() - t0;'), ['performance.now']);
  t.deepEqual(found('const jitter = 0.5 + Math.random();'), ['Math.random']);
  t.deepEqual(found("import { randomBytes } from 'node:crypto';\nconst s = randomBytes(16);"), [
    'crypto random',
  ]);
  t.deepEqual(found('const id = crypto.randomUUID();'), ['crypto random']);
  t.deepEqual(found('globalThis.setTimeout(f, 1);'), ['globalThis']);
  // Template literals, written as source text here (hence the '$' + '{'):
  t.deepEqual(found('const line = `took $' + '{Date.now() - t0} ms`;'), ['Date.now']);
  t.deepEqual(found('const s = `$' + '{a ? `$' + '{Math.random()}` : "x"}`;'), ['Math.random']);
  // Not uses of the globals:
  t.deepEqual(found('this.env.setTimeout(() => f(), 10); env.now(); env.random(); env.randomBytes(4);'), []);
  t.deepEqual(found('// setTimeout(f, 1) and Date.now()\n/* Math.random() */'), []);
  t.deepEqual(found('const msg = "never call setTimeout( or Date.now() here";'), []);
  t.deepEqual(found('const msg = `setTimeout($' + '{x})`;'), []);
  t.deepEqual(
    found('interface E {\n  setTimeout(fn: () => void, delayMs: number): T;\n  random(): number;\n}'),
    [],
  );
  t.deepEqual(found('class S {\n  randomBytes(n: number): Buffer {\n    return b;\n  }\n}'), []);
  t.deepEqual(found('const started = new Date(env.now()).toISOString();'), []);
});
