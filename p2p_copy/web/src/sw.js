// @ts-check
// The service worker that turns a received file into an ordinary download, written to disk
// by the browser as bytes arrive (used where the File System Access API is missing).
//
// The page registers it from static/ with scope static/; it answers only requests for
// static/dl/<id>/<name> that the page announced, and lets every other request through.
// Per download the page sends {type: "download", id, name, size} with a MessagePort; the
// response body pulls one chunk at a time through that port ({type: "pull", back?} out, back
// being a done chunk's buffer handed back for reuse; {type: "chunk", data} / {type: "end"} /
// {type: "abort", reason} in), so that no more than three chunks are held here whatever the
// speeds of the network and the disk.
// Content-Length is always set: Safari truncates a streamed download without it.
// Registered as a classic script (the bundle has no imports or exports left), which every
// browser with service workers runs.

import { contentDisposition } from "./storage/disposition.js";

/** @type {any} */
const sw = self;

/** @type {Map<string, {port: MessagePort, name: string, size: number, used: boolean}>} */
const pending = new Map();

sw.addEventListener("install", () => sw.skipWaiting());
sw.addEventListener("activate", (event) => event.waitUntil(sw.clients.claim()));

sw.addEventListener("message", (event) => {
  const msg = event.data || {};
  if (msg.type === "ping") {
    // The page's keep-alive (a browser stops an idle worker after ~30 s, which would
    // cut a download) and its readiness check.
    if (event.ports && event.ports[0]) event.ports[0].postMessage({ type: "pong" });
    else if (event.source) event.source.postMessage({ type: "pong", id: msg.id });
  } else if (msg.type === "download" && typeof msg.id === "string" && event.ports[0]) {
    pending.set(msg.id, { port: event.ports[0], name: String(msg.name), size: Number(msg.size), used: false });
    event.ports[0].postMessage({ type: "ready" });
  }
});

/** A body that asks the page for each chunk when the browser wants more. */
function bodyFrom(port) {
  /** @type {((v: any) => void) | null} */
  let wake = null;
  /** @type {ReadableStreamDefaultController<Uint8Array> | null} */
  let ctrl = null;
  let finished = false;
  // Chunks enqueued and not yet handed back, oldest first. A highWaterMark of 0 makes each
  // pull one read by the download, and a reader reads the next chunk only when done with
  // the one before: so at a pull, all but the last two chunks are done with and go back
  // to the page for reuse (two kept in case a reader reads one ahead).
  /** @type {Uint8Array[]} */
  const held = [];
  const stream = new ReadableStream({
    start(controller) {
      ctrl = controller;
      port.onmessage = (event) => {
        const msg = event.data || {};
        if (finished) return;
        if (msg.type === "chunk") {
          const chunk = msg.data instanceof Uint8Array ? msg.data : new Uint8Array(msg.data);
          held.push(chunk);
          ctrl?.enqueue(chunk);
        } else if (msg.type === "end") {
          finished = true;
          ctrl?.close();
          port.close();
        } else if (msg.type === "abort") {
          finished = true;
          ctrl?.error(new Error(String(msg.reason || "the transfer stopped")));
          port.close();
        }
        if (wake) {
          const w = wake;
          wake = null;
          w(undefined);
        }
      };
    },
    pull() {
      // One chunk per pull: the promise holds the stream until the page answers.
      return new Promise((resolve) => {
        wake = resolve;
        const done = held.length > 2 ? held.shift() : undefined;
        if (done) port.postMessage({ type: "pull", back: done.buffer }, [done.buffer]);
        else port.postMessage({ type: "pull" });
      });
    },
    cancel(reason) {
      held.length = 0;
      finished = true;
      // The person cancelled the download in the browser: the page stops the transfer.
      port.postMessage({ type: "cancel", reason: String(reason || "") });
      port.close();
    },
  }, { highWaterMark: 0 });
  return stream;
}

sw.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const scope = new URL(sw.registration.scope);
  if (url.origin !== scope.origin || !url.pathname.startsWith(`${scope.pathname}dl/`)) return;
  const id = url.pathname.slice(`${scope.pathname}dl/`.length).split("/")[0];
  const download = pending.get(id);
  if (!download || download.used) {
    // Unknown here (this worker restarted, or a newer one took over): 204 keeps the page
    // where it is, and the page, asked for no bytes, says the download did not start.
    event.respondWith(new Response(null, { status: 204 }));
    return;
  }
  download.used = true;
  pending.delete(id);
  event.respondWith(new Response(bodyFrom(download.port), {
    headers: {
      "Content-Type": "application/octet-stream",
      "Content-Length": String(download.size),
      "Content-Disposition": contentDisposition(download.name),
      "Content-Security-Policy": "default-src 'none'",
      "X-Content-Type-Options": "nosniff",
      "Cache-Control": "no-store",
    },
  }));
});
