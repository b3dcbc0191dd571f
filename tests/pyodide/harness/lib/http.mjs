// Request, Response and ExecutionContext with workerd's differences from Node's (undici) versions.
// The SDK picks its wrappers by constructor name, so the classes are named "Request" and
// "Response". Node's Response refuses status 101; workerd allows it with a `webSocket`.
import { endpointOf, isWebSocket } from "./websocket.mjs";
import { recordWarning } from "./diagnostics.mjs";

const NodeResponse = globalThis.Response;
const NodeRequest = globalThis.Request;

const readInit = (init, key) => {
  if (init === undefined || init === null) return undefined;
  return init[key];
};

export class Response extends NodeResponse {
  #status;
  #webSocket;

  constructor(body = null, init = undefined) {
    const status = readInit(init, "status");
    const webSocket = readInit(init, "webSocket") ?? null;
    let nodeInit = init;
    if (status === 101 || webSocket !== null) {
      if (webSocket === null) throw new RangeError("Status code 101 requires a webSocket.");
      if (status !== 101) {
        throw new RangeError("Responses with a WebSocket must have status code 101.");
      }
      if (!isWebSocket(webSocket)) {
        throw new TypeError(
          "Failed to construct 'Response': member webSocket is not of type 'WebSocket'.",
        );
      }
      const ep = endpointOf(webSocket);
      if (ep.state === "accepted") {
        throw new TypeError("Can't return WebSocket in a Response after calling accept().");
      }
      if (ep.state === "released") {
        throw new TypeError("Can't return WebSocket that was already used in a response.");
      }
      ep.state = "released";
      nodeInit = {
        status: 200,
        statusText: readInit(init, "statusText") ?? "Switching Protocols",
        headers: readInit(init, "headers"),
      };
    }
    super(body, nodeInit);
    this.#status = status === 101 ? 101 : undefined;
    this.#webSocket = webSocket;
  }

  // undici's constructor reads these getters before this class's fields exist: brand-check.
  get status() {
    return #status in this && this.#status !== undefined ? this.#status : super.status;
  }

  get ok() {
    const status = this.status;
    return status >= 200 && status <= 299;
  }

  get webSocket() {
    return #webSocket in this ? this.#webSocket : null;
  }

  clone() {
    if (this.webSocket !== null) throw new TypeError("Cannot clone a response to a WebSocket handshake.");
    return super.clone();
  }
}

export class Request extends NodeRequest {
  #cf;

  constructor(input, init = undefined) {
    super(input, init);
    const cf = readInit(init, "cf");
    this.#cf = cf !== undefined ? cf : input instanceof Request ? input.cf : undefined;
  }

  get cf() {
    return #cf in this ? this.#cf : undefined;
  }
}

export class ExecutionContext {
  #pending;

  constructor(pending, props = {}) {
    this.#pending = pending;
    this.props = props;
  }

  waitUntil(promise) {
    this.#pending.push(Promise.resolve(promise));
  }

  passThroughOnException() {}

  get [Symbol.toStringTag]() {
    return "ExecutionContext";
  }
}

/** Outbound fetch() is blocked: tests never reach the network. */
export async function blockedFetch(input) {
  const url = typeof input === "string" ? input : input?.url;
  recordWarning("outbound-fetch", `outbound fetch(${JSON.stringify(url)}) was blocked`);
  throw new TypeError(`outbound fetch() is blocked in the Pyodide test harness: ${url}`);
}
