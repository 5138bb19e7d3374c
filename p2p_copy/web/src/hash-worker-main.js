// @ts-check
// The entry of the hashing worker's bundle (build.mjs inlines it into the page and the
// notebook panel as HASH_WORKER; hashing.js starts it).
import { serve } from "./hash-worker.js";

serve(/** @type {any} */ (globalThis));
