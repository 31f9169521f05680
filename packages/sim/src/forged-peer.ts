/**
 * A forged peer: a process on the members' network that does not hold the cluster secret and tries to pass
 * for a member. It dials a member, names itself as another member (or as an id nobody knows), and then
 * either answers the challenge with a proof made under a wrong secret or sends Raft messages without any
 * proof. Its messages carry the largest term a peer may name (MAX_PEER_TERM): a member that adopted one
 * could never elect a leader again. Every attempt must be refused; the checkers see it if one is not.
 */
import { type Env, FrameDecoder, MAX_HANDSHAKE_FRAME_BYTES, MessageType } from '@segmem/protocol';
import type { Message } from '@segmem/server/internal/raft/types';
import { type PeerHandshake, peerProof } from '@segmem/server/internal/shell/peer-auth';
import {
  decodePeerChallenge,
  encodePeerHello,
  encodePeerProof,
  encodeRaftMessage,
  MAX_PEER_TERM,
  PeerMessageType,
} from '@segmem/server/internal/shell/peer-codec';
import type { SimPeerNetwork } from '@segmem/server/internal/sim/peer-network';
import type { Prng } from '@segmem/server/internal/sim/prng';

const FORGER_ID = 'forger';
const FORGER_ADDRESS = '10.0.0.66:7401';
/** An attempt gives up (hangs up) after this long if the member has not closed the connection by then. */
const ATTEMPT_MS = 500;

export type ForgeryKind = 'wrongSecret' | 'noProof' | 'unknownId';

export interface ForgedPeerStats {
  /** Connections the forged peer opened to members (a dial to a member that is down is none). */
  attempts: number;
  /** Of those, the ones a member closed (refused) before the forger gave up. */
  refused: number;
  /** Raft messages it managed to send on a connection the member had not refused yet. */
  messagesSent: number;
}

export class ForgedPeer {
  readonly stats: ForgedPeerStats = { attempts: 0, refused: 0, messagesSent: 0 };
  /** A secret of the right size, but not the cluster's. */
  private readonly wrongSecret: Buffer;

  constructor(
    private readonly net: SimPeerNetwork,
    /** Its own process: its timers and randomness. */
    private readonly env: Env,
    private readonly prng: Prng,
    private readonly log: (line: string) => void,
  ) {
    this.wrongSecret = env.randomBytes(32);
  }

  /**
   * One attempt against the member `target` (at `address`) of cluster `clusterId`, whose members are
   * `members`: the forged peer names one of the others, or an unknown id.
   */
  attempt(target: string, address: string, clusterId: string, members: string[]): void {
    const others = members.filter((m) => m !== target);
    const kind: ForgeryKind = this.prng.chance(0.15)
      ? 'unknownId'
      : this.prng.chance(0.7)
        ? 'wrongSecret'
        : 'noProof';
    const claimed = kind === 'unknownId' ? 'mallory' : this.prng.pick(others);
    this.log(`forged peer: dials ${target} as ${claimed} (${kind})`);
    const socket = this.net.dial(FORGER_ID, FORGER_ADDRESS, this.env, address);
    const nonce = this.env.randomBytes(32);
    const decoder = new FrameDecoder({ maxFrameBytes: MAX_HANDSHAKE_FRAME_BYTES });
    let connected = false;
    let closed = false;
    let gaveUp = false;
    const forged = (type: Message['type']): Message => ({
      type,
      from: claimed,
      to: target,
      term: MAX_PEER_TERM,
      ...(type === 'heartbeat' ? { commit: 0 } : { logIndex: MAX_PEER_TERM, logTerm: MAX_PEER_TERM }),
    });
    const sendRaft = () => {
      for (const type of ['heartbeat', 'vote', 'timeoutNow'] as const) {
        if (closed) return;
        socket.cork();
        for (const p of encodeRaftMessage(forged(type))) socket.write(p);
        socket.uncork();
        this.stats.messagesSent++;
      }
    };
    socket.on('connect', () => {
      connected = true;
      this.stats.attempts++;
      socket.cork();
      for (const p of encodePeerHello({ clusterId, from: claimed, to: target, token: null, nonce }))
        socket.write(p);
      socket.uncork();
      if (kind === 'noProof') sendRaft();
    });
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.type === MessageType.ERROR || frame.type !== PeerMessageType.PEER_CHALLENGE) continue;
        const challenge = decodePeerChallenge(frame);
        const handshake: PeerHandshake = {
          clusterId,
          dialer: claimed,
          acceptor: target,
          dialerNonce: nonce,
          acceptorNonce: challenge.nonce,
        };
        socket.cork();
        for (const p of encodePeerProof(peerProof(this.wrongSecret, 'dialer', handshake))) socket.write(p);
        socket.uncork();
        sendRaft();
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      closed = true;
      if (connected && !gaveUp) this.stats.refused++;
    });
    this.env.setTimeout(() => {
      if (closed) return;
      gaveUp = true;
      this.log(`forged peer: ${target} did not close its connection as ${claimed} (${kind})`);
      socket.destroy();
    }, ATTEMPT_MS);
  }
}
