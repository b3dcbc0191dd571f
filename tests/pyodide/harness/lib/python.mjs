// Booting Pyodide the way workerd's python-entrypoint-helper.ts does, and turning the Worker's
// Python classes into JS classes (docs/cloudflare.md §1):
//   * the user tree is mounted at /session/metadata, vendored packages at
//     /session/metadata/python_modules (before site-packages on sys.path, .pth files processed);
//   * `_pyodide_entrypoint_helper` and `_cloudflare_compat_flags` are registered as modules;
//   * the main module is imported with JSPI (callPromising), so run_sync works at import time;
//   * one JS class per exported Python class: its constructor calls the Python class with the raw
//     (ctx, env) and returns a Proxy whose every string property is an async dispatcher.
// Boot cost is cut with a memory snapshot of the bare interpreter (taken once, cached) and with
// .pyc files written next to the vendored packages (a NODEFS mount of the cache).
import fs from "node:fs";
import path from "node:path";
import { loadPyodide, version as pyodideVersion } from "pyodide";

// Compatibility flags in force for compatibility_date 2026-11-01 with `python_workers`
// (docs/cloudflare.md §1.8). workerd exposes every enable-flag; these are the ones the
// SDK and our code can observe.
export const COMPAT_FLAGS = {
  python_workers: true,
  python_no_global_handlers: true,
  python_workers_force_new_vendor_path: true,
  python_workflows: true,
  python_dedicated_snapshot: true,
  python_check_rng_state: true,
  python_request_headers_preserve_commas: true,
  python_workflows_implicit_dependencies: true,
  enable_python_external_sdk: true,
  web_socket_auto_reply_to_close: true,
  python_process_pth_files: true,
  experimental: false,
};

export function compatFlagsObject(flags = COMPAT_FLAGS) {
  const object = Object.create(null);
  for (const [name, value] of Object.entries(flags)) object[name] = value;
  return Object.seal(object);
}

// The JS base classes that `cloudflare:workers` exports.
export class DurableObject {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export class WorkerEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export class WorkflowEntrypoint {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.env = env;
  }
}

export class RpcTarget {}

const waitUntilPatched = new WeakSet();

/** workerd's patchWaitUntil: only for an ExecutionContext; keeps Python futures alive. */
function patchWaitUntil(ctx) {
  let tag;
  try {
    tag = Object.prototype.toString.call(ctx);
  } catch {
    return;
  }
  if (tag !== "[object ExecutionContext]" || waitUntilPatched.has(ctx)) return;
  const original = ctx.waitUntil.bind(ctx);
  ctx.waitUntil = (promise) => {
    original(
      (async () => {
        let p = promise;
        if (p && typeof p === "object" && "copy" in p) p = p.copy();
        await p;
        if (p && typeof p === "object" && "destroy" in p) p.destroy();
      })(),
    );
  };
  waitUntilPatched.add(ctx);
}

function copyTree(FS, from, to) {
  FS.mkdirTree(to);
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    if (entry.name === "__pycache__" || entry.name.endsWith(".pyc")) continue;
    const source = path.join(from, entry.name);
    const target = `${to}/${entry.name}`;
    if (entry.isDirectory()) copyTree(FS, source, target);
    else if (entry.isFile()) FS.writeFile(target, new Uint8Array(fs.readFileSync(source)));
  }
}

function writeAtomic(file, data) {
  const temp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temp, data);
  fs.renameSync(temp, file);
}

const SEARCH_PATH = `
import sys
from site import addsitedir

SESSION = "/session/metadata"
PYTHON_MODULES = "/session/metadata/python_modules"
if "" in sys.path:
    sys.path.remove("")
if SESSION in sys.path:
    sys.path.remove(SESSION)
sys.path.insert(0, SESSION)
for index, entry in enumerate(sys.path):
    if "site-packages" in entry:
        sys.path.insert(index, PYTHON_MODULES)
        break
else:
    raise ValueError("No site-packages found in sys.path")
if PROCESS_PTH_FILES:
    addsitedir(PYTHON_MODULES)
sys.path.append("/harness")
# Bytecode goes next to the vendored packages (a cache on the host); the Worker's own tree is
# in memory, so its .pyc files vanish with the process.
sys.dont_write_bytecode = not WRITE_BYTECODE
`;

/**
 * Boot Pyodide with the Worker loaded. Returns the pieces the runtime needs.
 * options: { indexURL, cacheDir, pythonModulesDir, srcDir, supportDir, mainModule, jsglobals,
 *            helper, stdout, stderr, snapshot }
 */
export async function bootPython(options) {
  const timings = {};
  const mark = (name, started) => {
    timings[name] = Math.round((performance.now() - started) * 10) / 10;
  };
  let started = performance.now();
  const snapshotFile = path.join(
    options.cacheDir,
    `snapshot-pyodide-${pyodideVersion}-node-${process.versions.node}.bin`,
  );
  const common = {
    indexURL: options.indexURL,
    jsglobals: options.jsglobals,
    stdout: options.stdout,
    stderr: options.stderr,
    env: { HOME: "/home/pyodide" },
  };
  let pyodide;
  let snapshot = "none";
  if (options.snapshot && fs.existsSync(snapshotFile)) {
    pyodide = await loadPyodide({ ...common, _loadSnapshot: new Uint8Array(fs.readFileSync(snapshotFile)) });
    snapshot = "restored";
  } else if (options.snapshot) {
    pyodide = await loadPyodide({ ...common, _makeSnapshot: true });
    fs.mkdirSync(options.cacheDir, { recursive: true });
    writeAtomic(snapshotFile, pyodide.makeMemorySnapshot());
    snapshot = "created";
  } else {
    pyodide = await loadPyodide(common);
  }
  mark("load_pyodide_ms", started);
  pyodide.setStdout({ batched: options.stdout });
  pyodide.setStderr({ batched: options.stderr });

  started = performance.now();
  const FS = pyodide.FS;
  copyTree(FS, options.srcDir, "/session/metadata");
  FS.mkdirTree("/session/metadata/python_modules");
  FS.mount(FS.filesystems.NODEFS, { root: options.pythonModulesDir }, "/session/metadata/python_modules");
  copyTree(FS, options.supportDir, "/harness");
  pyodide.loadPackage = () => {
    throw new Error("pyodide.loadPackage is disabled");
  };
  pyodide.registerJsModule("_pyodide_entrypoint_helper", options.helper);
  pyodide.registerJsModule("_cloudflare_compat_flags", options.compatFlags);
  const globals = pyodide.toPy({
    PROCESS_PTH_FILES: Boolean(options.compatFlags.python_process_pth_files),
    WRITE_BYTECODE: true,
  });
  pyodide.runPython(SEARCH_PATH, { globals });
  globals.destroy();
  mark("layout_ms", started);

  started = performance.now();
  const importlib = pyodide.pyimport("importlib");
  // Dependencies first: the Worker's own import time is measured separately below.
  const deps = pyodide.runPython(
    "import time\n" +
      "def _deps():\n" +
      "    t = time.perf_counter()\n" +
      "    import workers, pydantic, msgspec, jwt  # noqa\n" +
      "    return (time.perf_counter() - t) * 1000\n" +
      "_deps",
  );
  timings.import_deps_ms = Math.round((await deps.callPromising()) * 10) / 10;
  deps.destroy();
  started = performance.now();
  let main;
  try {
    main = await importlib.import_module.callPromising(options.mainModule);
  } catch (err) {
    err.message = `importing the main module ${options.mainModule} failed:\n${err.message}`;
    throw err;
  }
  mark("import_main_ms", started);

  const support = pyodide.pyimport("_rooms_harness");
  const classes = support.collect_entrypoint_classes(main); // to_js'ed: a plain JS object
  support.install_failure_hooks();
  return { pyodide, main, support, classes, timings, snapshot };
}

async function doPyCall(relaxed, pyfunc, args) {
  return await pyfunc.callWithOptions({ relaxed, promising: true }, ...args);
}

// https://developers.cloudflare.com/workers/runtime-apis/rpc/reserved-methods/
const SPECIAL_HANDLER_NAMES = ["fetch", "connect"];
const SPECIAL_DO_HANDLER_NAMES = ["alarm", "webSocketMessage", "webSocketClose", "webSocketError"];
export const PY_INSTANCE = Symbol("pyInstance");

/**
 * The JS class workerd defines for an exported Python class (makeEntrypointClass): the
 * constructor starts the Python constructor and returns a Proxy that dispatches every string
 * property. `then` answers undefined here (workerd's answers a function), so that a test can
 * await code that returns the instance.
 */
export function makeEntrypointClass(python, className, Base, methodNames) {
  const { main, support } = python;
  const isDurableObject = Base.name === "DurableObject";
  const Wrapper = class extends Base {
    constructor(...args) {
      super(...args);
      const pyClass = main[className];
      const instancePromise = (async () => {
        if (typeof pyClass !== "function") {
          throw new TypeError(`There is no '${className}' class defined in the Python Worker's main module`);
        }
        return await doPyCall(false, pyClass, args);
      })();
      instancePromise.catch(() => {}); // surfaced by the first dispatch
      return new Proxy(this, {
        get(target, prop, receiver) {
          if (prop === PY_INSTANCE) return instancePromise;
          if (typeof prop !== "string") return Reflect.get(target, prop, receiver);
          if (prop === "then") return undefined;
          const isKnownHandler = SPECIAL_HANDLER_NAMES.includes(prop);
          const isKnownDoHandler = isDurableObject && SPECIAL_DO_HANDLER_NAMES.includes(prop);
          return async (...callArgs) => {
            const instance = await instancePromise;
            if (typeof instance[prop] !== "function") {
              throw new TypeError(`Method ${prop} does not exist`);
            }
            if ((isKnownHandler || isKnownDoHandler) && prop !== "fetch") {
              // Raw JS arguments, relaxed: extra arguments are dropped if not accepted.
              return await doPyCall(true, instance[prop], callArgs);
            }
            const relaxed = prop === "fetch" || prop === "test";
            return await doPyCall(false, support.wrapper_func, [relaxed, instance, prop, ...callArgs]);
          };
        },
      });
    }
  };
  Object.defineProperty(Wrapper, "name", { value: className });
  for (const method of methodNames) Wrapper.prototype[method] = function () {};
  return Wrapper;
}

export function makeHelper(workersModule, socketsModule) {
  return {
    async doAnImport(name) {
      if (name === "cloudflare:workers") return workersModule;
      if (name === "cloudflare:sockets") return socketsModule;
      throw new Error(`No such module "${name}".`);
    },
    cloudflareWorkersModule: workersModule,
    cloudflareSocketsModule: socketsModule,
    workerEntrypoint: WorkerEntrypoint,
    patchWaitUntil,
    TEST_ONLY_THROW_PYTHON_WORKERS_INTERNAL_ERROR() {
      throw new Error(
        "TEST_ONLY_THROW_PYTHON_WORKERS_INTERNAL_ERROR requires the experimental compatibility flag",
      );
    },
  };
}
