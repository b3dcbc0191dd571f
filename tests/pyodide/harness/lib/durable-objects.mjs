// Durable Objects as workerd presents them to JavaScript: the namespace binding and its stubs,
// DurableObjectId, and the per-instance DurableObjectState with its DurableObjectStorage (SQL,
// KV, alarms, transactions) and the WebSocket Hibernation API
// (src/workerd/api/actor-state.c++, sql.c++). Class names matter: the SDK wraps `ctx.storage`
// only because its constructor is named "DurableObjectStorage", and env bindings by name too.
import { createHash, randomBytes } from "node:crypto";
import v8 from "node:v8";
import { Request } from "./http.mjs";
import { SqlDatabase } from "./sql.mjs";
import {
  WebSocketRequestResponsePair,
  adoptFacade,
  endpointOf,
  facadeFor,
  isWebSocket,
} from "./websocket.mjs";

export const MAX_TAGS_PER_CONNECTION = 10;
export const MAX_TAG_LENGTH = 256;

export class DurableObjectId {
  #hex;
  #name;

  constructor(hex, name) {
    this.#hex = hex;
    this.#name = name;
  }

  toString() {
    return this.#hex;
  }

  equals(other) {
    return other instanceof DurableObjectId && other.toString() === this.#hex;
  }

  get name() {
    return this.#name;
  }
}

// ----------------------------------------------------------------------------------- SQL cursors

/** The cursor `sql.exec()` returns (JSG class `Cursor`; typed as SqlStorageCursor). */
export class Cursor {
  #columns;
  #rows;
  #index = 0;

  constructor(result) {
    this.#columns = result.columns;
    this.#rows = result.rows;
    this.rowsWritten = result.rowsWritten;
    this.rowsRead = result.rows.length; // real accounting is not emulated
  }

  #object(values) {
    const row = {}; // a plain object: python_from_rpc skips prototype-less ones
    this.#columns.forEach((name, i) => {
      row[name] = values[i];
    });
    return row;
  }

  #take() {
    return this.#index < this.#rows.length ? this.#rows[this.#index++] : undefined;
  }

  next() {
    const values = this.#take();
    return values === undefined ? { done: true, value: undefined } : { done: false, value: this.#object(values) };
  }

  [Symbol.iterator]() {
    return this;
  }

  toArray() {
    const out = [];
    for (let values = this.#take(); values !== undefined; values = this.#take()) {
      out.push(this.#object(values));
    }
    return out;
  }

  one() {
    const values = this.#take();
    if (values === undefined) {
      throw new Error("Expected exactly one result from SQL query, but got no results.");
    }
    if (this.#index < this.#rows.length) {
      this.#index = this.#rows.length;
      throw new Error("Expected exactly one result from SQL query, but got multiple results.");
    }
    return this.#object(values);
  }

  raw() {
    return new RawIterator(() => this.#take());
  }

  get columnNames() {
    return [...this.#columns];
  }
}

export class RawIterator {
  #take;

  constructor(take) {
    this.#take = take;
  }

  next() {
    const values = this.#take();
    return values === undefined ? { done: true, value: undefined } : { done: false, value: [...values] };
  }

  [Symbol.iterator]() {
    return this;
  }

  toArray() {
    const out = [];
    for (let values = this.#take(); values !== undefined; values = this.#take()) out.push([...values]);
    return out;
  }
}

export class SqlStorage {
  #db;

  constructor(db) {
    this.#db = db;
  }

  exec(query, ...bindings) {
    return new Cursor(this.#db.exec(query, bindings));
  }

  get databaseSize() {
    return this.#db.sizeBytes();
  }
}

// ----------------------------------------------------------------------------------- storage

const KV_TABLE = "CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID";

function serialize(value) {
  if (value === undefined) throw new TypeError("put() called with undefined value.");
  structuredClone(value); // DataCloneError for PyProxies, as workerd's serializer
  return v8.serialize(value);
}

function toMillis(time) {
  const ms = time instanceof Date ? time.getTime() : Number(time);
  if (!Number.isFinite(ms)) {
    throw new TypeError("Failed to execute 'setAlarm' on 'DurableObjectStorage': parameter 1 is not of type 'date'.");
  }
  return ms;
}

export class DurableObjectStorage {
  #slot;
  #sql;
  #depth = 0;

  constructor(slot) {
    this.#slot = slot;
    this.#sql = new SqlStorage(slot.db);
    this.kv = this.#makeSyncKv();
  }

  get sql() {
    return this.#sql;
  }

  transactionSync(closure) {
    if (typeof closure !== "function") {
      throw new TypeError("Failed to execute 'transactionSync' on 'DurableObjectStorage': parameter 1 is not of type 'Function'.");
    }
    const db = this.#slot.db;
    const name = `_cf_sync_savepoint_${this.#depth}`;
    db.internalExec(`SAVEPOINT ${name}`);
    this.#depth++;
    try {
      const result = closure();
      this.#depth--;
      db.internalExec(`RELEASE ${name}`);
      return result;
    } catch (err) {
      this.#depth--;
      db.internalExec(`ROLLBACK TO ${name}`);
      db.internalExec(`RELEASE ${name}`);
      throw err;
    }
  }

  async transaction(closure) {
    const db = this.#slot.db;
    const name = `_cf_async_txn_${this.#depth}`;
    db.internalExec(`SAVEPOINT ${name}`);
    this.#depth++;
    try {
      const result = await closure(this);
      this.#depth--;
      db.internalExec(`RELEASE ${name}`);
      return result;
    } catch (err) {
      this.#depth--;
      db.internalExec(`ROLLBACK TO ${name}`);
      db.internalExec(`RELEASE ${name}`);
      throw err;
    }
  }

  #kvGet(key) {
    this.#slot.db.internalExec(KV_TABLE);
    const row = this.#slot.db.internalAll("SELECT value FROM _cf_KV WHERE key = ?", String(key))[0];
    return row === undefined ? undefined : v8.deserialize(Buffer.from(row.value));
  }

  #kvPut(key, value) {
    this.#slot.db.internalExec(KV_TABLE);
    this.#slot.db.internalRun(
      "INSERT INTO _cf_KV (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      String(key),
      serialize(value),
    );
  }

  #kvDelete(key) {
    this.#slot.db.internalExec(KV_TABLE);
    return this.#slot.db.internalRun("DELETE FROM _cf_KV WHERE key = ?", String(key)).changes > 0;
  }

  #kvList(options = {}) {
    this.#slot.db.internalExec(KV_TABLE);
    const where = [];
    const params = [];
    if (options.prefix !== undefined) {
      where.push("substr(key, 1, ?) = ?");
      params.push(String(options.prefix).length, String(options.prefix));
    }
    if (options.start !== undefined) { where.push("key >= ?"); params.push(String(options.start)); }
    if (options.startAfter !== undefined) { where.push("key > ?"); params.push(String(options.startAfter)); }
    if (options.end !== undefined) { where.push("key < ?"); params.push(String(options.end)); }
    let sql = "SELECT key, value FROM _cf_KV";
    if (where.length) sql += ` WHERE ${where.join(" AND ")}`;
    sql += ` ORDER BY key ${options.reverse ? "DESC" : "ASC"}`;
    if (options.limit !== undefined) {
      if (!(options.limit > 0)) throw new TypeError("List limit must be positive.");
      sql += " LIMIT ?";
      params.push(Number(options.limit));
    }
    const out = new Map();
    for (const row of this.#slot.db.internalAll(sql, ...params)) {
      out.set(row.key, v8.deserialize(Buffer.from(row.value)));
    }
    return out;
  }

  #makeSyncKv() {
    return {
      get: (key) => this.#kvGet(key),
      put: (key, value) => this.#kvPut(key, value),
      delete: (key) => this.#kvDelete(key),
      list: (options) => this.#kvList(options ?? {}).entries(),
    };
  }

  async get(keys) {
    if (Array.isArray(keys)) {
      const out = new Map();
      for (const key of keys) {
        const value = this.#kvGet(key);
        if (value !== undefined) out.set(String(key), value);
      }
      return out;
    }
    return this.#kvGet(keys);
  }

  async put(keyOrEntries, value) {
    if (typeof keyOrEntries === "object" && keyOrEntries !== null) {
      for (const [key, item] of Object.entries(keyOrEntries)) this.#kvPut(key, item);
      return;
    }
    this.#kvPut(keyOrEntries, value);
  }

  async delete(keys) {
    if (Array.isArray(keys)) return keys.filter((key) => this.#kvDelete(key)).length;
    return this.#kvDelete(keys);
  }

  async list(options) {
    return this.#kvList(options ?? {});
  }

  async deleteAll() {
    const db = this.#slot.db;
    for (const { name } of db.internalAll("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")) {
      db.internalExec(`DROP TABLE IF EXISTS "${name.replaceAll('"', '""')}"`);
    }
    this.#slot.alarm = null; // from compat 2026-02-24, deleteAll() removes the alarm too
  }

  async getAlarm() {
    return this.#slot.alarm;
  }

  async setAlarm(scheduledTime) {
    const ms = toMillis(scheduledTime);
    if (!(ms > 0)) throw new TypeError("setAlarm() cannot be called with an alarm time <= 0");
    // workerd moves a time in the past to now (actor-state.c++ setAlarm), so it fires at once:
    // epoch seconds passed for milliseconds (a date in January 1970) become "now".
    this.#slot.alarm = Math.max(ms, Date.now());
    this.#slot.alarmSets++;
  }

  async deleteAlarm() {
    this.#slot.alarm = null;
  }

  async sync() {}

  get [Symbol.toStringTag]() {
    return "DurableObjectStorage";
  }
}

// ----------------------------------------------------------------------------------- state

export class DurableObjectState {
  #slot;
  #gen;

  constructor(slot, gen) {
    this.#slot = slot;
    this.#gen = gen;
    this.id = slot.id;
    this.storage = new DurableObjectStorage(slot);
  }

  waitUntil(promise) {
    this.#slot.world.pending.push(Promise.resolve(promise));
  }

  async blockConcurrencyWhile(callback) {
    return await callback();
  }

  abort(reason) {
    this.#slot.world.abort(this.#slot, reason);
    throw new Error(reason === undefined ? "Application called abort() to reset Durable Object." : String(reason));
  }

  acceptWebSocket(ws, tags) {
    if (!isWebSocket(ws)) {
      throw new TypeError(
        "Failed to execute 'acceptWebSocket' on 'DurableObjectState': parameter 1 is not of type 'WebSocket'.",
      );
    }
    if (tags !== undefined && !Array.isArray(tags)) {
      // jsg converts kj::Array<kj::String> only from a real JS Array: a PyProxy of a list is not.
      throw new TypeError(
        "Failed to execute 'acceptWebSocket' on 'DurableObjectState': parameter 2 is not of type 'Array'.",
      );
    }
    const ep = endpointOf(ws);
    if (ep.state === "accepted") {
      throw new Error("Cannot call `acceptWebSocket()` if the WebSocket was already accepted via `accept()`");
    }
    if (ep.peer.state !== "awaiting") {
      throw new Error(
        "Cannot call `acceptWebSocket()` on this WebSocket because its pair has already been " +
          "accepted or used in a Response.",
      );
    }
    const distinct = [];
    for (const raw of tags ?? []) {
      const tag = String(raw);
      if (distinct.length >= MAX_TAGS_PER_CONNECTION) {
        throw new Error(`a Hibernatable WebSocket cannot have more than ${MAX_TAGS_PER_CONNECTION} tags`);
      }
      // workerd counts UTF-8 bytes, although its message says characters (measured:
      // tests/workerd/test_probes.py).
      if (Buffer.byteLength(tag, "utf8") > MAX_TAG_LENGTH) {
        throw new Error(`"${tag}" is longer than the max tag length (${MAX_TAG_LENGTH} characters).`);
      }
      if (!distinct.includes(tag)) distinct.push(tag);
    }
    ep.state = "accepted";
    ep.hibernatable = true;
    ep.owner = this.#slot;
    ep.tags = distinct;
    this.#slot.endpoints.add(ep);
    adoptFacade(ws, this.#gen);
    const world = this.#slot.world;
    const slot = this.#slot;
    ep.setSink((event) => world.socketEvent(slot, ep, event));
  }

  getWebSockets(tag) {
    const out = [];
    // workerd lists a socket until its webSocketClose handler has returned: CLOSING ones the
    // object closed (until the client's close arrives), and the closing socket itself during its
    // own close event, CLOSED or not (measured: tests/workerd/test_probes.py).
    for (const ep of this.#slot.endpoints) {
      if (ep.closeHandled) continue;
      if (tag !== undefined && tag !== null && !ep.tags.includes(String(tag))) continue;
      out.push(facadeFor(ep, this.#gen));
    }
    return out;
  }

  getTags(ws) {
    const ep = endpointOf(ws);
    if (!ep.hibernatable) {
      throw new Error(
        "you must call 'acceptWebSocket()' before attempting to access the tags of a WebSocket.",
      );
    }
    return [...ep.tags];
  }

  setWebSocketAutoResponse(pair) {
    if (pair === undefined) {
      this.#slot.autoResponse = null;
      return;
    }
    if (!(pair instanceof WebSocketRequestResponsePair)) {
      throw new TypeError(
        "Failed to execute 'setWebSocketAutoResponse' on 'DurableObjectState': parameter 1 is " +
          "not of type 'WebSocketRequestResponsePair'.",
      );
    }
    for (const [label, text] of [["Request", pair.request], ["Response", pair.response]]) {
      const size = Buffer.byteLength(text, "utf8");
      if (size > 2048) {
        throw new RangeError(
          `${label} cannot be larger than 2048 bytes. A ${label.toLowerCase()} of size ${size} was provided.`,
        );
      }
    }
    this.#slot.autoResponse = { request: pair.request, response: pair.response };
  }

  getWebSocketAutoResponse() {
    const pair = this.#slot.autoResponse;
    return pair === null ? null : new WebSocketRequestResponsePair(pair.request, pair.response);
  }

  getWebSocketAutoResponseTimestamp(ws) {
    return endpointOf(ws).autoResponseTimestamp;
  }

  setHibernatableWebSocketEventTimeout(timeoutMs) {
    if (timeoutMs !== undefined && timeoutMs > 604800 * 1000) {
      throw new Error("Event timeout should not exceed 604800000 ms.");
    }
    this.#slot.eventTimeout = timeoutMs || null;
  }

  getHibernatableWebSocketEventTimeout() {
    return this.#slot.eventTimeout;
  }

  get [Symbol.toStringTag]() {
    return "DurableObjectState";
  }
}

// ----------------------------------------------------------------------------------- namespace

/** Everything that outlives one instance of an object: storage, sockets, alarm. */
export class ObjectSlot {
  constructor(world, namespace, id) {
    this.world = world;
    this.namespace = namespace;
    this.className = namespace.className;
    this.id = id;
    this.db = new SqlDatabase();
    this.endpoints = new Set();
    this.autoResponse = null;
    this.autoResponses = 0;
    this.eventTimeout = null;
    this.alarm = null;
    this.alarmSets = 0; // setAlarm calls
    this.alarmRetries = 0;
    this.requests = []; // what the object's fetch received (method, url, headers)
    this.instance = null; // the JS entrypoint object (a Proxy) while awake
    this.gen = null;
    this.constructions = 0;
    this.abortedSignals = 0;
  }
}

function stubClass() {
  // workerd's stub for a Durable Object is a JS class named "DurableObject".
  return class DurableObject {
    #slot;

    constructor(slot) {
      this.#slot = slot;
      return new Proxy(this, {
        get(target, prop, receiver) {
          if (typeof prop !== "string" || prop === "constructor") return Reflect.get(target, prop, receiver);
          if (prop === "fetch") return (input, init) => target.#fetch(input, init);
          if (prop === "id") return slot.id;
          if (prop === "name") return slot.id.name;
          if (prop === "then") return undefined;
          // Any other name is an RPC method; arguments and results are structured clones.
          return async (...args) => {
            const result = await slot.world.objectRpc(slot, prop, structuredClone(args));
            return structuredClone(result);
          };
        },
      });
    }

    async #fetch(input, init) {
      const request = new Request(input, init);
      const signal = init?.signal;
      if (signal && typeof signal.addEventListener === "function") {
        signal.addEventListener("abort", () => {
          this.#slot.abortedSignals++;
        });
      }
      // The request crosses into the object as a copy.
      const body = request.body === null ? null : await request.arrayBuffer();
      const copy = new Request(request.url, {
        method: request.method,
        headers: request.headers,
        body,
        cf: request.cf,
      });
      return await this.#slot.world.objectFetch(this.#slot, copy);
    }
  };
}

const StubClass = stubClass();

export class DurableObjectNamespace {
  #world;

  constructor(world, className) {
    this.#world = world;
    this.className = className;
  }

  idFromName(name) {
    const text = String(name);
    const hex = createHash("sha256").update(`${this.className}\0${text}`).digest("hex");
    return new DurableObjectId(hex, this.#world.idHasName ? text : undefined);
  }

  newUniqueId() {
    return new DurableObjectId(randomBytes(32).toString("hex"), undefined);
  }

  idFromString(hex) {
    if (!/^[0-9a-f]{64}$/.test(String(hex))) throw new TypeError("Invalid Durable Object ID: must be 64 hex digits");
    return new DurableObjectId(String(hex), undefined);
  }

  get(id) {
    if (!(id instanceof DurableObjectId)) {
      throw new TypeError("Failed to execute 'get' on 'DurableObjectNamespace': parameter 1 is not of type 'DurableObjectId'.");
    }
    return new StubClass(this.#world.slotFor(this, id));
  }

  getByName(name) {
    return this.get(this.idFromName(name));
  }

  jurisdiction() {
    return this;
  }
}
