// D1 as the JS binding exposes it (workerd src/cloudflare/internal/d1-api.ts): prepare/bind/
// all/first/run/raw, an atomic batch() and exec(), over a local SQLite database with the
// project's migrations applied. bind() validates like the real binding: booleans become 1/0,
// buffers become byte arrays, `undefined`, BigInt and other objects are refused with D1_TYPE_ERROR.
import { DatabaseSync } from "node:sqlite";
import fs from "node:fs";
import path from "node:path";

function d1Error(err) {
  const message = String(err?.message ?? err);
  return new Error(`D1_ERROR: ${message}: SQLITE_ERROR`, { cause: err });
}

function bindValue(value) {
  const type = typeof value;
  if (type === "number" || type === "string") return value;
  if (type === "boolean") return value ? 1 : 0;
  if (type === "object") {
    if (value === null) return null;
    if (Array.isArray(value) && value.every((b) => typeof b === "number" && b >= 0 && b < 256)) {
      return value;
    }
    if (value instanceof ArrayBuffer) return Array.from(new Uint8Array(value));
    if (ArrayBuffer.isView(value)) return Array.from(value);
  }
  throw new Error(`D1_TYPE_ERROR: Type '${type}' not supported for value '${value}'`, {
    cause: new Error(`Type '${type}' not supported for value '${value}'`),
  });
}

// What crosses D1's JSON wire: blobs are arrays of bytes. Every JS number is bound as a REAL, as
// local D1 does (measured: tests/workerd/test_probes.py; `typeof(?)` of 7 is 'real'), which an
// INTEGER column's affinity turns back into an integer.
function toSqlite(value) {
  if (Array.isArray(value)) return new Uint8Array(value);
  return value;
}

function fromSqlite(value) {
  if (typeof value === "bigint") return Number(value);
  if (value instanceof Uint8Array) return Array.from(value);
  return value;
}

export class D1Database {
  #db;

  constructor() {
    this.#db = new DatabaseSync(":memory:");
    this.queries = 0;
    this.failBatches = 0; // tests may make the next N batches fail
  }

  /** Apply `migrations/*.sql` in file-name order, recorded in d1_migrations as wrangler does. */
  applyMigrations(dir) {
    this.#db.exec(
      "CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, " +
        "name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)",
    );
    const applied = [];
    for (const name of fs.readdirSync(dir).filter((f) => f.endsWith(".sql")).sort()) {
      const done = this.#db.prepare("SELECT 1 FROM d1_migrations WHERE name = ?").get(name);
      if (done) continue;
      this.#db.exec("BEGIN");
      try {
        this.#db.exec(fs.readFileSync(path.join(dir, name), "utf8"));
        this.#db.prepare("INSERT INTO d1_migrations (name) VALUES (?)").run(name);
        this.#db.exec("COMMIT");
      } catch (err) {
        this.#db.exec("ROLLBACK");
        throw err;
      }
      applied.push(name);
    }
    return applied;
  }

  prepare(query) {
    return new D1PreparedStatement(this, String(query), []);
  }

  async batch(statements) {
    if (!Array.isArray(statements)) throw new TypeError("batch() takes an array of statements");
    for (const statement of statements) {
      if (!(statement instanceof D1PreparedStatement)) {
        throw new TypeError("D1 batch() items must be D1PreparedStatement objects");
      }
    }
    if (this.failBatches > 0) {
      this.failBatches--;
      throw new Error("D1_ERROR: injected failure: SQLITE_ERROR");
    }
    this.#db.exec("BEGIN");
    try {
      const results = statements.map((statement) => this._run(statement.statement, statement.params));
      this.#db.exec("COMMIT");
      return results;
    } catch (err) {
      this.#db.exec("ROLLBACK");
      throw d1Error(err);
    }
  }

  async exec(query) {
    const started = performance.now();
    const lines = String(query).split("\n").map((l) => l.trim()).filter(Boolean);
    try {
      for (const line of lines) this.#db.exec(line);
    } catch (err) {
      throw new Error(`D1_EXEC_ERROR: Error in line ${lines.length}: ${err.message}`);
    }
    return { count: lines.length, duration: performance.now() - started };
  }

  withSession() {
    return this;
  }

  /** One statement; the shape of a D1 result (rows as plain objects). */
  _run(sql, params) {
    this.queries++;
    const started = performance.now();
    const stmt = this.#db.prepare(sql);
    stmt.setReadBigInts(true);
    const columns = stmt.columns().map((c) => c.name);
    const before = this.#db.prepare("SELECT total_changes() AS n").get().n;
    let rows = [];
    let lastRowId = 0;
    if (columns.length === 0) {
      lastRowId = Number(stmt.run(...params.map(toSqlite)).lastInsertRowid);
    } else {
      rows = stmt.all(...params.map(toSqlite)).map((row) => {
        const out = {};
        for (const name of columns) out[name] = fromSqlite(row[name]);
        return out;
      });
    }
    const changes = Number(this.#db.prepare("SELECT total_changes() AS n").get().n - before);
    return {
      success: true,
      results: rows,
      meta: {
        duration: performance.now() - started,
        changes,
        last_row_id: lastRowId,
        changed_db: changes > 0,
        rows_read: rows.length,
        rows_written: changes,
        size_after: 0,
        served_by: "pyodide-harness",
        served_by_primary: true,
        timings: { sql_duration_ms: performance.now() - started },
        total_attempts: 1,
      },
    };
  }

  /** For tests: read rows directly (not through the binding). */
  inspect(sql, params = []) {
    return this._run(sql, params).results;
  }
}

export class D1PreparedStatement {
  #db;

  constructor(db, statement, params) {
    this.#db = db;
    this.statement = statement;
    this.params = params;
  }

  bind(...values) {
    return new D1PreparedStatement(this.#db, this.statement, values.map(bindValue));
  }

  #run() {
    try {
      return this.#db._run(this.statement, this.params);
    } catch (err) {
      throw d1Error(err);
    }
  }

  async all() {
    return this.#run();
  }

  async run() {
    return this.#run();
  }

  async first(column) {
    const { results } = this.#run();
    if (results.length === 0) return null;
    if (column === undefined) return results[0];
    if (results[0][column] === undefined) {
      throw new Error(`D1_COLUMN_NOTFOUND: Column not found (${column})`);
    }
    return results[0][column];
  }

  async raw(options) {
    const { results } = this.#run();
    const out = results.map((row) => Object.values(row));
    if (options?.columnNames) out.unshift(results.length ? Object.keys(results[0]) : []);
    return out;
  }
}
