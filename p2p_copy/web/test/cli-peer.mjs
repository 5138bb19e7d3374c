// A command-line peer on the JS core, for the interop tests against the Python CLI:
//   node --experimental-websocket cli-peer.mjs send RELAY CODE PATH
//   node --experimental-websocket cli-peer.mjs receive RELAY CODE DIR
// CODE "auto" generates one (printed as "code: ..."). $P2P_COPY_RELAY_TOKEN, as for the
// Python CLI, is a private relay's access token. Prints "kind: message" and exits with the
// Python CLI's exit code for that kind on failure.
import { openAsBlob } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { receive, send, P2PError } from "../src/index.js";

const EXIT = { usage: 2, bad_code: 2, relay_refused: 5, access_denied: 18, timeout: 4, connection_lost: 7, protocol: 8, integrity: 9,
  unsafe_path: 10, exists: 11, incompatible: 13, wrong_code: 14, tampered: 16, policy: 19, peer: 6, declined: 6, cancelled: 6 };

/** The entries of `path` as the Python sender names them: the last component, then a walk. */
async function entriesOf(path) {
  const top = basename(path);
  const info = await stat(path);
  const entries = [];
  const add = async (full, rel, info) => {
    if (info.isDirectory()) {
      entries.push({ path: rel, kind: "dir", mode: info.mode & 0o7777, mtime: info.mtimeMs / 1000 });
      const names = (await readdir(full)).sort();
      const subs = [];
      for (const name of names) {
        const child = await stat(join(full, name));
        if (child.isDirectory()) subs.push([name, child]);
        else await add(join(full, name), `${rel}/${name}`, child);
      }
      for (const [name, child] of subs) await add(join(full, name), `${rel}/${name}`, child);
    } else {
      entries.push({ path: rel, kind: "file", size: info.size, mode: info.mode & 0o7777, mtime: info.mtimeMs / 1000,
        blob: await openAsBlob(full) });
    }
  };
  await add(path, top, info);
  return entries;
}

/** A sink that writes under `root` with node:fs: a hidden part file, renamed once verified. */
function fsSink(root) {
  const safe = (path) => join(root, ...path.split("/"));
  return {
    async offer(summary) {
      console.error(`offer: ${summary.files} files, ${summary.dirs} folders, ${summary.bytes} bytes: ${summary.names.join(", ")}`);
      return true;
    },
    async mkdir(path) { await mkdir(safe(path), { recursive: true }); },
    async open(path, size, { offset }) {
      const final = safe(path);
      await mkdir(dirname(final), { recursive: true });
      try {
        await stat(final);
        throw new P2PError("exists", `'${path}' already exists here.`, { wire: "exists", peerMessage: `'${path}' already exists on the receiver's side.` });
      } catch (error) {
        if (error instanceof P2PError) throw error;
      }
      const part = join(dirname(final), `.${basename(final)}.p2p-copy-part`);
      const handle = await open(part, offset ? "r+" : "wx", 0o600);
      let position = offset;
      return {
        async write(bytes) { await handle.write(bytes, 0, bytes.length, position); position += bytes.length; },
        async close() { await handle.close(); await rename(part, final); },
        async abort() { await handle.close().catch(() => {}); await rm(part, { force: true }); },
      };
    },
  };
}

const [mode, relay, code, path] = process.argv.slice(2);
const token = process.env.P2P_COPY_RELAY_TOKEN || undefined;
const onEvent = (event) => {
  if (event.type === "code" || event.type === "waiting") console.error(`${event.type}: ${event.code}`);
  else if (event.type === "done") console.error(`done: ${JSON.stringify(event.result)}`);
};
try {
  const started = performance.now();
  let result;
  if (mode === "send") {
    result = await send({ relay, code: code === "auto" ? undefined : code, entries: await entriesOf(path), fresh: code === "auto", onEvent, token });
  } else if (mode === "receive") {
    await mkdir(path, { recursive: true });
    result = await receive({ relay, code, sink: fsSink(path), onEvent, token });
  } else {
    throw new P2PError("usage", "usage: cli-peer.mjs send|receive RELAY CODE PATH");
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(JSON.stringify({ ...result, seconds, mbps: result.bytes / 1e6 / seconds }));
  process.exit(0);
} catch (error) {
  if (error instanceof P2PError) {
    if (process.env.P2P_DEBUG) console.error(error.stack);
    console.error(`${error.kind}: ${error.message}`);
    process.exit(EXIT[error.kind] ?? 1);
  }
  console.error(error);
  process.exit(1);
}
