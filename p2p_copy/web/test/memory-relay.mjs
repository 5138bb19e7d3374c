// An in-memory relay and WebSocket class for Node tests of the JS core against itself:
// pairing by the hello (§5.1-5.3, with `waiting`), forwarding, and §5.5's close rules.
// `tamper(direction, index, bytes)` may return other bytes for a binary message, and
// `drop(direction, index)` may end the pair there (the partner gets 4004).

const OPEN = 1;
const CLOSED = 3;

export class MemoryRelay {
  constructor({ tamper = null, drop = null } = {}) {
    this.rooms = new Map();
    this.tamper = tamper;
    this.drop = drop;
    /** Bytes delivered to the receiver's socket, in all (flow-control tests read it). */
    this.deliveredToReceiver = 0;
    const relay = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url) { super(url, relay); }
    };
  }

  hello(socket, text) {
    const hello = JSON.parse(text);
    socket.role = hello.role;
    const room = hello.code_hash_hex;
    if (!socket.url.endsWith(room)) throw new Error("the room in the URL and the hello disagree");
    const waiting = this.rooms.get(room);
    if (waiting && waiting.role !== hello.role) {
      this.rooms.delete(room);
      socket.partner = waiting;
      waiting.partner = socket;
      const sender = socket.role === "sender" ? socket : waiting;
      sender.deliver(JSON.stringify({ type: "ready" }));
      return;
    }
    if (waiting) { socket.remoteClose(4002, "code in use"); return; }
    this.rooms.set(room, socket);
    if (hello.version >= 2) socket.deliver(JSON.stringify({ type: "waiting" }));
  }
}

class FakeSocket {
  constructor(url, relay) {
    this.url = url;
    this.relay = relay;
    this.readyState = 0;
    this.bufferedAmount = 0;
    this.binaryType = "blob";
    this.listeners = { open: [], close: [] };
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.partner = null;
    this.greeted = false;
    this.sent = 0;
    setTimeout(() => { this.readyState = OPEN; for (const f of this.listeners.open) f({}); }, 0);
  }
  addEventListener(type, f) { this.listeners[type]?.push(f); }
  removeEventListener(type, f) { this.listeners[type] = (this.listeners[type] ?? []).filter((g) => g !== f); }

  send(data) {
    if (this.readyState !== OPEN) return;
    if (!this.greeted) { this.greeted = true; this.relay.hello(this, data); return; }
    let payload = typeof data === "string" ? data : new Uint8Array(data.buffer ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data);
    const direction = this.role === "sender" ? "S>R" : "R>S";
    const index = this.sent++;
    if (this.relay.drop?.(direction, index)) {
      this.remoteClose(1006, "");
      this.partner?.remoteClose(4004, "the peer disconnected");
      return;
    }
    if (typeof payload !== "string" && this.relay.tamper) payload = this.relay.tamper(direction, index, payload) ?? payload;
    const partner = this.partner;
    if (partner) partner.deliver(payload);
  }

  deliver(payload) {
    setTimeout(() => {
      if (this.readyState !== OPEN) return;
      if (typeof payload !== "string") {
        if (this.role === "receiver") this.relay.deliveredToReceiver += payload.length;
        payload = payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength);
      }
      this.onmessage?.({ data: payload });
    }, 0);
  }

  close(code = 1005) {
    if (this.readyState === CLOSED) return;
    this.finish(code, "");
    const partner = this.partner;
    if (partner) setTimeout(() => partner.remoteClose(code === 1000 ? 1000 : 4004, "the peer closed the connection"), 1);
    else for (const [room, socket] of this.relay.rooms) if (socket === this) this.relay.rooms.delete(room);
  }

  remoteClose(code, reason) {
    if (this.readyState === CLOSED) return;
    setTimeout(() => this.finish(code, reason), 0);
  }

  finish(code, reason) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    const event = { code, reason };
    this.onclose?.(event);
    for (const f of this.listeners.close) f(event);
  }
}

/** A sink that keeps files in memory; `slow` ms per write. */
export function memorySink({ held = null, prefix = null, slow = 0, accept = true, onWrite = null } = {}) {
  const sink = {
    files: new Map(),
    dirs: [],
    aborted: null,
    summary: null,
    async offer(summary) { sink.summary = summary; return accept; },
    async mkdir(path) { sink.dirs.push(path); },
    async open(path, size, { offset }) {
      const chunks = offset ? [prefix(path, offset)] : [];
      return {
        async write(bytes) {
          if (slow) await new Promise((resolve) => setTimeout(resolve, slow));
          chunks.push(Uint8Array.from(bytes));
          onWrite?.(bytes.length);
        },
        async close() { sink.files.set(path, Buffer.concat(chunks)); },
        async abort() { sink.files.delete(path); },
      };
    },
    async abort(error) { sink.aborted = error; },
  };
  if (held) {
    sink.held = async (files) => held(files);
    sink.prefix = async (index, offset) => prefix(index, offset);
  }
  return sink;
}
