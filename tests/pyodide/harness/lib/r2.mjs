// R2 as the JS binding exposes it (workerd src/workerd/api/r2-bucket.c++): put/get/head/delete/
// list with HeadResult and GetResult objects, in memory. Conditional and multipart requests are
// not emulated. put() takes a string, an ArrayBuffer or view, a Blob, a ReadableStream or null;
// a PyProxy (a Python bytearray or list that skipped conversion) is a TypeError.
import { createHash, randomBytes } from "node:crypto";

function checkKey(key) {
  if (typeof key !== "string") throw new TypeError("R2 keys must be strings");
  if (Buffer.byteLength(key) > 1024) throw new Error("put: The specified object name is not valid. (10020)");
  return key;
}

async function toBytes(value) {
  if (value === null || value === undefined) return new Uint8Array(0);
  if (typeof value === "string") return new Uint8Array(Buffer.from(value, "utf8"));
  if (value instanceof ArrayBuffer) return new Uint8Array(value.slice(0));
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength));
  }
  if (value instanceof Blob) return new Uint8Array(await value.arrayBuffer());
  if (value instanceof ReadableStream) return new Uint8Array(await new Response(value).arrayBuffer());
  throw new TypeError(
    "Failed to execute 'put' on 'R2Bucket': parameter 2 is not of type " +
      "'ReadableStream or ArrayBuffer or ArrayBufferView or string or Blob'.",
  );
}

const plain = (value) => (value === undefined || value === null ? {} : { ...value });

export class HeadResult {
  constructor(stored) {
    this.key = stored.key;
    this.version = stored.version;
    this.size = stored.data.length;
    this.etag = stored.etag;
    this.httpEtag = `"${stored.etag}"`;
    this.uploaded = new Date(stored.uploaded);
    this.httpMetadata = plain(stored.httpMetadata);
    this.customMetadata = plain(stored.customMetadata);
    this.checksums = { md5: createHash("md5").update(stored.data).digest().buffer };
    this.storageClass = "Standard";
  }

  writeHttpMetadata(headers) {
    for (const [name, value] of Object.entries(this.httpMetadata)) {
      const header = name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
      headers.set(header, String(value));
    }
  }
}

export class GetResult extends HeadResult {
  #data;
  #used = false;

  constructor(stored) {
    super(stored);
    this.#data = stored.data;
  }

  #take() {
    if (this.#used) throw new TypeError("Body has already been used.");
    this.#used = true;
    return this.#data;
  }

  get bodyUsed() {
    return this.#used;
  }

  get body() {
    const data = this.#take();
    return new ReadableStream({
      start(controller) {
        controller.enqueue(new Uint8Array(data));
        controller.close();
      },
    });
  }

  async arrayBuffer() {
    const data = this.#take();
    return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  }

  async bytes() {
    return new Uint8Array(this.#take());
  }

  async text() {
    return Buffer.from(this.#take()).toString("utf8");
  }

  async json() {
    return JSON.parse(await this.text());
  }

  async blob() {
    return new Blob([this.#take()]);
  }
}

export class R2Bucket {
  constructor() {
    this.objects = new Map();
    this.puts = 0;
    this.failPuts = 0; // tests may make the next N puts (or gets) fail
    this.failGets = 0;
  }

  async put(key, value, options) {
    checkKey(key);
    const data = await toBytes(value);
    if (this.failPuts > 0) {
      this.failPuts--;
      throw new Error("put: We encountered an internal error. Please try again. (10001)");
    }
    this.puts++;
    const stored = {
      key,
      data,
      etag: createHash("md5").update(data).digest("hex"),
      version: randomBytes(16).toString("hex"),
      uploaded: Date.now(),
      httpMetadata: options?.httpMetadata,
      customMetadata: options?.customMetadata,
    };
    this.objects.set(key, stored);
    return new HeadResult(stored);
  }

  async get(key) {
    checkKey(key);
    if (this.failGets > 0) {
      this.failGets--;
      throw new Error("get: We encountered an internal error. Please try again. (10001)");
    }
    const stored = this.objects.get(key);
    return stored === undefined ? null : new GetResult(stored);
  }

  async head(key) {
    checkKey(key);
    const stored = this.objects.get(key);
    return stored === undefined ? null : new HeadResult(stored);
  }

  async delete(keys) {
    for (const key of Array.isArray(keys) ? keys : [keys]) this.objects.delete(checkKey(key));
  }

  async list(options = {}) {
    const prefix = options?.prefix ?? "";
    const limit = options?.limit ?? 1000;
    const delimiter = options?.delimiter;
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    const start = options?.cursor ? keys.findIndex((k) => k > options.cursor) : 0;
    const objects = [];
    const prefixes = new Set();
    let last = null;
    for (const key of keys.slice(start < 0 ? keys.length : start)) {
      if (objects.length + prefixes.size >= limit) break;
      if (delimiter) {
        const rest = key.slice(prefix.length);
        const at = rest.indexOf(delimiter);
        if (at >= 0) {
          prefixes.add(prefix + rest.slice(0, at + delimiter.length));
          last = key;
          continue;
        }
      }
      objects.push(new HeadResult(this.objects.get(key)));
      last = key;
    }
    const truncated = last !== null && keys.indexOf(last) < keys.length - 1;
    return {
      objects,
      truncated,
      ...(truncated ? { cursor: last } : {}),
      delimitedPrefixes: [...prefixes],
    };
  }
}
