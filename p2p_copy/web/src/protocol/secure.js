// @ts-check
/**
 * The encryption layer after SPAKE2 (protocol.md §6.0.5-6.0.6): the key schedule through
 * WebCrypto HKDF, key confirmation, and sealed messages through WebCrypto AES-256-GCM with
 * a per-direction counter nonce. No primitive is written here.
 */
import { toHex } from "./codes.js";

export const SUITE = "spake2-ed25519+hkdf-sha256+aes-256-gcm/1";
const SALT = new TextEncoder().encode("p2p-copy e2e v1");
const TAG_BYTES = 16;

/** @param {CryptoKey} base @param {string} info @returns {Promise<Uint8Array>} */
async function derive(base, info) {
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: SALT, info: new TextEncoder().encode(info) }, base, 256);
  return new Uint8Array(bits);
}

/**
 * The four values of §6.0.5 from the SPAKE2 key K, as raw bytes (for tests) and as
 * non-extractable AES keys.
 * @param {Uint8Array} key K
 */
export async function keySchedule(key) {
  const base = await crypto.subtle.importKey("raw", key, "HKDF", false, ["deriveBits"]);
  const [confirmSender, confirmReceiver, senderKey, receiverKey] = await Promise.all(
    ["confirm sender", "confirm receiver", "key sender to receiver", "key receiver to sender"]
      .map((info) => derive(base, info)));
  return { confirmSender, confirmReceiver, senderKey, receiverKey };
}

/** @param {Uint8Array} raw @param {"encrypt" | "decrypt"} use */
function aesKey(raw, use) {
  return crypto.subtle.importKey("raw", raw, "AES-GCM", false, [use]);
}

/** Nonce n: 12 bytes, big-endian. */
function nonce(n) {
  const iv = new Uint8Array(12);
  new DataView(iv.buffer).setBigUint64(4, BigInt(n));
  return iv;
}

/**
 * One direction of sealed messages. Nonces are taken in call order, synchronously, so
 * callers must seal (and open) in the order the messages travel.
 */
export class Sealer {
  /** @param {Uint8Array} raw the sealing side's key */
  static async create(raw) {
    return new Sealer(await aesKey(raw, "encrypt"));
  }
  /** @param {CryptoKey} key */
  constructor(key) { this.key = key; this.count = 0; }
  /**
   * WebCrypto copies `inner` when it is called (before this returns): the caller may
   * reuse its buffer at once.
   * @param {Uint8Array} inner @returns {Promise<Uint8Array>}
   */
  async seal(inner) {
    const iv = nonce(this.count++);
    return new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv }, this.key, inner));
  }
}

export class Opener {
  /** @param {Uint8Array} raw the other side's key */
  static async create(raw) {
    return new Opener(await aesKey(raw, "decrypt"));
  }
  /** @param {CryptoKey} key */
  constructor(key) { this.key = key; this.count = 0; }
  /**
   * The inner message, or null if the sealed message does not open (altered, dropped,
   * reordered, replayed, injected): the caller reports `tampered`.
   * @param {Uint8Array} sealed
   * @returns {Promise<Uint8Array | null>}
   */
  async open(sealed) {
    if (sealed.length < TAG_BYTES) return null;
    const iv = nonce(this.count++);
    try {
      return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv }, this.key, sealed));
    } catch {
      return null;
    }
  }
}

/** Constant-time comparison of two strings of equal public length (the confirmation hex). */
export function equalConstantTime(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

export { toHex };
