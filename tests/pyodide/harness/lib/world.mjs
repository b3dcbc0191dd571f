// workerd in miniature, around one booted Pyodide: a World is one deployment (env bindings from
// wrangler.jsonc, Durable Object storage, D1, R2) that tests drive from outside, the way the
// network and the runtime would:
//   * a request goes to a fresh `Default` entrypoint; a 101 response's WebSocket becomes a test
//     client connected to the object's end of the pair;
//   * a client's frame or close becomes webSocketMessage/webSocketClose on the object that
//     accepted the socket (rebuilding it if it was evicted), unless the auto-response answers it;
//   * objects can be evicted (hibernated) on request or after every event: the Python instance is
//     dropped, storage, sockets, attachments and the alarm stay, and the next event runs
//     `__init__` again with new JS objects for the same sockets;
//   * alarms run on request; background work (waitUntil) is awaited before an operation returns.
// Events run one at a time per World, in arrival order (workerd's input gate is looser for
// non-storage I/O: see docs/cloudflare.md §4.7).
import fs from "node:fs";
import path from "node:path";
import v8 from "node:v8";
import { D1Database } from "./d1.mjs";
import {
  DurableObjectNamespace,
  DurableObjectState,
  ObjectSlot,
} from "./durable-objects.mjs";
import { ExecutionContext, Request, Response } from "./http.mjs";
import { PY_INSTANCE } from "./python.mjs";
import { R2Bucket } from "./r2.mjs";
import { Generation, endpointOf, facadeFor } from "./websocket.mjs";
import { AnalyticsEngineDataset } from "./analytics.mjs";

const EVENT_TIMEOUT_MS = 30_000;
// CPU time of the main thread (Pyodide and the fakes), without V8's helper threads (Node 23.9+).
const cpuUsage = (previous) =>
  typeof process.threadCpuUsage === "function" ? process.threadCpuUsage(previous) : process.cpuUsage(previous);

/** wrangler.jsonc without its comments and trailing commas. */
export function readJsonc(file) {
  const text = fs.readFileSync(file, "utf8");
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
      out += "\n";
    } else if (c === "/" && text[i + 1] === "*") {
      i = text.indexOf("*/", i + 2) + 1;
    } else {
      out += c;
    }
  }
  return JSON.parse(out.replace(/,(\s*[}\]])/g, "$1"));
}

function toJson(value) {
  if (value instanceof ArrayBuffer) return { base64: Buffer.from(value).toString("base64") };
  if (value instanceof Uint8Array) return { base64: Buffer.from(value).toString("base64") };
  if (typeof value === "bigint") return Number(value);
  return value;
}

/** The static-assets binding (a Fetcher over public/). */
export class Fetcher {
  #dir;

  constructor(dir) {
    this.#dir = dir;
  }

  async fetch(input, init) {
    const request = new Request(input, init);
    let pathname = decodeURIComponent(new URL(request.url).pathname);
    if (pathname.endsWith("/")) pathname += "index.html";
    const file = path.resolve(this.#dir, `.${pathname}`);
    if (file.startsWith(path.resolve(this.#dir)) && fs.existsSync(file) && fs.statSync(file).isFile()) {
      const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
      const type = types[path.extname(file)] ?? "application/octet-stream";
      return new Response(new Uint8Array(fs.readFileSync(file)), { headers: { "content-type": type } });
    }
    return new Response("Not Found", { status: 404 });
  }
}

/** The far end of a WebSocket a test opened: records what the room sends. */
export class TestClient {
  constructor(world, id, ep, protocol) {
    this.world = world;
    this.id = id;
    this.ep = ep;
    this.protocol = protocol;
    this.frames = [];
    // A slow or unresponsive client: the room's close frame arrives, the answer does not (yet).
    this.holdCloses = false;
    this.heldClose = null;
    ep.setSink((event) => this.#receive(event));
  }

  #receive(event) {
    if (event.type === "message") {
      this.frames.push(
        typeof event.data === "string"
          ? { type: "text", data: event.data }
          : { type: "binary", base64: Buffer.from(event.data).toString("base64") },
      );
      return;
    }
    this.frames.push({ type: "close", code: event.code, reason: event.reason });
    this.ep.closedIncoming = true;
    if (this.holdCloses && !this.ep.closedOutgoing) {
      this.heldClose = event; // answered by answerClose()
      return;
    }
    if (!this.ep.closedOutgoing) {
      // Like a browser, answer a close frame with the same code.
      this.ep.closedOutgoing = true;
      this.ep.sendFromHere({ type: "close", code: event.code, reason: event.reason, wasClean: true });
    }
  }

  /** Send the close answer held back while `holdCloses` was on. */
  answerClose() {
    const event = this.heldClose;
    if (event === null) throw new Error(`client ${this.id} holds no close to answer`);
    this.heldClose = null;
    this.ep.closedOutgoing = true;
    this.ep.sendFromHere({ type: "close", code: event.code, reason: event.reason, wasClean: true });
  }

  send(data) {
    if (this.ep.closedOutgoing || this.ep.aborted) throw new Error(`client ${this.id} is closed`);
    this.ep.sendFromHere({ type: "message", data });
  }

  close(code, reason) {
    if (this.ep.closedOutgoing) throw new Error(`client ${this.id} already sent its close frame`);
    this.ep.closedOutgoing = true;
    this.ep.sendFromHere({ type: "close", code: code ?? 1005, reason: reason ?? "", wasClean: true });
  }

  drop() {
    this.ep.aborted = true;
    this.ep.closedOutgoing = true;
    this.ep.closedIncoming = true;
    this.ep.peer.deliver({
      type: "close",
      code: 1006,
      reason: "WebSocket disconnected without sending Close frame.",
      wasClean: false,
      aborted: true,
    });
  }

  /** The connection fails: the object gets webSocketError (local workerd delivered none, see
   * docs/cloudflare.md §8; production may), both ends are CLOSED. */
  fail() {
    for (const ep of [this.ep, this.ep.peer]) {
      ep.aborted = true;
      ep.closedOutgoing = true;
      ep.closedIncoming = true;
    }
    this.ep.peer.deliver({ type: "error", error: new Error("WebSocket connection failed") });
  }

  state() {
    return { readyState: this.ep.readyState, serverReadyState: this.ep.peer.readyState };
  }
}

export class World {
  constructor(runtime, id, config) {
    this.runtime = runtime;
    this.id = id;
    this.hibernateEveryEvent = Boolean(config.hibernateEveryEvent);
    this.idHasName = config.idHasName ?? true;
    this.slots = new Map();
    this.pending = [];
    this.errors = [];
    this.tail = Promise.resolve();
    this.stats = {};
    this.namespaces = {};
    this.env = this.#buildEnv(config);
  }

  #buildEnv(config) {
    const wrangler = readJsonc(this.runtime.paths.wrangler);
    const env = {};
    for (const binding of wrangler.durable_objects?.bindings ?? []) {
      const namespace = new DurableObjectNamespace(this, binding.class_name);
      this.namespaces[binding.name] = namespace;
      env[binding.name] = namespace;
    }
    for (const database of wrangler.d1_databases ?? []) {
      const d1 = new D1Database();
      if (config.migrations !== false) d1.applyMigrations(this.runtime.paths.migrations);
      env[database.binding] = d1;
      this.d1 ??= d1;
    }
    for (const bucket of wrangler.r2_buckets ?? []) {
      const r2 = new R2Bucket();
      env[bucket.binding] = r2;
      this.r2 ??= r2;
    }
    for (const dataset of wrangler.analytics_engine_datasets ?? []) {
      const ae = new AnalyticsEngineDataset();
      env[dataset.binding] = ae;
      this.analytics ??= ae;
    }
    if (wrangler.assets?.binding) {
      env[wrangler.assets.binding] = new Fetcher(path.resolve(path.dirname(this.runtime.paths.wrangler), wrangler.assets.directory));
    }
    for (const [name, value] of Object.entries({ ...(wrangler.vars ?? {}), ...(config.vars ?? {}) })) {
      if (value === null) delete env[name];
      else env[name] = value;
    }
    return env;
  }

  // ------------------------------------------------------------------------------ event queue

  enqueue(task) {
    const run = this.tail.then(() => task());
    this.tail = run.catch(() => {});
    return run;
  }

  async settle() {
    for (let round = 0; round < 10_000; round++) {
      const tail = this.tail;
      await tail;
      const pending = this.pending.splice(0);
      if (pending.length > 0) {
        for (const result of await Promise.allSettled(pending)) {
          if (result.status === "rejected") this.recordError("waitUntil", result.reason);
        }
      }
      if (tail === this.tail && this.pending.length === 0) return;
    }
    throw new Error("events kept arriving: the world never settled");
  }

  recordError(where, err) {
    const message = err instanceof Error ? err.message : String(err);
    this.errors.push({ where, name: err?.name ?? typeof err, message, stack: err?.stack ?? "" });
  }

  // ------------------------------------------------------------------------------ objects

  namespaceFor(binding = "ROOMS") {
    const namespace = this.namespaces[binding];
    if (namespace === undefined) throw new Error(`no Durable Object binding ${binding}`);
    return namespace;
  }

  slotFor(namespace, id) {
    const key = `${namespace.className}:${id.toString()}`;
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = new ObjectSlot(this, namespace, id);
      this.slots.set(key, slot);
    }
    return slot;
  }

  slotByName(name, binding = "ROOMS") {
    const namespace = this.namespaceFor(binding);
    return this.slotFor(namespace, namespace.idFromName(name));
  }

  instanceFor(slot) {
    if (slot.instance === null) {
      const EntryClass = this.runtime.durableObjectClass(slot.className);
      slot.gen = new Generation(`${slot.className} instance #${slot.constructions + 1}`);
      const ctx = new DurableObjectState(slot, slot.gen);
      slot.instance = new EntryClass(ctx, this.env);
      slot.constructions++;
    }
    return slot.instance;
  }

  evict(slot) {
    if (slot.instance === null) return false;
    const instance = slot.instance;
    slot.gen.evicted = true;
    slot.instance = null;
    slot.gen = null;
    instance[PY_INSTANCE].then((py) => py?.destroy?.()).catch(() => {});
    return true;
  }

  evictAll() {
    let count = 0;
    for (const slot of this.slots.values()) if (this.evict(slot)) count++;
    return count;
  }

  abort(slot) {
    slot.aborting = true;
  }

  /** Call a handler on the object, rebuilding it first if needed; args built for its instance. */
  async callObject(slot, method, makeArgs) {
    // Timed from before the instance is built: an evicted object's constructor (Room.__init__
    // through the SDK) is part of the event that wakes it.
    const cpu = cpuUsage();
    const started = performance.now();
    const instance = this.instanceFor(slot);
    const args = makeArgs(slot.gen);
    let timer;
    try {
      return await Promise.race([
        instance[method](...args),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${slot.className}.${method} did not finish in ${EVENT_TIMEOUT_MS} ms`)),
            EVENT_TIMEOUT_MS,
          );
        }),
      ]);
    } catch (err) {
      this.recordError(`${slot.className}.${method}`, err);
      if (slot.instance === instance) this.evict(slot); // a failed object is reset
      throw err;
    } finally {
      clearTimeout(timer);
      const used = cpuUsage(cpu);
      const entry = (this.stats[method] ??= { events: 0, cpu_us: 0, wall_ms: 0 });
      entry.events++;
      entry.cpu_us += used.user + used.system;
      entry.wall_ms += performance.now() - started;
      if (slot.aborting || this.hibernateEveryEvent) {
        slot.aborting = false;
        this.evict(slot);
      }
    }
  }

  async objectFetch(slot, request) {
    slot.requests.push({ method: request.method, url: request.url, headers: [...request.headers] });
    const response = await this.callObject(slot, "fetch", () => [request]);
    if (!(response instanceof globalThis.Response)) {
      throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
    }
    return response;
  }

  async objectRpc(slot, method, args) {
    return await this.callObject(slot, method, () => args);
  }

  /** A frame or close arriving at a socket that an object accepted for hibernation. */
  socketEvent(slot, ep, event) {
    this.enqueue(async () => {
      try {
        if (event.type === "message") {
          const pair = slot.autoResponse;
          if (pair !== null && typeof event.data === "string" && event.data === pair.request) {
            // Answered by the runtime without waking the object.
            slot.autoResponses++;
            ep.autoResponseTimestamp = new Date();
            if (!ep.closedOutgoing) ep.sendFromHere({ type: "message", data: pair.response });
            return;
          }
          if (ep.closedIncoming) return;
          await this.callObject(slot, "webSocketMessage", (gen) => [facadeFor(ep, gen), event.data]);
        } else if (event.type === "error") {
          try {
            await this.callObject(slot, "webSocketError", (gen) => [facadeFor(ep, gen), event.error]);
          } finally {
            ep.closeHandled = true;
          }
        } else if (event.type === "close") {
          ep.closedIncoming = true;
          if (event.aborted) ep.aborted = true;
          try {
            await this.callObject(slot, "webSocketClose", (gen) => [
              facadeFor(ep, gen),
              event.code,
              event.reason,
              event.wasClean,
            ]);
          } finally {
            ep.closeHandled = true; // no longer listed by getWebSockets()
          }
        }
      } catch {
        // recorded by callObject
      }
    });
  }

  // ------------------------------------------------------------------------------ outside in

  /** A request from the internet to the front Worker. */
  async frontFetch(spec) {
    return await this.enqueue(async () => {
      const init = { method: spec.method ?? "GET", headers: spec.headers ?? [], cf: { colo: "TST" } };
      if (spec.body !== undefined && spec.body !== null) init.body = spec.body;
      const request = new Request(spec.url, init);
      const ctx = new ExecutionContext(this.pending);
      const Default = this.runtime.defaultClass();
      const entrypoint = new Default(ctx, this.env);
      let response;
      const cpu = cpuUsage();
      const started = performance.now();
      try {
        response = await entrypoint.fetch(request);
        if (!(response instanceof globalThis.Response)) {
          throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
        }
      } catch (err) {
        this.recordError("Default.fetch", err);
        return { status: 500, headers: [], body: "", client: null, error: err.message };
      } finally {
        const used = cpuUsage(cpu);
        const entry = (this.stats["Default.fetch"] ??= { events: 0, cpu_us: 0, wall_ms: 0 });
        entry.events++;
        entry.cpu_us += used.user + used.system;
        entry.wall_ms += performance.now() - started;
      }
      const headers = [...response.headers];
      if (response.status === 101) {
        const ep = endpointOf(response.webSocket);
        const protocol = response.headers.get("sec-websocket-protocol");
        const client = this.runtime.newClient(this, ep, protocol);
        return { status: 101, headers, body: "", client: client.id };
      }
      return { status: response.status, headers, body: await response.text(), client: null };
    });
  }

  async alarm(slot) {
    return await this.enqueue(async () => {
      if (slot.alarm === null) return { ran: false, scheduled: null, error: null, next: null };
      const scheduled = slot.alarm;
      slot.alarm = null;
      const retryCount = slot.alarmRetries;
      try {
        await this.callObject(slot, "alarm", () => [{ retryCount, isRetry: retryCount > 0 }]);
        slot.alarmRetries = 0;
        return { ran: true, scheduled, error: null, next: slot.alarm };
      } catch (err) {
        slot.alarmRetries++;
        if (slot.alarm === null) slot.alarm = Date.now() + 1000 * 2 ** Math.min(slot.alarmRetries, 6);
        return { ran: true, scheduled, error: err.message, next: slot.alarm };
      }
    });
  }

  // ------------------------------------------------------------------------------ inspection

  info(slot) {
    return {
      constructions: slot.constructions,
      awake: slot.instance !== null,
      alarm: slot.alarm,
      alarm_sets: slot.alarmSets,
      requests: slot.requests, // what the object's fetch received
      auto_responses: slot.autoResponses,
      auto_response: slot.autoResponse,
      aborted_fetch_signals: slot.abortedSignals,
      sockets: [...slot.endpoints].map((ep) => ({
        tags: ep.tags,
        ready_state: ep.readyState,
        listed: !ep.closeHandled, // what getWebSockets() would return
        attachment: ep.attachment === null ? null : toJson(v8.deserialize(ep.attachment)),
      })),
    };
  }

  sql(slot, query, params = []) {
    return slot.db.internalAll(query, ...params).map((row) => {
      const out = {};
      for (const [key, value] of Object.entries(row)) out[key] = toJson(value);
      return out;
    });
  }
}
