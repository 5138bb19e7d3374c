// @ts-check
/**
 * SPAKE2 on Ed25519 exactly as the Python package `spake2` 0.9 computes it (protocol.md
 * §6.0.4): password scalar and arbitrary elements from HKDF-SHA256 read big-endian, side
 * bytes "A"/"B", key = SHA-256 of the hashed password, identities and the three elements.
 * Point arithmetic is noble-curves'; nothing here is a hand-made primitive.
 *
 * The random scalar is split from the rest (`startWithScalar`) so that the fixed-scalar
 * vector of §6.0.4 can be checked.
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, concatBytes, hexToBytes, utf8ToBytes } from "@noble/hashes/utils.js";

const Point = ed25519.Point;
/** The order of the prime-order subgroup, L. */
export const L = Point.Fn.ORDER;

/** The package's blinding elements for seeds "M" and "N" (test/spake2.test.mjs re-derives them). */
export const M_HEX = "15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312";
export const N_HEX = "f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3";
const M = Point.fromBytes(hexToBytes(M_HEX));
const N = Point.fromBytes(hexToBytes(N_HEX));

export const ID_A = utf8ToBytes("p2p-copy sender");
export const ID_B = utf8ToBytes("p2p-copy receiver");
const SIDE_A = 0x41;
const SIDE_B = 0x42;

/** @param {Uint8Array} bytes @returns {bigint} */
function bigEndian(bytes) {
  return bytes.length === 0 ? 0n : BigInt("0x" + bytesToHex(bytes));
}

/** A big-endian 48-byte HKDF output mod `modulus`, as python-spake2 turns seeds into numbers. */
function expandNumber(ikm, info, modulus) {
  return bigEndian(hkdf(sha256, ikm, new Uint8Array(0), utf8ToBytes(info), 48)) % modulus;
}

/** w: the password scalar (python-spake2 `password_to_scalar`). */
export function passwordScalar(password) {
  return expandNumber(password, "SPAKE2 pw", L);
}

/**
 * The element python-spake2 derives from `seed` (`arbitrary_element`): y from HKDF, the
 * point with that y and even x (the first y that gives one), times the cofactor 8.
 * Only tests call it; the constants above are its results for "M" and "N".
 * @param {Uint8Array} seed
 */
export function arbitraryElement(seed) {
  const p = Point.Fp.ORDER;
  let y = expandNumber(seed, "SPAKE2 arbitrary element", p);
  for (;;) {
    const encoded = new Uint8Array(32);
    let v = y;
    for (let i = 0; i < 32; i++) { encoded[i] = Number(v & 0xffn); v >>= 8n; }
    let point = null;
    try { point = Point.fromBytes(encoded); } catch { point = null; }  // not on the curve
    if (point) {
      const p8 = point.clearCofactor();
      if (!p8.is0()) return p8;
    }
    y = (y + 1n) % p;
  }
}

/** @param {bigint} s @param {any} point */
function times(point, s) {
  const k = ((s % L) + L) % L;
  return k === 0n ? Point.ZERO : point.multiply(k);
}

/**
 * The first half of a run, with a given scalar: returns the 33-byte message and a
 * `finish(inbound)` that gives the 32-byte shared key K.
 * @param {"A" | "B"} side  A = sender, B = receiver
 * @param {Uint8Array} password  UTF-8 of the normalised code
 * @param {bigint} scalar  x (side A) or y (side B)
 * @param {{idA?: Uint8Array, idB?: Uint8Array}} [ids]  p2p-copy's identities unless given
 *   (python-spake2's own vectors use empty ones)
 */
export function startWithScalar(side, password, scalar, { idA = ID_A, idB = ID_B } = {}) {
  const w = passwordScalar(password);
  const [own, other] = side === "A" ? [M, N] : [N, M];
  const element = times(Point.BASE, scalar).add(times(own, w));
  const elementBytes = element.toBytes();
  const message = concatBytes(new Uint8Array([side === "A" ? SIDE_A : SIDE_B]), elementBytes);
  /**
   * @param {Uint8Array} inbound the other side's 33-byte message
   * @returns {Uint8Array} K
   * @throws {Error} when the message is not a valid SPAKE2 message for this side
   */
  function finish(inbound) {
    if (inbound.length !== 33) throw new Error("a SPAKE2 message has 33 bytes");
    if (inbound[0] !== (side === "A" ? SIDE_B : SIDE_A)) throw new Error("the SPAKE2 message is from the wrong side");
    const theirBytes = inbound.subarray(1);
    let theirs;
    try { theirs = Point.fromBytes(theirBytes); } catch { throw new Error("the SPAKE2 element is not a point"); }
    if (theirs.is0() || !theirs.isTorsionFree()) throw new Error("the SPAKE2 element is not in the group");
    if (bytesToHex(theirBytes) === bytesToHex(elementBytes)) throw new Error("the SPAKE2 message was reflected");
    const z = times(theirs.subtract(times(other, w)), scalar).toBytes();
    const [xStar, yStar] = side === "A" ? [elementBytes, theirBytes] : [theirBytes, elementBytes];
    return sha256(concatBytes(sha256(password), sha256(idA), sha256(idB), xStar, yStar, z));
  }
  return { message, finish };
}

/** A run with a fresh random scalar (64 random bytes, big-endian, mod L, as the package does). */
export function start(side, password) {
  const random = crypto.getRandomValues(new Uint8Array(64));
  return startWithScalar(side, password, bigEndian(random) % L);
}
