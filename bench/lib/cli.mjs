// What the bench scripts share on the command line: progress lines, option parsing and --help.
import { readFileSync } from 'node:fs';

/** One progress line on stderr (stdout carries the tables). */
export function log(line) {
  process.stderr.write(`${line}\n`);
}

/**
 * Walks `argv`, calling `on(option, value, list)` for each option: `value()` takes the next argument (or
 * throws "OPTION needs a value"), `list()` takes it split at commas. `on` returns false for an option it
 * does not know, which is refused. `--help` / `-h` prints the head comment of `scriptUrl` (the script's
 * `import.meta.url`) and exits.
 */
export function parseArgs(argv, scriptUrl, on) {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const list = () =>
      value()
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
    if (a === '--help' || a === '-h') {
      const lines = readFileSync(new URL(scriptUrl), 'utf8').split('\n').slice(1);
      const head = lines.slice(
        0,
        lines.findIndex((l) => !l.startsWith('//')),
      );
      process.stdout.write(`${head.map((l) => l.replace(/^\/\/ ?/, '')).join('\n')}\n`);
      process.exit(0);
    }
    if (on(a, value, list) === false) throw new Error(`unknown option ${a} (try --help)`);
  }
}
