// SQLite as a Durable Object sees it (workerd src/workerd/api/sql.c++, util/sqlite.c++), over
// node:sqlite. What this file reproduces, because our Python code must survive it:
//   * bindings are bytes | string | double: a JS number is bound as a double (REAL), a boolean
//     is coerced to TEXT ('true'), a BigInt (a Python int from 2**53 - 1 up) is refused with a
//     TypeError, any other object is coerced with String() (a JS Array of 1, 2 becomes "1,2", a
//     PyProxy of a list "[1, 2]") (measured: tests/workerd/test_probes.py);
//   * INTEGER results come back as doubles (precision lost above 2**53); BLOBs as ArrayBuffer;
//   * BEGIN/COMMIT/SAVEPOINT are refused (use transactionSync), as are names starting with
//     `_cf_`, ATTACH and all but a few PRAGMAs;
//   * several statements may run in one exec(), but only the last may take parameters, and the
//     cursor belongs to the last one (node:sqlite's prepare() would silently drop the rest, so
//     the statements are split here);
//   * `cursor.one()` throws unless there is exactly one row.
import { DatabaseSync, constants as C } from "node:sqlite";
import { recordWarning } from "./diagnostics.mjs";

const TRANSACTION_REFUSED =
  "To execute a transaction, please use the state.storage.transaction() or " +
  "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT " +
  "statements. The JavaScript API is safer because it will automatically roll back on " +
  "exceptions, and because it interacts correctly with Durable Objects' automatic atomic " +
  "write coalescing.";

// workerd's allow-list (util/sqlite.c++ ALLOWED_PRAGMAS plus table_list/table_info/table_xinfo).
const ALLOWED_PRAGMAS = new Set([
  "data_version", "page_size", "case_sensitive_like", "foreign_keys", "defer_foreign_keys",
  "ignore_check_constraints", "legacy_alter_table", "recursive_triggers",
  "reverse_unordered_selects", "foreign_key_check", "foreign_key_list", "index_info",
  "index_list", "index_xinfo", "quick_check", "optimize", "table_list", "table_info",
  "table_xinfo",
]);

const SQLITE_CODE_NAMES = {
  1: "SQLITE_ERROR", 5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 13: "SQLITE_FULL",
  18: "SQLITE_TOOBIG", 19: "SQLITE_CONSTRAINT", 20: "SQLITE_MISMATCH", 23: "SQLITE_AUTH",
  25: "SQLITE_RANGE",
};

/** An error workerd itself raises (already in its final form). */
class WorkerdSqlError extends Error {}

const isReservedName = (name) =>
  typeof name === "string" && name.length >= 4 && name.slice(0, 4).toLowerCase() === "_cf_";

/** Split SQL text into statements: `;` outside quotes, comments and trigger bodies. */
export function splitStatements(sql) {
  const statements = [];
  let start = 0;
  let params = new Set();
  let anonymous = 0;
  let words = [];
  let depth = 0; // BEGIN/CASE ... END nesting inside CREATE TRIGGER
  const n = sql.length;
  let i = 0;
  const finish = (end) => {
    const text = sql.slice(start, end);
    if (words.length > 0) {
      statements.push({ text, paramCount: anonymous + params.size, words });
    }
    start = end + 1;
    params = new Set();
    anonymous = 0;
    words = [];
    depth = 0;
  };
  while (i < n) {
    const c = sql[i];
    if (c === "'" || c === '"' || c === "`") {
      let j = i + 1;
      while (j < n) {
        if (sql[j] === c) {
          if (sql[j + 1] === c) { j += 2; continue; }
          break;
        }
        j++;
      }
      if (words.length === 0) words.push("<literal>");
      i = j + 1;
    } else if (c === "[") {
      const j = sql.indexOf("]", i);
      i = j < 0 ? n : j + 1;
    } else if (c === "-" && sql[i + 1] === "-") {
      const j = sql.indexOf("\n", i);
      i = j < 0 ? n : j + 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      const j = sql.indexOf("*/", i + 2);
      i = j < 0 ? n : j + 2;
    } else if (c === ";") {
      const trigger = words[0] === "create" && (words[1] === "trigger" ||
        (["temp", "temporary"].includes(words[1]) && words[2] === "trigger"));
      if (trigger && depth > 0) { i++; continue; }
      finish(i);
      i++;
    } else if (c === "?") {
      let j = i + 1;
      while (j < n && /[0-9]/.test(sql[j])) j++;
      if (j === i + 1) anonymous++;
      else params.add(sql.slice(i, j));
      i = j;
    } else if ((c === ":" || c === "@" || c === "$") && /[A-Za-z_]/.test(sql[i + 1] ?? "")) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_]/.test(sql[j])) j++;
      params.add(sql.slice(i + 1, j));
      i = j;
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_$]/.test(sql[j])) j++;
      const word = sql.slice(i, j).toLowerCase();
      words.push(word);
      if (word === "begin" || word === "case") depth++;
      else if (word === "end" && depth > 0) depth--;
      i = j;
    } else {
      i++;
    }
  }
  finish(n);
  return statements;
}

/** A JS value as workerd's SQL binding (bytes | string | double, or NULL). */
export function toBinding(value, where) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value; // node:sqlite binds numbers as doubles too
  if (typeof value === "string") return value;
  if (typeof value === "bigint") {
    // V8's ToNumber refuses a BigInt; workerd does not fall back to the string member.
    throw new TypeError("Cannot convert a BigInt value to a number");
  }
  if (value instanceof ArrayBuffer) return new Uint8Array(value.slice(0));
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength));
  }
  // Anything else goes through Web IDL string coercion, as workerd's OneOf<..., kj::String, ...>.
  const text = String(value);
  recordWarning(
    "sql-binding-coerced",
    `${where}: a ${typeof value === "object" ? "non-buffer object" : typeof value} was bound ` +
      `as the TEXT ${JSON.stringify(text.slice(0, 80))}`,
  );
  return text;
}

/** A SQLite value as workerd returns it. */
function fromSqlite(value) {
  if (typeof value === "bigint") return Number(value); // int64 -> double, as workerd does
  if (value instanceof Uint8Array) {
    return value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength);
  }
  return value;
}

function sqliteError(err, refusedTransaction) {
  if (refusedTransaction) return new Error(TRANSACTION_REFUSED);
  const name = SQLITE_CODE_NAMES[err.errcode] ?? `SQLITE_${err.errcode ?? "ERROR"}`;
  const base = String(err.message ?? err).replace(/^Error: /, "");
  return new Error(`${base}: ${name}`);
}

/** One SQLite database with workerd's regulator installed. */
export class SqlDatabase {
  constructor() {
    this.db = new DatabaseSync(":memory:");
    this.internal = 0; // > 0 while the fake itself runs SQL (KV table, transactions)
    this.refusedTransaction = false;
    this.statementCache = new Map();
    // Fault injection: the next `count` exec() calls whose SQL contains `match` fail, the way a
    // full or broken database does in workerd ("<SQLite message>: SQLITE_<CODE>").
    this.failures = [];
    this.db.setAuthorizer((action, arg1, arg2) => this.#authorize(action, arg1, arg2));
  }

  #authorize(action, arg1, arg2) {
    if (this.internal > 0) return C.SQLITE_OK;
    switch (action) {
      case C.SQLITE_TRANSACTION:
      case C.SQLITE_SAVEPOINT:
        this.refusedTransaction = true;
        return C.SQLITE_DENY;
      case C.SQLITE_ATTACH:
      case C.SQLITE_DETACH:
        return C.SQLITE_DENY;
      case C.SQLITE_PRAGMA: {
        const pragma = String(arg1 ?? "").toLowerCase();
        if (!ALLOWED_PRAGMAS.has(pragma)) return C.SQLITE_DENY;
        if (["table_info", "table_xinfo", "index_info", "index_list", "index_xinfo",
          "foreign_key_list"].includes(pragma) && isReservedName(arg2)) return C.SQLITE_DENY;
        return C.SQLITE_OK;
      }
      case C.SQLITE_FUNCTION:
        return C.SQLITE_OK;
      default:
        if (isReservedName(arg1) || isReservedName(arg2)) return C.SQLITE_DENY;
        return C.SQLITE_OK;
    }
  }

  #prepare(text) {
    let stmt = this.statementCache.get(text);
    if (stmt === undefined) {
      stmt = this.db.prepare(text);
      stmt.setReturnArrays(true);
      stmt.setReadBigInts(true);
      if (this.statementCache.size > 200) this.statementCache.clear();
      this.statementCache.set(text, stmt);
    }
    return stmt;
  }

  /** Run SQL as `sql.exec` does: returns {columns, rows, rowsWritten}. */
  exec(query, bindings) {
    if (typeof query !== "string") {
      throw new TypeError("Failed to execute 'exec' on 'SqlStorage': parameter 1 is not of type 'string'.");
    }
    const failure = this.failures.find((f) => f.count > 0 && query.includes(f.match));
    if (failure !== undefined) {
      failure.count--;
      throw new Error(failure.message);
    }
    const statements = splitStatements(query);
    if (statements.length === 0) throw new Error("SQL code did not contain a statement.: SQLITE_MISUSE");
    const values = bindings.map((value, index) => toBinding(value, `sql.exec binding ${index + 1}`));
    const before = this.#totalChanges();
    let result = { columns: [], rows: [] };
    this.refusedTransaction = false;
    try {
      statements.forEach((statement, index) => {
        const last = index === statements.length - 1;
        if (!last && statement.paramCount > 0) {
          throw new WorkerdSqlError(
            "When executing multiple SQL statements in a single call, only the last statement " +
              "can have parameters.",
          );
        }
        const params = last ? values : [];
        if (params.length !== statement.paramCount) {
          throw new WorkerdSqlError("Wrong number of parameter bindings for SQL query.");
        }
        const stmt = this.#prepare(statement.text);
        const columns = stmt.columns().map((column) => column.name);
        if (columns.length === 0) {
          stmt.run(...params);
          if (last) result = { columns, rows: [] };
        } else {
          const rows = stmt.all(...params).map((row) => row.map(fromSqlite));
          if (last) result = { columns, rows };
        }
      });
    } catch (err) {
      if (err instanceof WorkerdSqlError) throw new Error(err.message);
      throw sqliteError(err, this.refusedTransaction);
    }
    result.rowsWritten = this.#totalChanges() - before;
    return result;
  }

  #totalChanges() {
    this.internal++;
    try {
      this.changes ??= this.db.prepare("SELECT total_changes() AS n");
      return Number(this.changes.get().n);
    } finally {
      this.internal--;
    }
  }

  /** SQL the fake itself runs: no regulator, plain node:sqlite rows. */
  internalAll(sql, ...params) {
    this.internal++;
    try {
      return this.db.prepare(sql).all(...params);
    } finally {
      this.internal--;
    }
  }

  internalRun(sql, ...params) {
    this.internal++;
    try {
      return this.db.prepare(sql).run(...params);
    } finally {
      this.internal--;
    }
  }

  internalExec(sql) {
    this.internal++;
    try {
      this.db.exec(sql);
    } finally {
      this.internal--;
    }
  }

  sizeBytes() {
    this.internal++;
    try {
      const pages = Number(this.db.prepare("PRAGMA page_count").get().page_count);
      const free = Number(this.db.prepare("PRAGMA freelist_count").get().freelist_count);
      const size = Number(this.db.prepare("PRAGMA page_size").get().page_size);
      return (pages - free) * size;
    } finally {
      this.internal--;
    }
  }
}
