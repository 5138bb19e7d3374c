// @ts-check
/**
 * File digests (protocol.md §6.7.1): SHA-256 and BLAKE3, hashed incrementally by
 * hash-wasm (WebCrypto has no incremental digest; noble's BLAKE3 is ~25x slower here).
 * A hasher's state can be saved and loaded, which resume's prefix digests need (§6.5.1).
 */
import { createBLAKE3, createSHA256 } from "hash-wasm";

/** What we offer as a sender and pick from as a receiver, best first. */
export const SUPPORTED = Object.freeze(["blake3", "sha256"]);
export const HEX_DIGEST = /^[0-9a-f]{64}$/;

/**
 * An incremental hasher for `algorithm`.
 * @param {string} algorithm "sha256" | "blake3"
 * @returns {Promise<import("hash-wasm").IHasher>}
 */
export async function createHasher(algorithm) {
  if (algorithm === "blake3") return createBLAKE3();
  if (algorithm === "sha256") return createSHA256();
  throw new Error(`unknown digest ${algorithm}`);
}

/**
 * The receiver's choice (§6.7.1): the first offered name we support, else sha256.
 * @param {readonly string[] | null} offered the manifest's `digests` (null: absent)
 */
export function pickDigest(offered) {
  if (offered === null) return "sha256";
  return offered.find((name) => SUPPORTED.includes(name)) ?? "sha256";
}
