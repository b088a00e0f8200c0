/*
 * replaybench in-app replay agent (Frida 17). Drives an app's own pipeline with dataset items, as a hook
 * manifest says (replaybench/replay/hooks.py), and posts each item's result back.
 *
 * The host (replaybench/replay/inapp.py) prepends `const INAPP = {manifest: {...}};`, calls
 * rpc.exports.prepare() (resolves every export/offset/method and reads the app's version: nothing is fed
 * before it answers), then posts items:
 *
 *   host -> agent   {type: 'item', id, width, height}     + the pixels (binary payload)
 *   agent -> host   {type: 'result', id, ...}             + the output tensor bytes (output_tensor read)
 *
 * A result carries `value` (return_value), `messages` (json_message: every text the hook saw while the
 * item ran), `fields` (java_fields), or `error` (with `raw`, the value that came back, when there is one).
 * Items are run one at a time, in the order they arrive; a native crash is not caught
 * (exceptions: 'propagate'): the app dies as it would by itself and the host respawns it.
 *
 * The Java feed and read kinds (java_bitmap_method, java_fields, a json_message hook on a Java method,
 * java_package versions) follow ../shared/ANDROID_HOOKS.md §8 and have NOT been run: no Android device
 * exists where this was written. Frida 17 does not bundle the Java bridge for API-loaded scripts, so they
 * also need this script compiled with frida-java-bridge; prepare() says so when `Java` is absent.
 */
'use strict';

const INAPP_AGENT_VERSION = '1';
const manifest = INAPP.manifest;
const feed = manifest.feed;
const read = manifest.read;

const state = {
  call: null, // NativeFunction of a native feed
  inBuf: null,
  inBytes: 0,
  outBuf: null,
  outBytes: 0,
  queue: [], // items received, not yet run (frame substitution: waiting for the next frame)
  active: null, // the item running now: {id, tid, messages}
  awaiting: null, // an item whose call returned, waiting wait_ms for its message
  busy: false,
  javaTarget: null,
};

function javaBridge() {
  if (typeof Java !== 'undefined') return Java;
  if (typeof globalThis !== 'undefined' && globalThis.Java) return globalThis.Java;
  return null;
}

function hex(n) {
  return '0x' + n.toString(16);
}

// -------------------------------------------------------------------------------------- resolving

function findModule(name, missing) {
  const m = Process.findModuleByName(name);
  if (m === null) missing.push('module ' + name + ' is not loaded in the process');
  return m;
}

function exportAddress(module, symbol, missing) {
  const m = findModule(module, missing);
  if (m === null) return null;
  const a = m.findExportByName(symbol);
  if (a === null) missing.push('export ' + module + '!' + symbol + ' does not exist');
  return a;
}

function offsetAddress(module, offset, missing) {
  const m = findModule(module, missing);
  if (m === null) return null;
  const label = module + '+' + hex(offset);
  if (offset >= m.size) {
    missing.push('offset ' + label + ' lies beyond the module (size ' + hex(m.size) + ')');
    return null;
  }
  const a = m.base.add(offset);
  const range = Process.findRangeByAddress(a);
  if (range === null || range.protection.indexOf('x') < 0) {
    missing.push('offset ' + label + ' is not in executable code (' + (range ? range.protection : 'unmapped') + ')');
    return null;
  }
  return a;
}

function callSiteAddress(site, missing) {
  return site.symbol !== null && site.symbol !== undefined
    ? exportAddress(site.module, site.symbol, missing)
    : offsetAddress(site.module, site.offset, missing);
}

const NATIVE_ARG_TYPES = {
  buffer: 'pointer',
  output: 'pointer',
  width: 'int',
  height: 'int',
  stride: 'int',
  format: 'int',
  length: 'int',
  output_count: 'int',
};

function outputCount() {
  return read.outputs.reduce((n, o) => n + o.count, 0);
}

const DTYPE_BYTES = { float32: 4, float64: 8, int32: 4, uint8: 1, int8: 1 };

function outputBytes() {
  return read.outputs.reduce((n, o) => n + o.count * DTYPE_BYTES[o.dtype], 0);
}

function prepareNative(missing) {
  const address =
    feed.kind === 'native_export'
      ? exportAddress(feed.module, feed.symbol, missing)
      : offsetAddress(feed.module, feed.offset, missing);
  if (address === null) return;
  const sig = feed.signature;
  const argTypes = sig.args.map((a) => (typeof a === 'number' ? 'int' : NATIVE_ARG_TYPES[a]));
  // propagate: a crash inside the app's code kills the app as it would by itself (the host respawns it
  // and the item becomes an error row), rather than leaving it running in an unknown state.
  state.call = new NativeFunction(address, sig.returns, argTypes, { exceptions: 'propagate' });
  if (read.kind === 'output_tensor') state.outBytes = outputBytes();
  // Without an output_tensor read the output argument is scratch the app may write: 64 KiB of it.
  if (sig.args.indexOf('output') >= 0) state.outBuf = Memory.alloc(Math.max(state.outBytes, 65536));
}

function prepareFrameSite(missing) {
  const address = callSiteAddress(feed.call_site, missing);
  if (address === null) return;
  Interceptor.attach(address, {
    onEnter(args) {
      if (state.active !== null || state.awaiting !== null || state.queue.length === 0) return;
      const item = state.queue.shift();
      const w = feed.width_arg === null ? item.width : args[feed.width_arg].toInt32();
      const h = feed.height_arg === null ? item.height : args[feed.height_arg].toInt32();
      if (w !== item.width || h !== item.height) {
        send({ type: 'result', id: item.id, error: 'the frame is ' + w + 'x' + h + ', the item ' + item.width + 'x' + item.height });
        return;
      }
      // The frame must hold the item: writing past a smaller buffer (a YUV frame fed RGBA bytes) would
      // corrupt the app. The mapping it lies in bounds the write.
      const buf = args[feed.buffer_arg];
      const range = Process.findRangeByAddress(buf);
      if (range === null || range.protection.indexOf('w') < 0 || buf.add(item.data.byteLength).compare(range.base.add(range.size)) > 0) {
        send({ type: 'result', id: item.id, error: 'the frame buffer at ' + buf + ' cannot hold the item (' + item.data.byteLength + ' bytes)' });
        return;
      }
      buf.writeByteArray(item.data);
      state.active = { id: item.id, tid: Process.getCurrentThreadId(), messages: [] };
      this.item = state.active;
    },
    onLeave() {
      if (this.item === undefined) return;
      state.active = null;
      finish(this.item, {});
    },
  });
}

function recordMessage(text) {
  const tid = Process.getCurrentThreadId();
  if (state.active !== null && state.active.tid === tid) state.active.messages.push(text);
  else if (state.awaiting !== null) state.awaiting.messages.push(text);
}

function prepareNativeMessageHook(missing) {
  const address = callSiteAddress(read.hook, missing);
  if (address === null) return;
  const arg = read.arg;
  Interceptor.attach(address, {
    onEnter(args) {
      if (state.active === null && state.awaiting === null) return; // the app's own traffic
      const p = args[arg];
      recordMessage(p.isNull() ? null : p.readUtf8String());
    },
  });
}

// ----------------------------------------------------------------------------- Java (not run here)

function prepareJava(missing) {
  const J = javaBridge();
  if (J === null || !J.available) {
    missing.push('the Java bridge is not available in this process or script (Frida 17: compile the agent with frida-java-bridge)');
    return;
  }
  J.performNow(() => {
    if (feed.kind === 'java_bitmap_method') {
      let cls;
      try {
        cls = J.use(feed.class_name);
      } catch (e) {
        missing.push('Java class ' + feed.class_name + ' is not found: ' + e.message);
        return;
      }
      if (cls[feed.method] === undefined) {
        missing.push('Java method ' + feed.class_name + '.' + feed.method + ' does not exist');
        return;
      }
      try {
        state.javaMethod = feed.overload ? cls[feed.method].overload.apply(cls[feed.method], feed.overload) : cls[feed.method];
      } catch (e) {
        missing.push('Java method ' + feed.class_name + '.' + feed.method + '(' + (feed.overload || []).join(', ') + ') does not exist: ' + e.message);
        return;
      }
      if (feed.instance === 'static') state.javaTarget = cls;
      else if (feed.instance === 'new') state.javaTarget = cls.$new();
      else {
        J.choose(feed.class_name, {
          onMatch(obj) {
            state.javaTarget = J.retain(obj);
            return 'stop';
          },
          onComplete() {},
        });
        if (state.javaTarget === null) missing.push('no live instance of ' + feed.class_name + ' (Java.choose found none)');
      }
    }
    if (read.kind === 'json_message' && read.hook.class_name !== undefined) {
      let m;
      try {
        const c = J.use(read.hook.class_name);
        m = read.hook.overload ? c[read.hook.method].overload.apply(c[read.hook.method], read.hook.overload) : c[read.hook.method];
      } catch (e) {
        missing.push('Java method ' + read.hook.class_name + '.' + read.hook.method + ' is not found: ' + e.message);
        return;
      }
      const arg = read.arg;
      m.implementation = function () {
        if (state.active !== null || state.awaiting !== null) {
          const s = arguments[arg];
          recordMessage(s === null ? null : String(s));
        }
        return m.apply(this, arguments);
      };
    }
  });
}

function javaNumbers(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'number' || typeof v === 'boolean') return Number(v);
  if (v.value !== undefined && typeof v.value !== 'object') return Number(v.value);
  if (typeof v.length === 'number') {
    const out = [];
    for (let i = 0; i < v.length; i++) out.push(javaNumbers(v[i]));
    return out;
  }
  if (typeof v.size === 'function') {
    const out = [];
    for (let i = 0; i < v.size(); i++) out.push(javaNumbers(v.get(i)));
    return out;
  }
  if (typeof v.floatValue === 'function') return v.floatValue();
  return String(v);
}

function readJavaField(obj, path) {
  let v = obj;
  for (const part of path.split('.')) {
    if (v === null || v === undefined) return null;
    const f = v[part];
    v = f !== undefined && f !== null && f.value !== undefined ? f.value : f;
  }
  return javaNumbers(v);
}

function runJava(item) {
  const J = javaBridge();
  J.perform(() => {
    const Bitmap = J.use('android.graphics.Bitmap');
    const Config = J.use('android.graphics.Bitmap$Config');
    const ByteBuffer = J.use('java.nio.ByteBuffer');
    // ARGB_8888 stores R,G,B,A bytes premultiplied: the host sends A = 255, so premultiplying is a no-op
    // (ANDROID_HOOKS.md §8a); one memcpy through a direct buffer instead of Java.array's per-byte copy.
    const bmp = Bitmap.createBitmap(item.width, item.height, Config.ARGB_8888.value);
    const bb = ByteBuffer.allocateDirect(item.data.byteLength);
    J.vm.getEnv().getDirectBufferAddress(bb.$h).writeByteArray(item.data);
    bmp.copyPixelsFromBuffer(bb);
    const m = state.javaMethod;
    const args = m.argumentTypes.map(() => null);
    args[feed.bitmap_arg] = bmp;
    state.active = { id: item.id, tid: Process.getCurrentThreadId(), messages: [] };
    let ret;
    try {
      ret = m.apply(state.javaTarget, args);
    } catch (e) {
      state.active = null;
      send({ type: 'result', id: item.id, error: 'the Java method threw: ' + e.message });
      return;
    }
    const active = state.active;
    state.active = null;
    const extra = {};
    if (read.kind === 'return_value') extra.value = javaNumbers(ret);
    else if (read.kind === 'java_fields') {
      extra.fields = {};
      for (const name of Object.keys(read.fields)) extra.fields[name] = readJavaField(ret, read.fields[name]);
    }
    finish(active, extra);
  });
}

// ------------------------------------------------------------------------------------------ items

function asNumber(r) {
  if (typeof r === 'number') return r;
  if (r !== null && typeof r === 'object' && typeof r.toNumber === 'function') return r.toNumber();
  return r;
}

function runNative(item) {
  const n = item.data.byteLength;
  if (n > state.inBytes) {
    state.inBuf = Memory.alloc(n);
    state.inBytes = n;
  }
  state.inBuf.writeByteArray(item.data);
  const sig = feed.signature;
  const bpp = n / (item.width * item.height);
  const args = sig.args.map((a) => {
    if (typeof a === 'number') return a;
    switch (a) {
      case 'buffer': return state.inBuf;
      case 'output': return state.outBuf;
      case 'width': return item.width;
      case 'height': return item.height;
      case 'stride': return item.width * bpp;
      case 'format': return sig.format_value;
      case 'length': return n;
      case 'output_count': return read.kind === 'output_tensor' ? outputCount() : 65536 / 4;
    }
    throw new Error('unknown argument kind ' + a);
  });
  state.active = { id: item.id, tid: Process.getCurrentThreadId(), messages: [] };
  const r = asNumber(state.call.apply(null, args));
  const active = state.active;
  state.active = null;
  const intReturn = sig.returns === 'int' || sig.returns === 'uint' || sig.returns === 'int64';
  if (read.kind === 'return_value') {
    finish(active, { value: r });
    return;
  }
  if (intReturn && sig.ok_return !== null && r !== sig.ok_return) {
    send({ type: 'result', id: item.id, error: 'the function returned ' + r + ' (ok is ' + sig.ok_return + ')', raw: String(r) });
    return;
  }
  finish(active, {});
}

// An item is done: send its result now, or (json_message with wait_ms) once its message came or the
// wait ran out; no other item runs meanwhile, so a late message cannot be credited to the wrong item.
function finish(item, extra) {
  if (read.kind === 'json_message' && item.messages.length === 0 && read.wait_ms > 0) {
    state.awaiting = item;
    state.busy = true;
    const started = Date.now();
    const poll = () => {
      if (state.awaiting.messages.length > 0 || Date.now() - started >= read.wait_ms) {
        const done = state.awaiting;
        state.awaiting = null;
        state.busy = false;
        deliver(done, extra);
        pump();
      } else setTimeout(poll, 1);
    };
    setTimeout(poll, 1);
    return;
  }
  deliver(item, extra);
}

function deliver(item, extra) {
  const result = Object.assign({ type: 'result', id: item.id }, extra);
  if (read.kind === 'json_message') result.messages = item.messages;
  if (read.kind === 'output_tensor') send(result, state.outBuf.readByteArray(state.outBytes));
  else send(result);
}

function pump() {
  if (feed.kind === 'frame_substitution') return; // the app's own loop takes the items
  while (!state.busy && state.queue.length > 0) {
    const item = state.queue.shift();
    try {
      if (feed.kind === 'java_bitmap_method') runJava(item);
      else runNative(item);
    } catch (e) {
      state.active = null;
      send({ type: 'result', id: item.id, error: 'agent: ' + e.message });
    }
  }
}

function onItem(message, data) {
  recv('item', onItem); // re-armed first: recv delivers one message per registration
  state.queue.push({ id: message.id, width: message.width, height: message.height, data: data });
  pump();
}

// -------------------------------------------------------------------------------------------- rpc

function appVersion(missing) {
  const src = manifest.app.version_from;
  if (src === null || src === undefined) return null;
  if (src.kind === 'native_export') {
    const a = exportAddress(src.module, src.symbol, missing);
    if (a === null) return null;
    const p = new NativeFunction(a, 'pointer', [])();
    return p.isNull() ? null : p.readUtf8String();
  }
  const J = javaBridge();
  if (J === null || !J.available) {
    missing.push('the Java bridge is not available to read the app version');
    return null;
  }
  let version = null;
  J.performNow(() => {
    const app = J.use('android.app.ActivityThread').currentApplication();
    if (app === null) return;
    const ctx = app.getApplicationContext();
    version = String(ctx.getPackageManager().getPackageInfo(ctx.getPackageName(), 0).versionName.value);
  });
  return version;
}

rpc.exports = {
  // Resolve everything the manifest names; nothing is fed until this answers with no `missing`.
  prepare() {
    const missing = [];
    const version = appVersion(missing);
    if (feed.kind === 'native_export' || feed.kind === 'native_offset') prepareNative(missing);
    else if (feed.kind === 'frame_substitution') prepareFrameSite(missing);
    if (read.kind === 'json_message' && read.hook.module !== undefined) prepareNativeMessageHook(missing);
    const java = feed.kind === 'java_bitmap_method' || read.kind === 'java_fields' || (read.kind === 'json_message' && read.hook.class_name !== undefined);
    if (java) prepareJava(missing);
    if (missing.length === 0) recv('item', onItem);
    return { agent: INAPP_AGENT_VERSION, pid: Process.id, arch: Process.arch, version: version, missing: missing };
  },
};
