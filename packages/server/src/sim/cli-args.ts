/**
 * The option reading both simulator CLIs share (this package's and @segmem/sim's): `--name value` pairs
 * and integers with a lower bound; a mistake goes to the caller's `usage`, which exits.
 */
export function simArgs(
  args: string[],
  usage: (message: string) => never,
): {
  opt(name: string): string | undefined;
  int(name: string, value: string | undefined, min: number): number | undefined;
} {
  return {
    opt(name) {
      const i = args.indexOf(`--${name}`);
      if (i < 0) return undefined;
      const v = args[i + 1];
      if (v === undefined || v.startsWith('--')) usage(`--${name} needs a value`);
      return v;
    },
    int(name, value, min) {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < min) usage(`--${name} must be an integer >= ${min}`);
      return n;
    },
  };
}
