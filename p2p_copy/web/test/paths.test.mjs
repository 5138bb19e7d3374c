// The receiver's path rules in JS give Python's verdicts (path-verdicts.json, written by
// tests/test_web_paths.py from p2p_copy.protocol.paths/policy) on one list of hostile
// manifests, and fold names into the same classes as Python's fold().
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { checkManifest, fold, displayName } from "../src/protocol/paths.js";

const data = JSON.parse(readFileSync(new URL("./path-verdicts.json", import.meta.url), "utf-8"));

function verdict(entries, windowsNames) {
  try {
    checkManifest(entries.map(([path, kind]) => ({ path, kind, size: 1, mode: 0o644 })), { windowsNames });
    return "ok";
  } catch (error) {
    return error.kind;
  }
}

test("every hostile manifest gets Python's verdict, with and without Windows names", () => {
  const wrong = [];
  for (const { entries, posix, windows } of data.cases) {
    const got = [verdict(entries, false), verdict(entries, true)];
    if (got[0] !== posix || got[1] !== windows) {
      wrong.push(`${JSON.stringify(entries)}: python ${posix}/${windows}, js ${got.join("/")}`);
    }
  }
  assert.deepEqual(wrong, []);
  assert.ok(data.cases.length > 500);
});

test("fold() puts names in the classes Python's fold() does, for every cased code point", () => {
  // Python's keys and ours may differ in spelling (Cherokee folds to upper case in Python):
  // what must agree is which strings share a key.
  const ours = new Map();   // python key -> our key
  const theirs = new Map(); // our key -> python key
  const wrong = [];
  const known = new Set(data.folds.map(([text]) => text));
  for (const [text, pythonKey] of data.folds) {
    const key = fold(text);
    for (const [map, from, to] of [[ours, pythonKey, key], [theirs, key, pythonKey]]) {
      if (map.has(from) && map.get(from) !== to) wrong.push(`${displayName(text)} (U+${text.codePointAt(0).toString(16)})`);
      map.set(from, to);
    }
  }
  assert.deepEqual(wrong, []);
  assert.ok(known.has("ß") && known.has("ẞ"));
});
