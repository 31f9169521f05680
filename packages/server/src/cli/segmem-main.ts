/**
 * segmem: the operator's command. Every subcommand declares its arguments and options once (args.ts); the
 * same declaration parses, refuses mistakes and prints --help.
 *
 * Output contract: results on stdout; a failure is ONE line on stderr, `segmem: <message> (<CODE>)`, and
 * exit code 1. Only a usage mistake adds the command's usage line after it.
 */
import { snapshotAgent } from './agent-command.js';
import { type CommandSpec, helpText, parseCommand, synopsis, UsageError } from './args.js';
import { restore, snapshot } from './backup-commands.js';
import { cert } from './cert-command.js';
import { clusterAdd, clusterList, clusterRemove, clusterSlots, status } from './cluster-commands.js';
import { type Command, describe, versionLine } from './common.js';
import { create, get, ls, put, rm, stat } from './data-commands.js';
import { logInfo, logTail } from './log-commands.js';
import {
  clusterAddGroup,
  clusterMoveSlots,
  clusterRebalance,
  clusterRemoveGroup,
} from './rebalance-commands.js';
import { secretNew } from './secret-command.js';
import { up } from './up.js';
import { aclLs, aclRm, aclSet, userAdd, userLs, userRm } from './user-commands.js';
import { watch } from './watch-command.js';

/** Every subcommand, in the order the overview lists them. */
export const COMMANDS: Command[] = [
  up,
  status,
  ls,
  stat,
  get,
  put,
  create,
  rm,
  watch,
  logTail,
  logInfo,
  clusterList,
  clusterAdd,
  clusterRemove,
  clusterSlots,
  clusterRebalance,
  clusterMoveSlots,
  clusterAddGroup,
  clusterRemoveGroup,
  secretNew,
  snapshot,
  snapshotAgent,
  restore,
  userAdd,
  userRm,
  userLs,
  aclSet,
  aclRm,
  aclLs,
  cert,
];

/** Words that only group subcommands (`segmem cluster` alone lists its subcommands). */
const GROUPS = ['cluster', 'log', 'secret', 'user', 'acl'];

function overview(commands: Command[] = COMMANDS, title = 'segmem COMMAND [ARGS] [options]'): string {
  const width = Math.max(...commands.map((c) => c.name.length)) + 2;
  const lines = [
    `usage: ${title}`,
    '',
    'commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    "segmem COMMAND --help prints a command's arguments and options; segmem --version its version.",
    'Commands that talk to a cluster take --servers (default $SEGMEM_SERVERS), --timeout MS (default 2000)',
    'and --token (default $SEGMEM_TOKEN), or --user NAME with --password-file FILE (default $SEGMEM_USER,',
    '$SEGMEM_PASSWORD), and --tls-ca FILE (default $SEGMEM_TLS_CA) for servers that serve TLS. A failure',
    'prints one line, "segmem: <message> (<CODE>)", and exits 1.',
  ];
  return `${lines.join('\n')}\n`;
}

/** Finds the command `argv` names: one word, or a group and a word (`cluster add`). */
function lookup(argv: string[]): { command: Command; rest: string[] } | null {
  for (const c of COMMANDS) {
    const words = c.name.split(' ');
    if (words.every((w, i) => argv[i] === w)) return { command: c, rest: argv.slice(words.length) };
  }
  return null;
}

export async function segmemMain(argv: string[]): Promise<void> {
  let current: CommandSpec | null = null;
  try {
    const [first, second] = argv;
    if (first === undefined) {
      process.stderr.write(overview());
      process.exitCode = 1;
      return;
    }
    if (first === '--help' || first === '-h') return void process.stdout.write(overview());
    if (first === '--version' || first === '-V') return void process.stdout.write(versionLine('segmem'));
    if (first === 'help') {
      const found = lookup(argv.slice(1));
      if (argv.length === 1) return void process.stdout.write(overview());
      if (found) return void process.stdout.write(helpText(found.command));
      if (GROUPS.includes(second!) && argv.length === 2)
        return void process.stdout.write(groupOverview(second!));
      throw new UsageError(`no command ${JSON.stringify(argv.slice(1).join(' '))}`, null);
    }
    const found = lookup(argv);
    if (!found) {
      if (GROUPS.includes(first)) {
        // `segmem cluster`, `segmem cluster --help`: the group's commands; anything else is unknown.
        if (second === undefined || second === '--help' || second === '-h') {
          process[second ? 'stdout' : 'stderr'].write(groupOverview(first));
          if (!second) process.exitCode = 1;
          return;
        }
        throw new UsageError(
          `unknown command "${first} ${second}"; segmem ${first} has ${COMMANDS.filter((c) =>
            c.name.startsWith(`${first} `),
          )
            .map((c) => c.name.split(' ')[1])
            .join(', ')}`,
          null,
        );
      }
      throw new UsageError(`unknown command ${JSON.stringify(first)}`, null);
    }
    current = found.command;
    const parsed = parseCommand(found.command, found.rest);
    if (parsed.help) return void process.stdout.write(helpText(found.command));
    if (parsed.version) return void process.stdout.write(versionLine('segmem'));
    const code = await found.command.run(parsed);
    if (code) process.exitCode = code;
  } catch (err) {
    process.exitCode = 1;
    if (err instanceof UsageError) {
      const spec = err.command ?? current;
      process.stderr.write(
        `segmem: ${err.message} (${err.code})\n${
          spec
            ? `usage: ${synopsis(spec)}\n(segmem ${spec.name} --help for more)\n`
            : '(segmem --help lists the commands)\n'
        }`,
      );
      return;
    }
    process.stderr.write(`segmem: ${describe(err)}\n`);
    if (process.env.SEGMEM_DEBUG) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
  }
}

function groupOverview(group: string): string {
  const commands = COMMANDS.filter((c) => c.name.startsWith(`${group} `));
  const words = commands.map((c) => c.name.split(' ')[1]).join('|');
  return overview(commands, `segmem ${group} ${words} [ARGS] [options]`);
}
