// The Pyodide test harness as a long-lived process: one JSON request per stdin line, one JSON
// reply per stdout line (tests/pyodide/harness_client.py speaks this). Pyodide boots once per
// process; every test gets its own World (bindings, objects, D1, R2) inside it, as one isolate
// serves many requests in production.
//
//   node server.mjs --src DIR --python-modules DIR --cache DIR [--no-snapshot]
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { takeWarnings } from "./lib/diagnostics.mjs";
import { blockedFetch, Request, Response } from "./lib/http.mjs";
import {
  COMPAT_FLAGS,
  DurableObject,
  RpcTarget,
  WorkerEntrypoint,
  WorkflowEntrypoint,
  bootPython,
  compatFlagsObject,
  makeEntrypointClass,
  makeHelper,
} from "./lib/python.mjs";
import { DurableObjectState } from "./lib/durable-objects.mjs";
import { D1Database, D1PreparedStatement } from "./lib/d1.mjs";
import { R2Bucket } from "./lib/r2.mjs";
import { TestClient, World } from "./lib/world.mjs";
import {
  Endpoint,
  Generation,
  WebSocket,
  WebSocketPair,
  WebSocketRequestResponsePair,
  endpointOf,
} from "./lib/websocket.mjs";

// stdout is the protocol channel: everything else goes to stderr.
console.log = (...args) => console.error(...args);
console.info = console.log;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../../..");

function option(name, fallback) {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : fallback;
}

class Runtime {
  constructor() {
    this.paths = {
      src: path.resolve(option("--src", path.join(ROOT, "src"))),
      pythonModules: path.resolve(option("--python-modules", path.join(ROOT, ".cache/pyodide/python_modules"))),
      cache: path.resolve(option("--cache", path.join(ROOT, ".cache/pyodide"))),
      wrangler: path.resolve(option("--wrangler", path.join(ROOT, "wrangler.jsonc"))),
      migrations: path.resolve(option("--migrations", path.join(ROOT, "migrations"))),
      indexURL: path.join(HERE, "node_modules/pyodide") + path.sep,
      support: path.join(HERE, "py"),
    };
    this.snapshot = !process.argv.includes("--no-snapshot");
    this.worlds = new Map();
    this.clients = new Map();
    this.nextWorld = 1;
    this.nextClient = 1;
    this.logs = [];
    this.python = null;
    this.entryClasses = new Map();
    this.workersModule = { DurableObject, WorkerEntrypoint, WorkflowEntrypoint, RpcTarget, env: {}, waitUntil() {} };
    this.socketsModule = {
      connect() {
        throw new Error("cloudflare:sockets connect() is not available in the test harness");
      },
    };
  }

  async boot() {
    const jsglobals = Object.create(globalThis);
    Object.assign(jsglobals, {
      Response,
      Request,
      WebSocket,
      WebSocketPair,
      WebSocketRequestResponsePair,
      fetch: blockedFetch,
    });
    const started = performance.now();
    this.python = await bootPython({
      indexURL: this.paths.indexURL,
      cacheDir: this.paths.cache,
      pythonModulesDir: this.paths.pythonModules,
      srcDir: this.paths.src,
      supportDir: this.paths.support,
      mainModule: "worker",
      jsglobals,
      helper: makeHelper(this.workersModule, this.socketsModule),
      compatFlags: compatFlagsObject(COMPAT_FLAGS),
      stdout: (line) => this.logs.push(line),
      stderr: (line) => {
        this.logs.push(line);
        process.stderr.write(`[python stderr] ${line}\n`);
      },
      snapshot: this.snapshot,
    });
    const { classes } = this.python;
    for (const info of classes.durableObjects) {
      this.entryClasses.set(
        info.className,
        makeEntrypointClass(this.python, info.className, DurableObject, info.methodNames),
      );
    }
    const defaults = classes.workerEntrypoints.filter((info) => info.className === "Default");
    if (defaults.length === 1) {
      this.default = makeEntrypointClass(this.python, "Default", WorkerEntrypoint, defaults[0].methodNames);
    }
    const pyodide = this.python.pyodide;
    return {
      pyodide: pyodide.version,
      python: pyodide.runPython("import sys; sys.version"),
      node: process.versions.node,
      jspi: typeof WebAssembly.Suspending === "function",
      snapshot: this.python.snapshot,
      timings: { ...this.python.timings, total_ms: Math.round(performance.now() - started) },
      classes,
      src: this.paths.src,
    };
  }

  durableObjectClass(name) {
    const cls = this.entryClasses.get(name);
    if (cls === undefined) {
      throw new Error(`The main module exports no Durable Object class named ${name} (wrangler.jsonc binds it)`);
    }
    return cls;
  }

  defaultClass() {
    if (this.default === undefined) throw new Error("The main module exports no `Default` WorkerEntrypoint");
    return this.default;
  }

  newWorld(config) {
    const world = new World(this, this.nextWorld++, config);
    this.worlds.set(world.id, world);
    this.workersModule.env = world.env;
    return world;
  }

  newClient(world, ep, protocol) {
    const client = new TestClient(world, this.nextClient++, ep, protocol);
    this.clients.set(client.id, client);
    return client;
  }

  world(id) {
    const world = this.worlds.get(id);
    if (world === undefined) throw new Error(`no world ${id}`);
    return world;
  }

  client(id) {
    const client = this.clients.get(id);
    if (client === undefined) throw new Error(`no client ${id}`);
    return client;
  }

  takeFailures() {
    return JSON.parse(this.python.support.take_failures());
  }

  /** The object a probe's `main(h)` receives. */
  probeHelpers() {
    const runtime = this;
    const scratch = this.newWorld({ migrations: true });
    return {
      world: scratch,
      /** A fresh DurableObjectState (ctx) and env, as workerd passes to a constructor. */
      newObjectState(name) {
        const slot = scratch.slotByName(name);
        slot.gen = new Generation(`probe object ${name}`);
        return new DurableObjectState(slot, slot.gen);
      },
      /** Evict the probe object: its WebSocket objects die, as after hibernation. */
      evictObjectState(name) {
        const slot = scratch.slotByName(name);
        if (slot.gen !== null) slot.gen.evicted = true;
        slot.gen = null;
      },
      env: scratch.env,
      takeWarnings: () => takeWarnings(),
      /** Record what arrives at the far end of `ws` (a WebSocket of a pair). */
      recorder(ws) {
        const frames = [];
        endpointOf(ws).setSink((event) => frames.push(event));
        return frames;
      },
      endpointState(ws) {
        const ep = endpointOf(ws);
        return { readyState: ep.readyState, state: ep.state, hibernatable: ep.hibernatable, tags: ep.tags };
      },
      serializedAttachmentSize(ws) {
        const ep = endpointOf(ws);
        return ep.attachment === null ? 0 : ep.attachment.length;
      },
      /** What JavaScript sees: "undefined", "null", "Array", "Map", "Object", "PyProxy", ... */
      jsKind(value) {
        if (value === undefined) return "undefined";
        if (value === null) return "null";
        if (Array.isArray(value)) return "Array";
        if (typeof value !== "object" && typeof value !== "function") return typeof value;
        if (runtime.python.pyodide.ffi.PyProxy && value instanceof runtime.python.pyodide.ffi.PyProxy) return "PyProxy";
        return value.constructor?.name ?? "Object(null prototype)";
      },
      D1Database,
      D1PreparedStatement,
      R2Bucket,
      Endpoint,
      runtime,
    };
  }
}

const runtime = new Runtime();

function worldOf(args) {
  return runtime.world(args.world);
}

const ops = {
  boot: async () => await runtime.boot(),
  "world.new": async (args) => ({ world: runtime.newWorld(args).id }),
  "world.set": async (args) => {
    const world = worldOf(args);
    if (args.hibernateEveryEvent !== undefined) world.hibernateEveryEvent = Boolean(args.hibernateEveryEvent);
    return {};
  },
  fetch: async (args) => {
    const world = worldOf(args);
    const result = await world.frontFetch(args);
    await world.settle();
    return result;
  },
  "ws.send": async (args) => {
    const client = runtime.client(args.client);
    for (const frame of args.frames) {
      client.send(frame.text !== undefined ? frame.text : new Uint8Array(Buffer.from(frame.base64, "base64")).buffer);
    }
    await client.world.settle();
    return {};
  },
  "ws.close": async (args) => {
    const client = runtime.client(args.client);
    client.close(args.code, args.reason);
    await client.world.settle();
    return {};
  },
  "ws.holdCloses": async (args) => {
    runtime.client(args.client).holdCloses = Boolean(args.hold);
    return {};
  },
  "ws.answerClose": async (args) => {
    const client = runtime.client(args.client);
    client.answerClose();
    await client.world.settle();
    return {};
  },
  "ws.drop": async (args) => {
    const client = runtime.client(args.client);
    client.drop();
    await client.world.settle();
    return {};
  },
  "ws.fail": async (args) => {
    const client = runtime.client(args.client);
    client.fail();
    await client.world.settle();
    return {};
  },
  "ws.failAttachmentWrites": async (args) => {
    const server = runtime.client(args.client).ep.peer;
    server.failAttachmentWrites = args.count ?? 1;
    server.failMessage = args.message ?? "attachment write failed";
    return {};
  },
  "ws.frames": async (args) => {
    const client = runtime.client(args.client);
    return { frames: client.frames.splice(0), ...client.state(), protocol: client.protocol };
  },
  "do.evict": async (args) => {
    const world = worldOf(args);
    await world.settle();
    if (args.room === undefined || args.room === null) return { evicted: world.evictAll() };
    return { evicted: world.evict(world.slotByName(args.room)) ? 1 : 0 };
  },
  "do.info": async (args) => {
    const world = worldOf(args);
    return world.info(world.slotByName(args.room));
  },
  "do.sql": async (args) => {
    const world = worldOf(args);
    return world.sql(world.slotByName(args.room), args.sql, args.params ?? []);
  },
  "do.alarm": async (args) => {
    const world = worldOf(args);
    const result = await world.alarm(world.slotByName(args.room));
    await world.settle();
    return result;
  },
  "do.setAlarm": async (args) => {
    const world = worldOf(args);
    world.slotByName(args.room).alarm = args.at;
    return {};
  },
  "do.failSql": async (args) => {
    const world = worldOf(args);
    world.slotByName(args.room).db.failures.push({
      match: args.match,
      count: args.count ?? 1,
      message: args.message ?? "database or disk is full: SQLITE_FULL",
    });
    return {};
  },
  "d1.query": async (args) => worldOf(args).d1.inspect(args.sql, args.params ?? []),
  "r2.list": async (args) => {
    const world = worldOf(args);
    return [...world.r2.objects.values()]
      .filter((o) => o.key.startsWith(args.prefix ?? ""))
      .map((o) => ({ key: o.key, size: o.data.length, base64: Buffer.from(o.data).toString("base64") }));
  },
  "r2.fail": async (args) => {
    const r2 = worldOf(args).r2;
    r2.failPuts = args.puts ?? 0;
    r2.failGets = args.gets ?? 0;
    return {};
  },
  "r2.puts": async (args) => worldOf(args).r2.puts,
  "analytics.points": async (args) => {
    const dataset = worldOf(args).analytics;
    return dataset ? dataset.points.splice(0) : null;
  },
  "d1.failBatches": async (args) => {
    worldOf(args).d1.failBatches = args.count ?? 1;
    return {};
  },
  "diag.take": async (args) => {
    const world = args.world ? worldOf(args) : null;
    return {
      warnings: takeWarnings(),
      errors: world ? world.errors.splice(0) : [],
      failures: runtime.takeFailures(),
      logs: runtime.logs.splice(0),
    };
  },
  stats: async (args) => {
    const world = worldOf(args);
    const stats = world.stats;
    if (args.reset) world.stats = {};
    return stats;
  },
  "py.probe": async (args) => {
    const helpers = runtime.probeHelpers();
    const result = await runtime.python.support.run_probe.callPromising(args.code, helpers);
    await helpers.world.settle();
    return JSON.parse(result);
  },
  "py.entropy": async (args) =>
    JSON.parse(runtime.python.support.import_under_entropy_guard(args.root ?? "/session/metadata")),
  "py.run": async (args) => {
    // A Python expression's value as JSON (for inspection in tests).
    const result = await runtime.python.pyodide.runPythonAsync(
      `import json\njson.dumps(${args.expression})`,
    );
    return JSON.parse(result);
  },
};

function errorInfo(err) {
  if (err instanceof Error) {
    return { name: err.name, message: err.message, stack: err.stack ?? "", type: err.type ?? null };
  }
  return { name: typeof err, message: String(err), stack: "", type: null };
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let queue = Promise.resolve();
input.on("line", (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let request;
    try {
      request = JSON.parse(line);
    } catch (err) {
      process.stdout.write(`${JSON.stringify({ id: null, ok: false, error: errorInfo(err) })}\n`);
      return;
    }
    if (request.op === "shutdown") {
      process.stdout.write(`${JSON.stringify({ id: request.id, ok: true, result: {} })}\n`);
      process.exit(0);
    }
    const handler = ops[request.op];
    let reply;
    try {
      if (handler === undefined) throw new Error(`unknown op ${request.op}`);
      if (runtime.python === null && request.op !== "boot") throw new Error("boot first");
      reply = { id: request.id, ok: true, result: (await handler(request.args ?? {})) ?? null };
    } catch (err) {
      reply = { id: request.id, ok: false, error: errorInfo(err) };
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`);
  });
});
input.on("close", () => process.exit(0));
