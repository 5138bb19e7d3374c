// @ts-check
/**
 * The receiver's data stream (protocol.md §6.6-6.8 and the window of §6.6.2) without I/O:
 * which file each byte belongs to, which files are complete, whether a `checksums` or an
 * `eof` may come now, and when an `ack` is due. receive.js feeds it the messages and does
 * the hashing and writing it is told to do; test/stream.test.mjs drives it alone.
 */
import { violation } from "./errors.js";

/**
 * A piece of a data message for one file: payload bytes [start, end) belong to `file`.
 * `opens`: the first piece of that file (seed its hash, open its writer); `completes`: its
 * last (its digest can be taken). Files with no bytes to come get empty pieces, in order.
 * @typedef {{file: number, start: number, end: number, opens: boolean, completes: boolean}} Piece
 */

export class ReceiverStream {
  /**
   * @param {number[]} sizes the size of each file, by file number (§6.6)
   * @param {number[]} offsets the agreed resume offset of each file (§6.5.1; 0: from its start)
   * @param {number} [window] the window announced in accept (0: none)
   */
  constructor(sizes, offsets, window = 0) {
    this.sizes = sizes;
    this.offsets = offsets;
    this.window = window;
    /** Stream bytes to come: every file from its agreed offset. */
    this.total = sizes.reduce((sum, size, i) => sum + size - offsets[i], 0);
    this.received = 0;
    this.acked = 0;
    /** The file the next stream byte belongs to, and its bytes still to come. */
    this.current = 0;
    this.left = sizes.length ? sizes[0] - offsets[0] : 0;
    this.opened = false;
    /** Files whose bytes are all in, and files whose digest was received. */
    this.complete = 0;
    this.verified = 0;
  }

  /**
   * Pieces for the files at the current position that have no bytes to come (§6.7 rule 2),
   * placed at payload position `at`.
   */
  takeEmpty(at = 0) {
    /** @type {Piece[]} */
    const pieces = [];
    while (this.current < this.sizes.length && this.left === 0) {
      pieces.push({ file: this.current, start: at, end: at, opens: !this.opened, completes: true });
      this.next();
    }
    return pieces;
  }

  next() {
    this.current += 1;
    this.complete += 1;
    this.opened = false;
    this.left = this.current < this.sizes.length ? this.sizes[this.current] - this.offsets[this.current] : 0;
  }

  /**
   * The pieces of a data message's `length` payload bytes; a violation if they go past the
   * announced total, or if the sender sent them with the window full: `mark` is the last
   * `ack` we had sent when the message arrived (an honest sender's `acked` is no more).
   * @param {number} length @param {number} [mark]
   * @returns {Piece[]}
   */
  take(length, mark = 0) {
    if (this.received + length > this.total) throw violation("more data than the manifest announced");
    if (this.window && this.received - mark >= this.window) throw violation("data beyond the flow-control window");
    /** @type {Piece[]} */
    const pieces = [];
    let at = 0;
    while (at < length) {
      const count = Math.min(this.left, length - at);
      const piece = { file: this.current, start: at, end: at + count, opens: !this.opened, completes: count === this.left };
      pieces.push(piece);
      this.opened = true;
      this.left -= count;
      at += count;
      if (piece.completes) {
        this.next();
        pieces.push(...this.takeEmpty(at));
      }
    }
    this.received += length;
    return pieces;
  }

  /** The `bytes` of an ack to send now (once W/4 more were handed to storage), or null. */
  ackDue() {
    if (!this.window || this.received - this.acked < this.window / 4) return null;
    this.acked = this.received;
    return this.received;
  }

  /**
   * The file numbers a `checksums` message gives digests for, once it passed §6.7's rules:
   * in the agreed algorithm, contiguous, and only for complete files.
   * @param {{first: number, digests: string[], algorithm: string}} message @param {string} agreed
   */
  checksums(message, agreed) {
    if (message.algorithm !== agreed) throw violation(`checksums in '${message.algorithm}', not the agreed '${agreed}'`);
    if (message.first !== this.verified) throw violation(`checksums start at file ${message.first}, expected ${this.verified}`);
    if (message.first + message.digests.length > this.complete) throw violation("checksums for a file that is not complete");
    this.verified += message.digests.length;
    return message.digests.map((_, k) => message.first + k);
  }

  /** Checks that `eof` may come now: every byte and every digest is in (§6.8). */
  eof() {
    if (this.received !== this.total || this.verified !== this.sizes.length) {
      throw violation(`eof after ${this.received} of ${this.total} bytes and ${this.verified} of ${this.sizes.length} digests`);
    }
  }
}
