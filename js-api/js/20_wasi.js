// WebAssembly functions: a WASI preview 1 program run once per request in the CGI
// convention that WAGI defined. The request arrives as environment variables and standard
// input; the program writes CGI headers, a blank line and the body to standard output,
// which streams to the client as it is written (the head is sent at the blank line).
// Standard error goes to the function's log. Each request starts from the instance's
// initial state (memory and globals restored after every run), so no request sees
// another's data. No files, sockets or
// preopened directories: every WASI call besides the ones below answers ENOSYS.
import { primordials } from "ext:core/mod.js";
import {
  op_tern_body_close,
  op_tern_body_read,
  op_tern_body_write_sync,
  op_tern_fail,
  op_tern_log,
  op_tern_respond_stream,
  op_tern_wasi_module,
  op_tern_wasm_max_pages,
} from "ext:core/ops";

const { ArrayPrototypeJoin, ArrayPrototypePush, BigInt, DateNow, JSONStringify, MathRound, StringPrototypeToUpperCase } =
  primordials;

const WASI = "wasi_snapshot_preview1";
const ERRNO = { SUCCESS: 0, BADF: 8, FAULT: 21, INVAL: 28, NOSYS: 52, PIPE: 64, SPIPE: 70 };
const RIGHT_FD_READ = 1n << 1n;
const RIGHT_FD_WRITE = 1n << 6n;
/// The CGI head (headers and the blank line) must fit in this much output.
const MAX_HEAD_BYTES = 64 * 1024;
const PAGE = 65536;
/// The function js-api/src/wasi.rs adds to reset the program's mutable globals.
const RESET_EXPORT = "__tern_reset_globals";

// Made at first use: this module evaluates before the global scope is assembled.
let encoder;
let decoder;
const encode = (s) => (encoder ??= new TextEncoder()).encode(s);
const decode = (bytes) => (decoder ??= new TextDecoder()).decode(bytes);

/// The program called proc_exit.
class Exit {
  constructor(code) {
    this.code = code;
  }
}

/// The program's output broke the CGI convention.
class CgiError {
  constructor(message) {
    this.message = message;
  }
}

/** Parses a CGI head into [status, headers]; throws CgiError naming the bad line. */
function parseHead(text) {
  let status = 0;
  let location = false;
  const headers = [];
  for (let line of text.split("\n")) {
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new CgiError(`CGI header line ${JSONStringify(line.slice(0, 80))} has no "Name: value" form`);
    const name = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    const lower = name.toLowerCase();
    if (lower === "status") {
      const code = Number(value.split(" ")[0]);
      if (!Number.isInteger(code) || code < 200 || code > 599) {
        throw new CgiError(`CGI header "Status: ${value.slice(0, 40)}" is not a status between 200 and 599`);
      }
      status = code;
      continue;
    }
    if (lower === "location") location = true;
    ArrayPrototypePush(headers, `${name}:${value}`);
  }
  // As the respond ops take them: one "name:value" line per header.
  return [status || (location ? 302 : 200), ArrayPrototypeJoin(headers, "\n")];
}

/** Standard output of one run: the CGI head, then the body streamed to the client. */
class Output {
  constructor(id) {
    this.id = id;
    this.head = new Uint8Array(0);
    this.sent = false;
    this.clientGone = false;
  }

  /** Returns false when the client went away (the program sees EPIPE). */
  write(bytes) {
    if (this.sent) return this.body(bytes);
    const head = new Uint8Array(this.head.length + bytes.length);
    head.set(this.head);
    head.set(bytes, this.head.length);
    const end = blankLine(head, this.head.length);
    if (end === -1) {
      if (head.length > MAX_HEAD_BYTES) {
        throw new CgiError(`the program wrote ${MAX_HEAD_BYTES} bytes without the blank line that ends the CGI headers`);
      }
      this.head = head;
      return true;
    }
    const [status, headers] = parseHead(decode(head.subarray(0, end.at)));
    try {
      op_tern_respond_stream(this.id, status, headers);
    } catch (e) {
      throw new CgiError(e.message);
    }
    this.sent = true;
    this.head = null;
    return end.next < head.length ? this.body(head.subarray(end.next)) : true;
  }

  body(bytes) {
    if (this.clientGone) return false;
    try {
      op_tern_body_write_sync(this.id, bytes);
      return true;
    } catch {
      this.clientGone = true;
      return false;
    }
  }
}

/** The blank line ending a CGI head ("\n\n" or "\r\n\r\n"), searched from `from` - 3. */
function blankLine(bytes, from) {
  for (let i = Math.max(0, from - 3); i < bytes.length; i++) {
    if (bytes[i] !== 10) continue;
    if (bytes[i + 1] === 10) return { at: i, next: i + 2 };
    if (bytes[i + 1] === 13 && bytes[i + 2] === 10) return { at: i, next: i + 3 };
  }
  return -1;
}

/** Standard error, one log line per line written. Keeps the last lines for failures. */
class Stderr {
  constructor() {
    this.pending = "";
    this.tail = [];
    this.decoder = new TextDecoder();
  }
  write(bytes) {
    const lines = (this.pending + this.decoder.decode(bytes, { stream: true })).split("\n");
    this.pending = lines.pop();
    for (const line of lines) this.line(line);
  }
  line(line) {
    op_tern_log(3, line);
    ArrayPrototypePush(this.tail, line);
    if (this.tail.length > 5) this.tail.shift();
  }
  flush() {
    if (this.pending !== "") this.line(this.pending);
    this.pending = "";
  }
  summary() {
    const text = ArrayPrototypeJoin(this.tail, " | ");
    return text === "" ? "" : `; its standard error ended with: ${text.slice(-400)}`;
  }
}

/** `KEY=value` strings for one request, WAGI's set of CGI variables plus the function's vars. */
function environment(base, method, url, headerList, bodyLength) {
  const u = new URL(url);
  const env = [...base];
  const headers = new Map();
  for (const [name, value] of headerList) {
    const key = StringPrototypeToUpperCase(name).replaceAll("-", "_");
    headers.set(key, headers.has(key) ? `${headers.get(key)}, ${value}` : value);
  }
  const query = u.search.slice(1);
  let pathInfo;
  try {
    pathInfo = decodeURIComponent(u.pathname);
  } catch {
    pathInfo = u.pathname;
  }
  const client = headers.get("CF_CONNECTING_IP") ?? "";
  const vars = {
    AUTH_TYPE: "",
    CONTENT_LENGTH: bodyLength > 0 ? String(bodyLength) : "",
    CONTENT_TYPE: headers.get("CONTENT_TYPE") ?? "",
    GATEWAY_INTERFACE: "CGI/1.1",
    PATH_INFO: pathInfo,
    PATH_TRANSLATED: pathInfo,
    QUERY_STRING: query,
    REMOTE_ADDR: client,
    REMOTE_HOST: client,
    REMOTE_USER: "",
    REQUEST_METHOD: method,
    REQUEST_URI: u.pathname + u.search,
    SCRIPT_NAME: "",
    SERVER_NAME: u.hostname,
    SERVER_PORT: u.port || (u.protocol === "https:" ? "443" : "80"),
    SERVER_PROTOCOL: "HTTP/1.1",
    SERVER_SOFTWARE: "Tern/0.1",
    X_FULL_URL: url,
    X_RAW_PATH_INFO: u.pathname,
  };
  for (const key in vars) ArrayPrototypePush(env, `${key}=${vars[key]}`);
  for (const [key, value] of headers) {
    if (key === "CONTENT_TYPE" || key === "CONTENT_LENGTH") continue;
    ArrayPrototypePush(env, `HTTP_${key}=${value}`);
  }
  return env;
}

/** Encodes strings as the NUL-terminated list args_get / environ_get write. */
function stringList(strings) {
  const encoded = strings.map((s) => encode(s + "\0"));
  return { encoded, size: encoded.reduce((n, b) => n + b.length, 0) };
}

/**
 * The request handler for the WASI program `mainPath`: compiles and instantiates it once
 * (a load error names what is wrong) and returns `handle(exchange)`. The engine never
 * frees an instance, so this one serves every request of the isolate and is put back to
 * its initial state after each: memory from a copy taken now, mutable globals by a
 * function `js-api/src/wasi.rs` adds to the module.
 */
export function wasiFunction(mainPath, vars) {
  const WA = globalThis.WebAssembly;
  const module = new WA.Module(op_tern_wasi_module(mainPath));
  for (const { module: from, name } of WA.Module.imports(module)) {
    if (from !== WASI) {
      throw new TypeError(
        `${mainPath} imports "${from}"."${name}", which Tern does not provide: a WebAssembly function may ` +
          `import only "${WASI}" (WASI preview 1)`,
      );
    }
  }
  const exported = new Set(WA.Module.exports(module).map((e) => e.name));
  if (!exported.has("_start")) {
    throw new TypeError(`${mainPath} exports no _start: a WebAssembly function is a WASI command (a main())`);
  }
  if (!exported.has("memory")) throw new TypeError(`${mainPath} exports no memory`);
  const base = [];
  for (const key in vars) {
    const value = vars[key];
    ArrayPrototypePush(base, `${key}=${typeof value === "string" ? value : JSONStringify(value)}`);
  }
  const args = stringList([mainPath]);
  const capBytes = op_tern_wasm_max_pages() * PAGE;
  const warned = new Set();

  // The request being run: its environment, standard input and output.
  let current = null;
  let memory = null;
  const view = () => new DataView(memory.buffer);
  const bytes = (ptr, len) => new Uint8Array(memory.buffer, ptr, len);
  const iovecs = (ptr, count) => {
    const v = view();
    const list = [];
    for (let i = 0; i < count; i++) {
      ArrayPrototypePush(list, [v.getUint32(ptr + i * 8, true), v.getUint32(ptr + i * 8 + 4, true)]);
    }
    return list;
  };
  const putList = (list, ptrs, buf) => {
    const v = view();
    let at = buf;
    list.encoded.forEach((s, i) => {
      v.setUint32(ptrs + i * 4, at, true);
      bytes(at, s.length).set(s);
      at += s.length;
    });
    return ERRNO.SUCCESS;
  };
  const sizes = (list, countPtr, sizePtr) => {
    view().setUint32(countPtr, list.encoded.length, true);
    view().setUint32(sizePtr, list.size, true);
    return ERRNO.SUCCESS;
  };
  const now = (clock) => {
    if (clock === 0) return BigInt(DateNow()) * 1000000n;
    return BigInt(MathRound(performance.now() * 1e6));
  };
  const wasi = {
    args_get: (argv, buf) => putList(args, argv, buf),
    args_sizes_get: (count, size) => sizes(args, count, size),
    environ_get: (environ, buf) => putList(current.env, environ, buf),
    environ_sizes_get: (count, size) => sizes(current.env, count, size),
    fd_read(fd, iovs, count, nread) {
      if (fd !== 0) return ERRNO.BADF;
      const stdin = current.stdin;
      let total = 0;
      for (const [ptr, len] of iovecs(iovs, count)) {
        const n = Math.min(len, stdin.length - current.stdinAt);
        bytes(ptr, n).set(stdin.subarray(current.stdinAt, current.stdinAt + n));
        current.stdinAt += n;
        total += n;
        if (n < len) break;
      }
      view().setUint32(nread, total, true);
      return ERRNO.SUCCESS;
    },
    fd_write(fd, iovs, count, nwritten) {
      if (fd !== 1 && fd !== 2) return ERRNO.BADF;
      let total = 0;
      for (const [ptr, len] of iovecs(iovs, count)) {
        if (len === 0) continue;
        const chunk = bytes(ptr, len);
        if (fd === 2) current.err.write(chunk);
        else if (!current.out.write(chunk)) return ERRNO.PIPE;
        total += len;
      }
      view().setUint32(nwritten, total, true);
      return ERRNO.SUCCESS;
    },
    fd_close: (fd) => (fd <= 2 ? ERRNO.SUCCESS : ERRNO.BADF),
    fd_fdstat_get(fd, ptr) {
      if (fd > 2) return ERRNO.BADF;
      const v = view();
      v.setUint8(ptr, 0); // filetype unknown: a pipe, not a terminal (stdio stays fully buffered)
      v.setUint16(ptr + 2, 0, true);
      v.setBigUint64(ptr + 8, fd === 0 ? RIGHT_FD_READ : RIGHT_FD_WRITE, true);
      v.setBigUint64(ptr + 16, 0n, true);
      return ERRNO.SUCCESS;
    },
    fd_seek: (fd) => (fd <= 2 ? ERRNO.SPIPE : ERRNO.BADF),
    fd_tell: (fd) => (fd <= 2 ? ERRNO.SPIPE : ERRNO.BADF),
    fd_prestat_get: () => ERRNO.BADF,
    fd_prestat_dir_name: () => ERRNO.BADF,
    clock_time_get(clock, _precision, ptr) {
      if (clock < 0 || clock > 3) return ERRNO.INVAL;
      view().setBigUint64(ptr, now(clock), true);
      return ERRNO.SUCCESS;
    },
    clock_res_get(clock, ptr) {
      if (clock < 0 || clock > 3) return ERRNO.INVAL;
      view().setBigUint64(ptr, 1000n, true);
      return ERRNO.SUCCESS;
    },
    random_get(ptr, len) {
      for (let at = 0; at < len; at += 65536) {
        crypto.getRandomValues(bytes(ptr + at, Math.min(65536, len - at)));
      }
      return ERRNO.SUCCESS;
    },
    proc_exit(code) {
      throw new Exit(code);
    },
    sched_yield: () => ERRNO.SUCCESS,
  };
  const imports = {};
  for (const { name } of WA.Module.imports(module)) {
    imports[name] = wasi[name] ?? (() => {
      if (!warned.has(name)) {
        warned.add(name);
        op_tern_log(2, `${mainPath} called WASI ${name}, which Tern answers with ENOSYS (not supported)`);
      }
      return ERRNO.NOSYS;
    });
  }

  const instance = new WA.Instance(module, { [WASI]: imports });
  memory = instance.exports.memory;
  const image = new Uint8Array(memory.buffer).slice();
  const resetGlobals = instance.exports[RESET_EXPORT];
  /** The instance as it was before its first run: nothing of one request reaches the next. */
  function reset() {
    const now = new Uint8Array(memory.buffer);
    now.set(image);
    if (now.length > image.length) now.fill(0, image.length);
    resetGlobals();
  }

  /** Runs the program for one request, start to exit. */
  function run(id, method, url, headerList, stdin) {
    const env = stringList(environment(base, method, url, headerList, stdin.length));
    const out = new Output(id);
    const err = new Stderr();
    current = { env, stdin, stdinAt: 0, out, err };
    let failure = null;
    try {
      instance.exports._start();
    } catch (e) {
      if (e instanceof Exit) {
        if (e.code !== 0) failure = ["wasm_trap", `${mainPath} exited with status ${e.code}`];
      } else if (e instanceof CgiError) {
        failure = ["invalid_response", `${mainPath}: ${e.message}`];
      } else if (e instanceof WA.RuntimeError) {
        failure = ["wasm_trap", `${mainPath} trapped: ${e.message}`];
      } else {
        // Termination (a limit) or the engine's own failure: the isolate ends, no reset.
        throw e;
      }
    }
    current = null;
    err.flush();
    if (failure !== null && failure[0] === "wasm_trap" && memory.buffer.byteLength + PAGE * 16 >= capBytes) {
      // It failed with its memory at the function's limit: the limit is why.
      failure = [
        "memory_limit_exceeded",
        `${mainPath} failed with its memory at the function's limit of ${capBytes >> 20} MiB (limits.memory_mib)`,
      ];
    }
    reset();
    if (failure === null && !out.sent) {
      failure = [
        "invalid_response",
        `${mainPath} ended without the blank line that ends the CGI headers: write headers (say ` +
          `"Content-Type: text/plain"), an empty line, then the body`,
      ];
    }
    if (failure !== null) {
      op_tern_fail(id, failure[0], failure[0] === "wasm_trap" ? failure[1] + err.summary() : failure[1]);
      return;
    }
    op_tern_body_close(id);
  }

  async function readBody(id, hasBody) {
    if (!hasBody) return new Uint8Array(0);
    const chunks = [];
    let length = 0;
    for (;;) {
      const chunk = await op_tern_body_read(id);
      if (chunk.byteLength === 0) break;
      ArrayPrototypePush(chunks, chunk);
      length += chunk.byteLength;
    }
    const all = new Uint8Array(length);
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.byteLength;
    }
    return all;
  }

  return function handle(exchange) {
    const [id, method, url, headerList, hasBody] = exchange;
    if (!hasBody) {
      run(id, method, url, headerList, new Uint8Array(0));
      return;
    }
    return readBody(id, hasBody).then((stdin) => run(id, method, url, headerList, stdin));
  };
}
