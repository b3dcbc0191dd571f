// WebSocket, WebSocketPair and WebSocketRequestResponsePair as workerd implements them
// (src/workerd/api/web-socket.c++), enough for a hibernating Durable Object:
//   * send(str) is a text frame, send(ArrayBuffer | view) a binary one; anything else goes
//     through Web IDL string coercion, so a PyProxy of bytes goes out as the TEXT "b'...'"
//     (recorded as a warning); send() after close() throws, after the peer vanished it is a no-op;
//   * close(code, reason) accepts 1000-4999 except 1004/1005/1006/1015, reasons of <= 123 bytes;
//   * serializeAttachment() is a V8 structured serialization, at most 16 KiB; a PyProxy (a dict,
//     a list) cannot be cloned (DataCloneError); deserializeAttachment() is null when empty;
//   * readyState follows closedIncoming/closedOutgoing like workerd's adapter; a dropped
//     connection stays CLOSING until the object closes its end.
// A hibernating object gets new WebSocket objects each time it is rebuilt: the old ones belong to
// the evicted instance and throw if used (`Generation`).
import v8 from "node:v8";
import { recordWarning } from "./diagnostics.mjs";

export const MAX_ATTACHMENT_SIZE = 16 * 1024;
const info = new WeakMap(); // facade -> { ep, gen }

/** One lifetime of a Durable Object instance; sockets handed out in it die with it. */
export class Generation {
  constructor(label) {
    this.label = label;
    this.evicted = false;
    this.facades = new Map(); // Endpoint -> WebSocket facade
  }
}

/** One end of a WebSocket pair, independent of the JS objects that stand for it. */
export class Endpoint {
  static nextId = 1;

  constructor() {
    this.id = Endpoint.nextId++;
    this.peer = null;
    this.state = "awaiting"; // awaiting | accepted | released (handed to a Response)
    this.hibernatable = false;
    this.owner = null; // the object slot that accepted it (hibernatable)
    this.tags = [];
    this.closedOutgoing = false;
    this.closedIncoming = false;
    this.aborted = false; // the connection is gone: no close frame will come or go
    this.closeHandled = false; // the object's webSocketClose for it has returned
    this.attachment = null; // Buffer of the serialized value
    this.listeners = new Map();
    this.sink = null; // where frames sent by the peer go
    this.buffered = [];
    this.autoResponseTimestamp = null;
    this.failAttachmentWrites = 0; // tests: the next N serializeAttachment() calls throw
    this.failMessage = "";
  }

  // A dropped connection reads CLOSING (2) in the object until the object closes its end, as in
  // workerd (measured: tests/workerd/test_probes.py, test_a_dropped_connection).
  get readyState() {
    if (this.closedIncoming && this.closedOutgoing) return 3;
    if (this.closedIncoming || this.closedOutgoing) return 2;
    return 1;
  }

  /** A frame or close from the peer. */
  deliver(event) {
    if (this.sink !== null) this.sink(event);
    else this.buffered.push(event);
  }

  setSink(sink) {
    this.sink = sink;
    for (const event of this.buffered.splice(0)) sink(event);
  }

  sendFromHere(event) {
    if (this.peer !== null && !this.peer.aborted) this.peer.deliver(event);
  }
}

export function endpointOf(ws) {
  const entry = info.get(ws);
  if (entry === undefined) throw new TypeError("not a WebSocket");
  return entry.ep;
}

export function isWebSocket(value) {
  return (typeof value === "object" || typeof value === "function") && value !== null && info.has(value);
}

/** The JS object for `ep` in `gen` (null: a socket not owned by an object instance). */
export function facadeFor(ep, gen = null) {
  if (gen !== null) {
    const existing = gen.facades.get(ep);
    if (existing !== undefined) return existing;
  }
  const ws = Object.create(WebSocket.prototype);
  info.set(ws, { ep, gen });
  if (gen !== null) gen.facades.set(ep, ws);
  return ws;
}

/** Tie an existing facade to `gen`, so that it dies when the instance is evicted. */
export function adoptFacade(ws, gen) {
  const entry = info.get(ws);
  entry.gen = gen;
  gen.facades.set(entry.ep, ws);
}

function live(ws) {
  const entry = info.get(ws);
  if (entry === undefined) throw new TypeError("Illegal invocation");
  if (entry.gen !== null && entry.gen.evicted) {
    // workerd's words (measured: tests/workerd/test_probes.py). Here: the object belongs to an
    // evicted instance (`entry.gen.label`); after a wake-up, use the socket the event passes in
    // or ctx.getWebSockets().
    throw new Error(
      "Cannot perform I/O on behalf of a different Durable Object. I/O objects (such as " +
        "streams, request/response bodies, and others) created in the context of one Durable " +
        "Object cannot be accessed from a different Durable Object in the same isolate. This " +
        "is a limitation of Cloudflare Workers which allows us to improve overall performance. " +
        "(I/O type: Native)",
    );
  }
  return entry.ep;
}

function copyBytes(data) {
  if (data instanceof ArrayBuffer) return data.slice(0);
  return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
}

export class WebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor() {
    throw new Error("the harness does not open outbound WebSockets (new WebSocket(url))");
  }

  get readyState() {
    return live(this).readyState;
  }

  get url() {
    return null;
  }

  get protocol() {
    return "";
  }

  get extensions() {
    return "";
  }

  accept() {
    const ep = live(this);
    if (ep.hibernatable) {
      throw new TypeError("Can't accept() a WebSocket that was already used in acceptWebSocket().");
    }
    if (ep.state === "released") {
      throw new TypeError("Can't accept() WebSocket that was already used in a response.");
    }
    ep.state = "accepted";
    ep.setSink((event) => {
      for (const listener of ep.listeners.get(event.type) ?? []) listener(event);
    });
  }

  addEventListener(type, listener) {
    const ep = live(this);
    if (!ep.listeners.has(type)) ep.listeners.set(type, []);
    ep.listeners.get(type).push(listener);
  }

  removeEventListener(type, listener) {
    const list = live(this).listeners.get(type) ?? [];
    const index = list.indexOf(listener);
    if (index >= 0) list.splice(index, 1);
  }

  send(message) {
    const ep = live(this);
    if (ep.closedOutgoing) throw new TypeError("Can't call WebSocket send() after close().");
    if (ep.aborted) return; // the peer vanished: silently ignored, as the spec asks
    if (ep.state !== "accepted") {
      throw new TypeError(
        "You must call one of accept() or state.acceptWebSocket() on this WebSocket before " +
          "sending messages.",
      );
    }
    let event;
    if (typeof message === "string") {
      event = { type: "message", data: message };
    } else if (message instanceof ArrayBuffer || ArrayBuffer.isView(message)) {
      event = { type: "message", data: copyBytes(message) };
    } else {
      const text = String(message);
      recordWarning(
        "websocket-send-coerced",
        `WebSocket.send() got a ${typeof message === "object" ? "non-buffer object" : typeof message}` +
          ` and sent the TEXT frame ${JSON.stringify(text.slice(0, 80))}`,
      );
      event = { type: "message", data: text };
    }
    ep.sendFromHere(event);
  }

  close(code, reason) {
    const ep = live(this);
    if (code !== undefined && code !== null) {
      code = Number(code);
      if (!(code >= 1000 && code < 5000) || [1004, 1005, 1006, 1015].includes(code)) {
        throw new DOMException(`Invalid WebSocket close code: ${code}.`, "InvalidAccessError");
      }
    }
    if (reason !== undefined && reason !== null) {
      reason = String(reason);
      if (Buffer.byteLength(reason, "utf8") > 123) {
        throw new DOMException(
          "WebSocket close reason must not be longer than 123 bytes when UTF-8 encoded.",
          "SyntaxError",
        );
      }
      if (code === undefined || code === null) {
        throw new DOMException(
          "If you specify a WebSocket close reason, you must also specify a code.",
          "InvalidAccessError",
        );
      }
    }
    if (ep.closedOutgoing) return; // a second close() is ignored
    if (ep.state !== "accepted") {
      throw new TypeError(
        "You must call one of accept() or state.acceptWebSocket() on this WebSocket before " +
          "sending messages.",
      );
    }
    ep.closedOutgoing = true; // on a dropped connection nothing goes out, but it is now CLOSED
    if (!ep.aborted) ep.sendFromHere({ type: "close", code: code ?? 1005, reason: reason ?? "" });
  }

  serializeAttachment(value) {
    const ep = live(this);
    if (ep.failAttachmentWrites > 0) {
      ep.failAttachmentWrites--;
      throw new Error(ep.failMessage);
    }
    structuredClone(value); // throws DataCloneError for a PyProxy, as V8's serializer does
    const serializer = new v8.Serializer();
    serializer.writeHeader();
    serializer.writeValue(value);
    const data = serializer.releaseBuffer();
    if (data.length > MAX_ATTACHMENT_SIZE) {
      throw new Error(
        `A WebSocket 'attachment' cannot be larger than ${MAX_ATTACHMENT_SIZE} bytes.` +
          `'attachment' was ${data.length} bytes.`,
      );
    }
    ep.attachment = data;
  }

  deserializeAttachment() {
    const ep = live(this);
    return ep.attachment === null ? null : v8.deserialize(ep.attachment);
  }

  get [Symbol.toStringTag]() {
    return "WebSocket";
  }
}

export class WebSocketPair {
  constructor() {
    const client = new Endpoint();
    const server = new Endpoint();
    client.peer = server;
    server.peer = client;
    this[0] = facadeFor(client);
    this[1] = facadeFor(server);
  }

  *[Symbol.iterator]() {
    yield this[0];
    yield this[1];
  }
}

export class WebSocketRequestResponsePair {
  #request;
  #response;

  constructor(request, response) {
    if (arguments.length < 2) {
      throw new TypeError("Failed to construct 'WebSocketRequestResponsePair': 2 arguments required.");
    }
    this.#request = String(request);
    this.#response = String(response);
  }

  get request() {
    return this.#request;
  }

  get response() {
    return this.#response;
  }
}
