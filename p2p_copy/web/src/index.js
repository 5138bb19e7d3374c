// @ts-check
/**
 * The browser peer's core: the p2p-copy protocol (docs/protocol.md) in JavaScript.
 * See docs/architecture.md ("The browser peer") for the API.
 */
export { normalizeCode, generateCode, roomHash, relayUrlFromLocation } from "./protocol/codes.js";
export { P2PError } from "./protocol/errors.js";
export { send } from "./send.js";
export { receive } from "./receive.js";
