/*
 * replaybench Frida agent (Frida 17). Records which model blobs an app loads and the tensors it feeds them.
 *
 * Output: send(event[, bytes]) with event = {v, t, kind, ...} (see replaybench/extract/trace.py); binary
 * dumps travel as the message's data payload and the Python side names them by sha256.
 *
 * Use: `replaybench trace ...` (which prepends `const REPLAYBENCH_CONFIG = {...};`), or by hand:
 * `frida -U -f com.example.app -l agent.js` (the frida REPL bundles the Java bridge).
 *
 * Frida 17: the static Module export lookups are gone (findGlobalExportByName and Module instances instead); the Java bridge is not bundled for API-loaded scripts, so
 * every Java hook checks for it and the native hooks (which cover the same loads at the JNI/C boundary)
 * work without it.
 */
'use strict';

const AGENT_VERSION = '1.0.0';
const SCHEMA_VERSION = 1;

const DEFAULTS = {
  maxDumpBytes: 64 * 1024 * 1024, // model buffers larger than this are hashed (when possible), not dumped
  maxTensorBytes: 16 * 1024 * 1024,
  tensorDumpInvokes: 8, // full tensor dumps for the first N invokes per interpreter, then hashes only
  maxEventsPerSecond: 200,
  bitmapMinPixels: 32 * 32, // ignore UI icons
  watch: [], // exports ("name" or "module!name") or Java methods ("pkg.Class.method")
  watchBytes: 64,
  modelPathPattern: '\\.(tflite|lite|tfl|onnx|ort|ptl|pt|pth|torchscript|pb|mnn|ncnn|param|nb|tnn|model|bin|enc|dat)$|model',
};
const cfg = Object.assign({}, DEFAULTS, typeof REPLAYBENCH_CONFIG !== 'undefined' ? REPLAYBENCH_CONFIG : {});
const modelPathRe = new RegExp(cfg.modelPathPattern, 'i');
const ptrSize = Process.pointerSize;
const t0 = Date.now();

// ------------------------------------------------------------------------------------------ output

let windowStart = Date.now();
let windowCount = 0;
const stats = { dropped: 0, capped: 0 };

// The events-per-second cap. Hooks that do work before emitting (watch) ask first, so a hot function
// costs little once the cap is reached.
function admit(essential) {
  const now = Date.now();
  if (now - windowStart >= 1000) {
    windowStart = now;
    windowCount = 0;
    if (stats.dropped) {
      send({ v: SCHEMA_VERSION, t: now - t0, kind: 'stats', dropped: stats.dropped, capped: 0 });
      stats.dropped = 0;
    }
  }
  // Model loads, sessions and interpreters are rare and are what a trace is for: never rate-limited.
  if (!essential && windowCount >= cfg.maxEventsPerSecond) {
    if (windowCount++ === cfg.maxEventsPerSecond) {
      // The first drop of a window is reported at once: a process may exit before the window ends.
      send({ v: SCHEMA_VERSION, t: now - t0, kind: 'stats', dropped: 1, capped: 0, errors: ['rate limit of ' + cfg.maxEventsPerSecond + ' events/s reached'] });
    } else {
      stats.dropped++;
    }
    return false;
  }
  windowCount++;
  return true;
}

function emit(kind, fields, data, essential, admitted) {
  if (!admitted && !admit(essential)) return false;
  // tid: hooks run on the app's calling thread, so a bitmap can be paired with the invoke it fed on the
  // same thread (two models on two threads interleave their invokes).
  const ev = Object.assign({ v: SCHEMA_VERSION, t: Date.now() - t0, kind: kind, tid: Process.getCurrentThreadId() }, fields);
  if (data !== undefined && data !== null) send(ev, data);
  else send(ev);
  return true;
}

let errorsSent = 0;
function noteError(where, e) {
  // Sent at once (a spawned process may exit before the next stats flush); at most 50 per session.
  if (errorsSent++ >= 50) return;
  const msg = where + ': ' + (e && e.message ? e.message : String(e));
  send({ v: SCHEMA_VERSION, t: Date.now() - t0, kind: 'stats', dropped: 0, capped: 0, errors: [msg] });
}

setInterval(function () {
  if (stats.dropped || stats.capped) {
    emit('stats', { dropped: stats.dropped, capped: stats.capped }, null, true);
    stats.dropped = 0;
    stats.capped = 0;
  }
}, 2000);

function sha256Of(bytes) {
  try {
    if (typeof Checksum !== 'undefined') return Checksum.compute('sha256', bytes);
  } catch (e) {
    noteError('Checksum', e);
  }
  return null;
}

function safeRead(p, n) {
  try {
    return p.readByteArray(n);
  } catch (e) {
    noteError('read ' + p, e);
    return null;
  }
}

function hexOf(buf) {
  const u = new Uint8Array(buf);
  let s = '';
  for (let i = 0; i < u.length; i++) s += (u[i] < 16 ? '0' : '') + u[i].toString(16);
  return s;
}

// A model given as a buffer: dump it (capped) so encrypted-at-rest models are recovered decrypted.
function dumpBuffer(address, size) {
  if (address.isNull() || size <= 0) return { data: null, fields: { size: size } };
  if (size > cfg.maxDumpBytes) {
    stats.capped++;
    const whole = safeRead(address, size);
    return { data: null, fields: { size: size, truncated: true, sha256: whole ? sha256Of(whole) : null } };
  }
  return { data: safeRead(address, size), fields: { size: size } };
}

function dumpFile(path) {
  try {
    if (typeof File !== 'undefined' && File.readAllBytes) {
      const bytes = File.readAllBytes(path);
      if (bytes.byteLength > cfg.maxDumpBytes) {
        stats.capped++;
        return { data: null, fields: { size: bytes.byteLength, truncated: true, sha256: sha256Of(bytes) } };
      }
      return { data: bytes, fields: { size: bytes.byteLength } };
    }
  } catch (e) {
    noteError('readAllBytes ' + path, e);
  }
  return { data: null, fields: {} };
}

// ------------------------------------------------------------------- files, assets and their mappings

const fdPaths = {}; // fd -> path, only for model-like files
const assetNames = {}; // AAsset* -> asset name
const ranges = []; // {base, end, path} of model-like files mapped or buffered in memory

function rangeSource(address) {
  for (let i = ranges.length - 1; i >= 0; i--) {
    const r = ranges[i];
    if (address.compare(r.base) >= 0 && address.compare(r.end) < 0) return r;
  }
  return null;
}

// libc aliases (open/open64, mmap/mmap64) are one function: hook each address once, or every call
// would be recorded twice.
const attachedAt = {};
function attachOnce(addr, callbacks) {
  const key = addr.toString();
  if (attachedAt[key]) return false;
  attachedAt[key] = true;
  Interceptor.attach(addr, callbacks);
  return true;
}

function hookExport(mod, name, callbacks) {
  const addr = mod ? mod.findExportByName(name) : Module.findGlobalExportByName(name);
  if (addr === null) return false;
  try {
    attachOnce(addr, callbacks);
    return true;
  } catch (e) {
    noteError('attach ' + name, e);
    return false;
  }
}

function installFileHooks() {
  const onOpenEnter = function (pathIndex, api) {
    return {
      onEnter(args) {
        this.path = null;
        try {
          const p = args[pathIndex].readUtf8String();
          if (p && modelPathRe.test(p) && !/\.(so|dex|odex|oat|vdex|art|py|pyc)$/.test(p)) this.path = p;
        } catch (e) {
          /* a bad pointer: not our business */
        }
      },
      onLeave(retval) {
        if (this.path === null) return;
        const fd = retval.toInt32();
        if (fd < 0) return;
        fdPaths[fd] = this.path;
        emit('file_open', { path: this.path, api: api, fd: fd });
      },
    };
  };
  hookExport(null, 'open', onOpenEnter(0, 'open'));
  hookExport(null, 'open64', onOpenEnter(0, 'open64'));
  hookExport(null, '__open_2', onOpenEnter(0, '__open_2'));
  hookExport(null, 'openat', onOpenEnter(1, 'openat'));
  hookExport(null, 'openat64', onOpenEnter(1, 'openat64'));
  hookExport(null, 'close', {
    onEnter(args) {
      delete fdPaths[args[0].toInt32()];
    },
  });
  const onMmap = {
    onEnter(args) {
      this.fd = args[4].toInt32();
      this.length = parseInt(args[1].toString());
      this.offset = parseInt(args[5].toString());
    },
    onLeave(retval) {
      const path = fdPaths[this.fd];
      if (path === undefined || retval.equals(ptr('-1'))) return;
      const base = ptr(retval.toString()); // retval is only valid inside this callback
      ranges.push({ base: base, end: base.add(this.length), path: path, offset: this.offset });
      emit('file_open', {
        path: path,
        api: 'mmap',
        fd: this.fd,
        address: retval.toString(),
        length: this.length,
        offset: this.offset,
      });
    },
  };
  hookExport(null, 'mmap', onMmap);
  hookExport(null, 'mmap64', onMmap);
}

function installAssetHooks(mod) {
  hookExport(mod, 'AAssetManager_open', {
    onEnter(args) {
      try {
        this.name = args[1].readUtf8String();
      } catch (e) {
        this.name = null;
      }
    },
    onLeave(retval) {
      if (!this.name || retval.isNull()) return;
      assetNames[retval.toString()] = this.name;
      if (modelPathRe.test(this.name))
        emit('file_open', { path: this.name, api: 'AAssetManager_open', asset: true, handle: retval.toString() });
    },
  });
  const getLength = mod.findExportByName('AAsset_getLength64') || mod.findExportByName('AAsset_getLength');
  const assetLength = getLength ? new NativeFunction(getLength, 'int64', ['pointer']) : null;
  hookExport(mod, 'AAsset_getBuffer', {
    onEnter(args) {
      this.asset = args[0];
    },
    onLeave(retval) {
      const name = assetNames[this.asset.toString()];
      if (name === undefined || retval.isNull() || assetLength === null) return;
      const len = parseInt(assetLength(this.asset).toString());
      const base = ptr(retval.toString());
      ranges.push({ base: base, end: base.add(len), path: name, asset: true });
      if (modelPathRe.test(name))
        emit('file_open', { path: name, api: 'AAsset_getBuffer', asset: true, address: retval.toString(), length: len });
    },
  });
  hookExport(mod, 'AAsset_read', {
    onEnter(args) {
      this.asset = args[0];
      this.buf = args[1];
    },
    onLeave(retval) {
      const name = assetNames[this.asset.toString()];
      const n = retval.toInt32();
      if (name === undefined || n <= 0) return;
      // Remember where the app read the asset to, so a later model load from that buffer names it.
      ranges.push({ base: this.buf, end: this.buf.add(n), path: name, asset: true });
    },
  });
  hookExport(mod, 'AAsset_close', {
    onEnter(args) {
      delete assetNames[args[0].toString()];
    },
  });
}

// ------------------------------------------------------------------------------------------ tensors

const TFLITE_DTYPES = { 1: 'float32', 2: 'int32', 3: 'uint8', 4: 'int64', 6: 'bool', 7: 'int16', 9: 'int8', 10: 'float16', 11: 'float64' };

// Readers for a TfLiteTensor*: the C API accessors when the module has them (exported, or as local
// symbols), else the LP64 struct layout from tflite/core/c/common.h (type +0, data +8, dims +16,
// params.scale +24, params.zero_point +28, bytes +40, name +56).
function tensorReaders(find) {
  const f = function (name, ret, args) {
    const a = find(name);
    return a ? new NativeFunction(a, ret, args) : null;
  };
  const fns = {
    type: f('TfLiteTensorType', 'int', ['pointer']),
    data: f('TfLiteTensorData', 'pointer', ['pointer']),
    bytes: f('TfLiteTensorByteSize', 'size_t', ['pointer']),
    ndims: f('TfLiteTensorNumDims', 'int32', ['pointer']),
    dim: f('TfLiteTensorDim', 'int32', ['pointer', 'int32']),
    name: f('TfLiteTensorName', 'pointer', ['pointer']),
    quant: f('TfLiteTensorQuantizationParams', ['float', 'int32'], ['pointer']),
  };
  const lp64 = ptrSize === 8;
  return function read(t) {
    const out = {};
    out.type_code = fns.type ? fns.type(t) : t.readS32();
    const data = fns.data ? fns.data(t) : t.add(8).readPointer();
    const nbytes = fns.bytes ? parseInt(fns.bytes(t).toString()) : lp64 ? parseInt(t.add(40).readU64().toString()) : 0;
    const shape = [];
    if (fns.ndims && fns.dim) {
      const n = fns.ndims(t);
      for (let i = 0; i < n; i++) shape.push(fns.dim(t, i));
    } else if (lp64) {
      const dims = t.add(16).readPointer();
      if (!dims.isNull()) {
        const n = dims.readS32();
        for (let i = 0; i < n && i < 8; i++) shape.push(dims.add(4 + 4 * i).readS32());
      }
    }
    let namePtr = fns.name ? fns.name(t) : lp64 ? t.add(56).readPointer() : ptr(0);
    out.name = namePtr.isNull() ? null : namePtr.readUtf8String();
    let scale, zp;
    if (fns.quant) {
      const q = fns.quant(t);
      scale = q[0];
      zp = q[1];
    } else if (lp64) {
      scale = t.add(24).readFloat();
      zp = t.add(28).readS32();
    }
    if (scale) out.quantization = { scale: scale, zero_point: zp };
    out.shape = shape;
    out.dtype = TFLITE_DTYPES[out.type_code] || null;
    out.bytes = nbytes;
    out.data = data;
    return out;
  };
}

const invokeCounts = {}; // interpreter handle -> invokes seen
let invokeSeq = 0;
const interpreterModels = {}; // interpreter handle -> model handle
let lastModelHandle = null;

function emitTensor(info, fields, full) {
  const ev = Object.assign({}, fields, {
    name: info.name,
    shape: info.shape,
    dtype: info.dtype,
    type_code: info.type_code,
    quantization: info.quantization || null,
    bytes: info.bytes,
  });
  if (info.data.isNull() || info.bytes <= 0) return emit('tensor', ev);
  const n = Math.min(info.bytes, cfg.maxTensorBytes);
  const bytes = safeRead(info.data, n);
  if (bytes === null) return emit('tensor', ev);
  if (n < info.bytes) {
    ev.truncated = true;
    stats.capped++;
  }
  if (full) return emit('tensor', ev, bytes);
  ev.sha256 = sha256Of(bytes);
  return emit('tensor', ev);
}

function captureTensors(handle, io, list, runtime, seq) {
  const full = (invokeCounts[handle] || 0) <= cfg.tensorDumpInvokes;
  for (let i = 0; i < list.length; i++) {
    try {
      emitTensor(list[i], { runtime: runtime, interpreter: handle, model: interpreterModels[handle] || null, invoke: seq, io: io, index: i }, full);
    } catch (e) {
      noteError('tensor ' + io + i, e);
    }
  }
}

// -------------------------------------------------------------------------------- TFLite: C API

function installTfliteCApi(mod, find) {
  const read = tensorReaders(find);
  const nf = function (name, ret, args) {
    const a = find(name);
    return a ? new NativeFunction(a, ret, args) : null;
  };
  const inCount = nf('TfLiteInterpreterGetInputTensorCount', 'int32', ['pointer']);
  const inTensor = nf('TfLiteInterpreterGetInputTensor', 'pointer', ['pointer', 'int32']);
  const outCount = nf('TfLiteInterpreterGetOutputTensorCount', 'int32', ['pointer']);
  const outTensor = nf('TfLiteInterpreterGetOutputTensor', 'pointer', ['pointer', 'int32']);
  const attach = function (name, cb) {
    const a = find(name);
    if (!a) return;
    try {
      attachOnce(a, cb);
    } catch (e) {
      noteError('attach ' + name, e);
    }
  };
  const onCreate = function (api) {
    return {
      onEnter(args) {
        this.buf = args[0];
        this.size = parseInt(args[1].toString());
      },
      onLeave(retval) {
        const src = rangeSource(this.buf);
        const d = dumpBuffer(this.buf, this.size);
        lastModelHandle = retval.toString();
        emit('model_load', Object.assign({ runtime: 'tflite', api: api, handle: retval.toString(), source: src && src.asset ? 'asset' : 'buffer', path: src ? src.path : null, address: this.buf.toString() }, d.fields), d.data, true);
      },
    };
  };
  attach('TfLiteModelCreate', onCreate('TfLiteModelCreate'));
  attach('TfLiteModelCreateWithErrorReporter', onCreate('TfLiteModelCreateWithErrorReporter'));
  const onFile = function (api) {
    return {
      onEnter(args) {
        this.path = args[0].readUtf8String();
      },
      onLeave(retval) {
        const d = dumpFile(this.path);
        lastModelHandle = retval.toString();
        emit('model_load', Object.assign({ runtime: 'tflite', api: api, handle: retval.toString(), source: 'file', path: this.path }, d.fields), d.data, true);
      },
    };
  };
  attach('TfLiteModelCreateFromFile', onFile('TfLiteModelCreateFromFile'));
  attach('TfLiteModelCreateFromFileWithErrorReporter', onFile('TfLiteModelCreateFromFileWithErrorReporter'));
  attach('TfLiteInterpreterCreate', {
    onEnter(args) {
      this.model = args[0].toString();
    },
    onLeave(retval) {
      interpreterModels[retval.toString()] = this.model;
      emit('interpreter', { runtime: 'tflite', api: 'TfLiteInterpreterCreate', interpreter: retval.toString(), model: this.model }, null, true);
    },
  });
  attach('TfLiteInterpreterInvoke', {
    onEnter(args) {
      this.interp = args[0];
      this.handle = args[0].toString();
      this.seq = ++invokeSeq;
      this.start = Date.now();
      invokeCounts[this.handle] = (invokeCounts[this.handle] || 0) + 1;
      if (inCount && inTensor) {
        const list = [];
        const n = inCount(this.interp);
        for (let i = 0; i < n; i++) list.push(read(inTensor(this.interp, i)));
        captureTensors(this.handle, 'input', list, 'tflite', this.seq);
      }
    },
    onLeave(retval) {
      if (outCount && outTensor) {
        const list = [];
        const n = outCount(this.interp);
        for (let i = 0; i < n; i++) list.push(read(outTensor(this.interp, i)));
        captureTensors(this.handle, 'output', list, 'tflite', this.seq);
      }
      emit('invoke', { runtime: 'tflite', api: 'TfLiteInterpreterInvoke', seq: this.seq, interpreter: this.handle, model: interpreterModels[this.handle] || null, duration_ms: Date.now() - this.start, tensors: !!(inCount && inTensor) }, null, true);
    },
  });
}

// ------------------------------------------------------------------- TFLite: C++ (symbols, no C API)

// Where a Subgraph keeps its TfLiteContext and its inputs_/outputs_ vectors. Found, not hard-coded:
// TfLiteContext.impl_ (offset 3 * pointer) points back at the Subgraph, and after the context come
// inputs_ then outputs_, two std::vector<int> (tflite/core/subgraph.h). Candidates are validated: both
// vectors non-empty, disjoint, every index inside the tensor array, and a tensor stride at which the
// tensors read as tensors. (No Subgraph method is called: GetInputTensorsCount aborts when called
// from outside in some builds.) Used only where no C API exists, e.g. statically linked TFLite.
const subgraphLayouts = {};

function findSubgraphLayout(sg, read) {
  const key = sg.toString();
  if (subgraphLayouts[key] !== undefined) return subgraphLayouts[key];
  let layout = null;
  const dbg = {};
  try {
    let ctxOff = -1;
    for (let off = 3 * ptrSize; off < 4096; off += ptrSize) {
      if (sg.add(off).readPointer().equals(sg)) {
        ctxOff = off - 3 * ptrSize;
        break;
      }
    }
    if (ctxOff >= 0) {
      const ctx = sg.add(ctxOff);
      const nTensors = parseInt(ctx.readPointer().toString());
      const tensors = ctx.add(2 * ptrSize).readPointer();
      dbg.ctxOff = ctxOff;
      dbg.nTensors = nTensors;
      const vec = function (off) {
        const b = sg.add(off).readPointer();
        const e = sg.add(off + ptrSize).readPointer();
        const c = sg.add(off + 2 * ptrSize).readPointer();
        if (b.isNull() || e.compare(b) < 0 || c.compare(e) < 0) return null;
        const n = e.sub(b).toInt32();
        if (n % 4 !== 0 || n > 4 * 4096) return null;
        const idx = [];
        for (let i = 0; i < n / 4; i++) {
          const v = b.add(4 * i).readS32();
          if (v < 0 || v >= nTensors) return null;
          idx.push(v);
        }
        return idx;
      };
      for (let off = ctxOff + 8 * ptrSize; off < ctxOff + 4096; off += ptrSize) {
        const ins = vec(off);
        if (ins === null || ins.length === 0) continue;
        const outs = vec(off + 3 * ptrSize);
        if (outs === null || outs.length === 0) continue;
        if (ins.some(function (i) { return outs.indexOf(i) >= 0; })) continue; // graph inputs are not outputs
        const stride = tensorStride(tensors, nTensors, read);
        dbg.inputsOff = off;
        dbg.stride = stride;
        if (stride === null) break;
        layout = { ctxOff: ctxOff, stride: stride, inputsOff: off, outputsOff: off + 3 * ptrSize, vec: vec };
        break;
      }
    }
  } catch (e) {
    noteError('subgraph layout', e);
  }
  if (layout === null) noteError('subgraph layout', 'not found for ' + key + ' ' + JSON.stringify(dbg));
  subgraphLayouts[key] = layout;
  return layout;
}

function installTfliteCxx(mod) {
  let symbols = [];
  try {
    symbols = mod.enumerateExports().concat(mod.enumerateSymbols());
  } catch (e) {
    noteError('symbols ' + mod.name, e);
  }
  const byName = {};
  for (const s of symbols) if (!s.address.isNull() && byName[s.name] === undefined) byName[s.name] = s.address;
  const find = function (n) {
    return byName[n] || null;
  };
  if (find('TfLiteInterpreterInvoke')) installTfliteCApi(mod, find);

  // Build* return std::unique_ptr through a hidden result pointer: rdi on x86-64 and r0 on arm32 (so the
  // declared arguments shift by one), x8 on arm64 (no shift).
  const shift = Process.arch === 'arm64' ? 0 : 1;
  const depth = {};
  let hooked = 0;
  const buildRe = /FlatBufferModel.*(BuildFromBuffer|BuildFromFile|BuildFromAllocation)/;
  for (const name in byName) {
    if (!buildRe.test(name) || !name.startsWith('_ZN6tflite')) continue;
    const isFile = /BuildFromFile/.test(name);
    const isAlloc = /BuildFromAllocation/.test(name);
    const api = name.indexOf('Verify') >= 0 ? 'FlatBufferModel::VerifyAndBuildFrom' : 'FlatBufferModel::BuildFrom';
    const label = api + (isFile ? 'File' : isAlloc ? 'Allocation' : 'Buffer');
    try {
      attachOnce(byName[name], {
        onEnter(args) {
          const tid = this.threadId;
          depth[tid] = (depth[tid] || 0) + 1;
          this.outer = depth[tid] === 1; // Buffer builds call Allocation builds: record the outermost
          if (!this.outer) return;
          this.result = shift ? args[0] : this.context.x8;
          try {
            if (isFile) {
              this.path = args[shift].readUtf8String();
            } else if (isAlloc) {
              // unique_ptr<Allocation> is passed by invisible reference; Allocation's vtable is
              // [~D1, ~D0, base(), bytes(), valid()].
              const alloc = args[shift].readPointer();
              const vt = alloc.readPointer();
              this.buf = new NativeFunction(vt.add(2 * ptrSize).readPointer(), 'pointer', ['pointer'])(alloc);
              this.size = parseInt(new NativeFunction(vt.add(3 * ptrSize).readPointer(), 'size_t', ['pointer'])(alloc).toString());
            } else {
              this.buf = args[shift];
              this.size = parseInt(args[shift + 1].toString());
            }
          } catch (e) {
            noteError(label, e);
          }
        },
        onLeave(retval) {
          depth[this.threadId]--;
          if (!this.outer) return;
          let handle = null;
          try {
            handle = this.result.readPointer().toString();
          } catch (e) {
            /* result slot unreadable */
          }
          lastModelHandle = handle;
          let d;
          let fields;
          if (this.path) {
            d = dumpFile(this.path);
            fields = { source: 'file', path: this.path };
          } else if (this.buf) {
            const src = rangeSource(this.buf);
            d = dumpBuffer(this.buf, this.size);
            fields = { source: src && src.asset ? 'asset' : src ? 'file' : 'buffer', path: src ? src.path : null, address: this.buf.toString() };
          } else {
            d = { data: null, fields: {} };
            fields = {};
          }
          emit('model_load', Object.assign({ runtime: 'tflite', api: label, handle: handle }, fields, d.fields), d.data, true);
        },
      });
      hooked++;
    } catch (e) {
      noteError('attach ' + name, e);
    }
  }

  const sgInvoke = find('_ZN6tflite8Subgraph6InvokeEv');
  const read = tensorReaders(find);
  const invDepth = {};
  const seen = {};
  const readIo = function (ctx, io) {
    const layout = ctx.layout;
    const idx = layout.vec(io === 'input' ? layout.inputsOff : layout.outputsOff);
    if (idx === null) return;
    // The tensor array can move when tensors are added: read it from the context each time.
    const tensors = ctx.self.add(layout.ctxOff + 2 * ptrSize).readPointer();
    const list = idx.map(function (ti) {
      return read(tensors.add(ti * layout.stride));
    });
    captureTensors(ctx.handle, io, list, 'tflite', ctx.seq);
  };
  const attachInvoke = function (addr, api, withTensors) {
    attachOnce(addr, {
      onEnter(args) {
        const tid = this.threadId;
        invDepth[tid] = (invDepth[tid] || 0) + 1;
        this.outer = invDepth[tid] === 1; // control-flow ops invoke nested subgraphs
        if (!this.outer) return;
        this.self = args[0];
        this.handle = args[0].toString();
        this.seq = ++invokeSeq;
        this.start = Date.now();
        if (interpreterModels[this.handle] === undefined && lastModelHandle !== null) {
          // No C API to link them: the most recent model load before an interpreter's first invoke.
          interpreterModels[this.handle] = lastModelHandle;
          if (!seen[this.handle]) {
            seen[this.handle] = true;
            emit('interpreter', { runtime: 'tflite', api: api + ' (first invoke)', interpreter: this.handle, model: lastModelHandle }, null, true);
          }
        }
        invokeCounts[this.handle] = (invokeCounts[this.handle] || 0) + 1;
        this.layout = withTensors ? findSubgraphLayout(this.self, read) : null;
        if (this.layout) readIo(this, 'input');
      },
      onLeave(retval) {
        invDepth[this.threadId]--;
        if (!this.outer) return;
        if (this.layout) readIo(this, 'output');
        emit('invoke', { runtime: 'tflite', api: api, seq: this.seq, interpreter: this.handle, model: interpreterModels[this.handle] || null, duration_ms: Date.now() - this.start, tensors: !!this.layout }, null, true);
      },
    });
  };
  if (sgInvoke) {
    try {
      attachInvoke(sgInvoke, 'tflite::Subgraph::Invoke', true);
      hooked++;
    } catch (e) {
      noteError('attach Subgraph::Invoke', e);
    }
  } else {
    const interp = find('_ZN6tflite4impl11Interpreter6InvokeEv') || find('_ZN6tflite11Interpreter6InvokeEv');
    if (interp) {
      try {
        attachInvoke(interp, 'tflite::Interpreter::Invoke', false);
        hooked++;
      } catch (e) {
        noteError('attach Interpreter::Invoke', e);
      }
    }
  }
  return hooked;
}

// sizeof(TfLiteTensor) differs between TFLite versions (fields were appended over time): find the
// stride at which consecutive tensors all read as tensors (known type code, readable name, dims array).
function tensorStride(tensors, n, read) {
  const k = Math.min(n, 6);
  for (let stride = 8 * ptrSize; stride <= 64 * ptrSize; stride += ptrSize) {
    let ok = k > 1;
    for (let i = 0; i < k && ok; i++) {
      try {
        const info = read(tensors.add(i * stride));
        ok = info.type_code >= 0 && info.type_code <= 20 && info.name !== null && /^[\x20-\x7e]*$/.test(info.name) && info.shape.length <= 8;
      } catch (e) {
        ok = false;
      }
    }
    if (ok) return stride;
  }
  return null;
}

// ---------------------------------------------------------------------------- TFLite: JNI exports

// JNIEnv function-table calls, so the JNI hooks work without the Java bridge.
function jni(env, slot, ret, args) {
  return new NativeFunction(env.readPointer().add(slot * ptrSize).readPointer(), ret, args);
}
function jniString(env, jstr) {
  if (jstr.isNull()) return null;
  const chars = jni(env, 169, 'pointer', ['pointer', 'pointer', 'pointer'])(env, jstr, ptr(0));
  const s = chars.readUtf8String();
  jni(env, 170, 'void', ['pointer', 'pointer', 'pointer'])(env, jstr, chars);
  return s;
}
function jniDirectBuffer(env, buf) {
  const addr = jni(env, 230, 'pointer', ['pointer', 'pointer'])(env, buf);
  const cap = parseInt(jni(env, 231, 'int64', ['pointer', 'pointer'])(env, buf).toString());
  return { address: addr, capacity: cap };
}

let tfliteJniHooked = false;
function installTfliteJni(mod) {
  tfliteJniHooked = true;
  const P = 'Java_org_tensorflow_lite_NativeInterpreterWrapper_';
  hookExport(mod, P + 'createModel', {
    onEnter(args) {
      try {
        this.path = jniString(args[0], args[2]);
      } catch (e) {
        noteError('createModel', e);
      }
    },
    onLeave(retval) {
      const d = this.path ? dumpFile(this.path) : { data: null, fields: {} };
      lastModelHandle = retval.toString();
      emit('model_load', Object.assign({ runtime: 'tflite', api: 'NativeInterpreterWrapper.createModel', handle: retval.toString(), source: 'file', path: this.path || null }, d.fields), d.data, true);
    },
  });
  hookExport(mod, P + 'createModelWithBuffer', {
    onEnter(args) {
      try {
        this.b = jniDirectBuffer(args[0], args[2]);
      } catch (e) {
        noteError('createModelWithBuffer', e);
      }
    },
    onLeave(retval) {
      if (!this.b) return;
      const src = rangeSource(this.b.address);
      const d = dumpBuffer(this.b.address, this.b.capacity);
      lastModelHandle = retval.toString();
      emit('model_load', Object.assign({ runtime: 'tflite', api: 'NativeInterpreterWrapper.createModelWithBuffer', handle: retval.toString(), source: src && src.asset ? 'asset' : 'buffer', path: src ? src.path : null, address: this.b.address.toString() }, d.fields), d.data, true);
    },
  });
  hookExport(mod, P + 'createInterpreter', {
    onEnter(args) {
      this.model = args[2].toString();
    },
    onLeave(retval) {
      interpreterModels[retval.toString()] = this.model;
      emit('interpreter', { runtime: 'tflite', api: 'NativeInterpreterWrapper.createInterpreter', interpreter: retval.toString(), model: this.model }, null, true);
    },
  });
  // Input tensors through the library's own exports (ANDROID_HOOKS.md §1b recipe); clazz is unused.
  const nf = function (n, ret, a) {
    const p = mod.findExportByName(n);
    return p ? new NativeFunction(p, ret, a) : null;
  };
  const getInputCount = nf(P + 'getInputCount', 'int32', ['pointer', 'pointer', 'int64']);
  const getInputIndex = nf(P + 'getInputTensorIndex', 'int32', ['pointer', 'pointer', 'int64', 'int32']);
  const T = mod.findExportByName('Java_org_tensorflow_lite_TensorImpl_create') ? 'Java_org_tensorflow_lite_TensorImpl_' : 'Java_org_tensorflow_lite_Tensor_';
  const tCreate = nf(T + 'create', 'int64', ['pointer', 'pointer', 'int64', 'int32', 'int32']);
  const tBuffer = nf(T + 'buffer', 'pointer', ['pointer', 'pointer', 'int64']);
  const tDtype = nf(T + 'dtype', 'int32', ['pointer', 'pointer', 'int64']);
  const tShape = nf(T + 'shape', 'pointer', ['pointer', 'pointer', 'int64']);
  const tName = nf(T + 'name', 'pointer', ['pointer', 'pointer', 'int64']);
  const tScale = nf(T + 'quantizationScale', 'float', ['pointer', 'pointer', 'int64']);
  const tZero = nf(T + 'quantizationZeroPoint', 'int32', ['pointer', 'pointer', 'int64']);
  const tDelete = nf(T + 'delete', 'void', ['pointer', 'pointer', 'int64']);
  const canRead = getInputCount && getInputIndex && tCreate && tBuffer && tDtype && tShape;
  const runHook = function (api) {
    return {
      onEnter(args) {
        const env = args[0];
        this.handle = args[2].toString();
        this.seq = ++invokeSeq;
        this.start = Date.now();
        invokeCounts[this.handle] = (invokeCounts[this.handle] || 0) + 1;
        if (!canRead || api !== 'NativeInterpreterWrapper.run') return;
        try {
          const interp = args[2];
          const n = getInputCount(env, ptr(0), interp);
          const list = [];
          for (let i = 0; i < n; i++) {
            const ti = getInputIndex(env, ptr(0), interp, i);
            const h = tCreate(env, ptr(0), interp, ti, 0);
            const bb = tBuffer(env, ptr(0), h);
            const b = jniDirectBuffer(env, bb);
            const shapeArr = tShape(env, ptr(0), h);
            const nd = jni(env, 171, 'int32', ['pointer', 'pointer'])(env, shapeArr);
            const dims = Memory.alloc(4 * Math.max(1, nd));
            jni(env, 203, 'void', ['pointer', 'pointer', 'int32', 'int32', 'pointer'])(env, shapeArr, 0, nd, dims);
            const shape = [];
            for (let k = 0; k < nd; k++) shape.push(dims.add(4 * k).readS32());
            const code = tDtype(env, ptr(0), h);
            const info = { type_code: code, dtype: TFLITE_DTYPES[code] || null, shape: shape, bytes: b.capacity, data: b.address, name: tName ? jniString(env, tName(env, ptr(0), h)) : null };
            if (tScale && tZero) {
              const s = tScale(env, ptr(0), h);
              if (s) info.quantization = { scale: s, zero_point: tZero(env, ptr(0), h) };
            }
            list.push(info);
            if (tDelete) tDelete(env, ptr(0), h);
          }
          captureTensors(this.handle, 'input', list, 'tflite', this.seq);
          this.tensors = true;
        } catch (e) {
          noteError(api + ' tensors', e);
        }
      },
      onLeave(retval) {
        emit('invoke', { runtime: 'tflite', api: api, seq: this.seq, interpreter: this.handle, model: interpreterModels[this.handle] || null, duration_ms: Date.now() - this.start, tensors: !!this.tensors }, null, true);
      },
    };
  };
  hookExport(mod, P + 'run', runHook('NativeInterpreterWrapper.run'));
  hookExport(mod, 'Java_org_tensorflow_lite_NativeSignatureRunnerWrapper_nativeInvoke', runHook('NativeSignatureRunnerWrapper.nativeInvoke'));
}

// ------------------------------------------------------------------------------- ONNX Runtime (C API)

function installOrt(mod) {
  const base = mod.findExportByName('OrtGetApiBase');
  if (base === null) return;
  try {
    const apiBase = new NativeFunction(base, 'pointer', [])();
    const api = new NativeFunction(apiBase.readPointer(), 'pointer', ['uint32'])(1);
    const slot = function (i) {
      return api.add(i * ptrSize).readPointer();
    };
    Interceptor.attach(slot(7), {
      onEnter(args) {
        this.path = args[1].readUtf8String();
        this.out = args[3];
      },
      onLeave(retval) {
        if (!retval.isNull()) return; // an OrtStatus*: failed
        const d = dumpFile(this.path);
        emit('model_load', Object.assign({ runtime: 'onnxruntime', api: 'OrtApi::CreateSession', handle: this.out.readPointer().toString(), source: 'file', path: this.path }, d.fields), d.data, true);
      },
    });
    Interceptor.attach(slot(8), {
      onEnter(args) {
        this.buf = args[1];
        this.size = parseInt(args[2].toString());
        this.out = args[4];
      },
      onLeave(retval) {
        if (!retval.isNull()) return;
        const src = rangeSource(this.buf);
        const d = dumpBuffer(this.buf, this.size);
        emit('model_load', Object.assign({ runtime: 'onnxruntime', api: 'OrtApi::CreateSessionFromArray', handle: this.out.readPointer().toString(), source: src && src.asset ? 'asset' : 'buffer', path: src ? src.path : null, address: this.buf.toString() }, d.fields), d.data, true);
      },
    });
    Interceptor.attach(slot(9), {
      onEnter(args) {
        this.handle = args[0].toString();
        this.seq = ++invokeSeq;
        this.start = Date.now();
      },
      onLeave() {
        emit('invoke', { runtime: 'onnxruntime', api: 'OrtApi::Run', seq: this.seq, interpreter: this.handle, model: this.handle, duration_ms: Date.now() - this.start, tensors: false }, null, true);
      },
    });
  } catch (e) {
    noteError('onnxruntime ' + mod.name, e);
  }
}

// ------------------------------------------------------------------------------------------- watch

function installWatch(spec, mod) {
  // "module!name" or "name": a native export/symbol. Returns true once attached.
  const bang = spec.indexOf('!');
  const modName = bang >= 0 ? spec.slice(0, bang) : null;
  const name = bang >= 0 ? spec.slice(bang + 1) : spec;
  if (modName !== null && mod !== null && mod.name !== modName) return false;
  let addr = null;
  try {
    if (mod !== null) {
      addr = mod.findExportByName(name);
      if (addr === null) addr = mod.findSymbolByName ? mod.findSymbolByName(name) : null;
    } else if (modName === null) {
      addr = Module.findGlobalExportByName(name);
    }
  } catch (e) {
    noteError('watch ' + spec, e);
  }
  if (addr === null) return false;
  attachOnce(addr, {
    onEnter(args) {
      this.admitted = admit(false);
      if (!this.admitted) return;
      const out = [];
      let payload = null;
      for (let i = 0; i < 6; i++) {
        const a = args[i];
        const item = { i: i, value: a.toString() };
        try {
          const r = Process.findRangeByAddress(a);
          if (r !== null && r.protection.indexOf('r') === 0) {
            const bytes = a.readByteArray(cfg.watchBytes);
            item.hex = hexOf(bytes);
            // A NUL-terminated printable prefix is shown as a string too.
            const nul = new Uint8Array(bytes).indexOf(0);
            if (nul >= 2) {
              try {
                const s = a.readUtf8String(nul);
                if (/^[\x20-\x7e]+$/.test(s)) item.string = s;
              } catch (e) {
                /* not text */
              }
            }
            if (payload === null) payload = bytes;
          }
        } catch (e) {
          /* an integer, not a pointer */
        }
        out.push(item);
      }
      emit('watch', { target: spec, phase: 'enter', args: out }, payload, false, true);
    },
    onLeave(retval) {
      if (this.admitted) emit('watch', { target: spec, phase: 'leave', retval: retval.toString() });
    },
  });
  return true;
}

// ------------------------------------------------------------------------------- module observer

const watchPending = cfg.watch.filter(function (s) {
  return s.indexOf('!') >= 0 || !/\./.test(s); // Java "pkg.Class.method" specs go to the Java side
});
const hookedModules = {};

function onModule(mod) {
  if (hookedModules[mod.path]) return;
  hookedModules[mod.path] = true;
  emit('library_load', { name: mod.name, path: mod.path, base: mod.base.toString(), size: mod.size, api: 'module-observer' });
  const n = mod.name;
  try {
    if (n === 'libandroid.so') installAssetHooks(mod);
    if (mod.findExportByName('OrtGetApiBase') !== null) installOrt(mod);
    if (mod.findExportByName('Java_org_tensorflow_lite_NativeInterpreterWrapper_run') !== null) installTfliteJni(mod);
    if (/tensorflow|tflite|litert|tfl/i.test(n)) {
      installTfliteCxx(mod);
    } else if (mod.findExportByName('TfLiteInterpreterInvoke') !== null) {
      installTfliteCApi(mod, function (s) {
        return mod.findExportByName(s);
      });
    }
  } catch (e) {
    noteError('hooks ' + n, e);
  }
  for (let i = watchPending.length - 1; i >= 0; i--) {
    try {
      if (installWatch(watchPending[i], mod)) watchPending.splice(i, 1);
    } catch (e) {
      noteError('watch ' + watchPending[i], e);
    }
  }
}

// --------------------------------------------------------------------------------------------- Java

function javaBridge() {
  if (typeof Java !== 'undefined') return Java;
  if (typeof globalThis !== 'undefined' && globalThis.Java) return globalThis.Java;
  return null;
}

function installJava(J) {
  J.perform(function () {
    const tryHook = function (what, fn) {
      try {
        fn();
      } catch (e) {
        noteError('java ' + what, e);
      }
    };
    tryHook('System.loadLibrary', function () {
      const System = J.use('java.lang.System');
      System.loadLibrary.implementation = function (name) {
        emit('library_load', { name: 'lib' + name + '.so', api: 'System.loadLibrary' });
        return this.loadLibrary(name);
      };
    });
    tryHook('tflite Interpreter', function () {
      const Interp = J.use('org.tensorflow.lite.Interpreter');
      Interp.$init.overloads.forEach(function (ov) {
        ov.implementation = function () {
          const a0 = arguments[0];
          try {
            const cls = a0 && a0.$className ? a0.$className : '';
            if (cls === 'java.io.File') {
              emit('file_open', { path: a0.getAbsolutePath(), api: 'Interpreter(File)' });
            } else if (!tfliteJniHooked && a0 && a0.isDirect && a0.isDirect()) {
              // A runtime whose JNI library we did not recognise (e.g. Play Services): dump the buffer here.
              const addr = J.vm.getEnv().getDirectBufferAddress(a0.$h);
              const src = rangeSource(addr);
              const d = dumpBuffer(addr, a0.capacity());
              emit('model_load', Object.assign({ runtime: 'tflite', api: 'Interpreter(ByteBuffer)', source: src && src.asset ? 'asset' : 'buffer', path: src ? src.path : null, address: addr.toString() }, d.fields), d.data, true);
            }
          } catch (e) {
            noteError('Interpreter.<init>', e);
          }
          return ov.apply(this, arguments);
        };
      });
    });
    const pathLoad = function (clsName, api) {
      tryHook(api, function () {
        const C = J.use(clsName);
        C.load.overloads.forEach(function (ov) {
          ov.implementation = function () {
            const path = String(arguments[0]);
            const d = dumpFile(path);
            emit('model_load', Object.assign({ runtime: 'pytorch_mobile', api: api, source: 'file', path: path }, d.fields), d.data, true);
            return ov.apply(this, arguments);
          };
        });
      });
    };
    pathLoad('org.pytorch.Module', 'org.pytorch.Module.load');
    pathLoad('org.pytorch.LiteModuleLoader', 'org.pytorch.LiteModuleLoader.load');
    tryHook('OrtEnvironment.createSession', function () {
      const E = J.use('ai.onnxruntime.OrtEnvironment');
      E.createSession.overloads.forEach(function (ov) {
        ov.implementation = function () {
          const a0 = arguments[0];
          if (typeof a0 === 'string') emit('file_open', { path: a0, api: 'OrtEnvironment.createSession' });
          return ov.apply(this, arguments);
        };
      });
    });
    // Bitmaps: the source of a createScaledBitmap (the image the app is about to preprocess). The pixels
    // go out as non-premultiplied RGBA from getPixels (ARGB ints), tagged with the next invoke number.
    tryHook('Bitmap.createScaledBitmap', function () {
      const Bitmap = J.use('android.graphics.Bitmap');
      const ov = Bitmap.createScaledBitmap.overload('android.graphics.Bitmap', 'int', 'int', 'boolean');
      ov.implementation = function (src, w, h, filter) {
        try {
          captureBitmap(src, 'createScaledBitmap(filter=' + filter + ', ' + w + 'x' + h + ')');
        } catch (e) {
          noteError('bitmap', e);
        }
        return ov.call(this, src, w, h, filter);
      };
    });
    // A crop the app cuts out of a frame (a face box) before scaling it: the source is captured with the
    // crop rectangle, so the box is read, not guessed.
    tryHook('Bitmap.createBitmap(crop)', function () {
      const Bitmap = J.use('android.graphics.Bitmap');
      const ov = Bitmap.createBitmap.overload('android.graphics.Bitmap', 'int', 'int', 'int', 'int');
      ov.implementation = function (src, x, y, w, h) {
        try {
          captureBitmap(src, 'createBitmap(' + x + ',' + y + ',' + w + ',' + h + ')', [x, y, w, h]);
        } catch (e) {
          noteError('bitmap crop', e);
        }
        return ov.call(this, src, x, y, w, h);
      };
    });
    // Camera frames: NV21 bytes handed to YuvImage (the usual CameraX/Camera1 -> Bitmap route). The
    // planes go out as they are (Y then VU, no row padding when strides are absent).
    tryHook('YuvImage', function () {
      const YuvImage = J.use('android.graphics.YuvImage');
      const ov = YuvImage.$init.overload('[B', 'int', 'int', 'int', '[I');
      ov.implementation = function (data, format, w, h, strides) {
        try {
          if (format === 17 && strides === null && w * h >= cfg.bitmapMinPixels) { // ImageFormat.NV21
            const n = w * h + 2 * Math.ceil(w / 2) * Math.ceil(h / 2);
            if (n <= cfg.maxTensorBytes && data.length >= n) {
              const out = new Uint8Array(n);
              for (let i = 0; i < n; i++) out[i] = data[i] & 255;
              emit('bitmap', { width: w, height: h, format: 'NV21', invoke: invokeSeq + 1, api: 'YuvImage(NV21)' }, out.buffer);
            }
          }
        } catch (e) {
          noteError('yuv frame', e);
        }
        return ov.call(this, data, format, w, h, strides);
      };
    });
    // Camera frames as android.media.Image (YUV_420_888, e.g. CameraX ImageAnalysis) handed to an ML
    // library: the three planes are repacked to I420 (row and pixel strides removed). Only hooked when
    // the app ships the library (no error noise for the others).
    const optional = function (name) {
      try {
        return J.use(name);
      } catch (e) {
        return null;
      }
    };
    const imageHooks = [
      ['com.google.mediapipe.framework.image.MediaImageBuilder', '$init', 'MediaImageBuilder(Image)'],
      ['org.tensorflow.lite.support.image.TensorImage', 'load', 'TensorImage.load(Image)'],
    ];
    imageHooks.forEach(function (h) {
      const C = optional(h[0]);
      if (C === null) return;
      tryHook(h[2], function () {
        const ov = C[h[1]].overload('android.media.Image');
        ov.implementation = function (image) {
          try {
            captureImagePlanes(image, h[2]);
          } catch (e) {
            noteError('image planes', e);
          }
          return ov.call(this, image);
        };
      });
    });
  });
}

function captureImagePlanes(image, api) {
  if (image.getFormat() !== 35) return; // ImageFormat.YUV_420_888
  const w = image.getWidth();
  const h = image.getHeight();
  const cw = (w + 1) >> 1;
  const ch = (h + 1) >> 1;
  const n = w * h + 2 * cw * ch;
  if (w * h < cfg.bitmapMinPixels || n > cfg.maxTensorBytes) return;
  const J = javaBridge();
  const env = J.vm.getEnv();
  const planes = image.getPlanes();
  const out = new Uint8Array(n);
  let off = 0;
  for (let p = 0; p < 3; p++) {
    const plane = planes[p];
    const addr = env.getDirectBufferAddress(plane.getBuffer().$h);
    const rowStride = plane.getRowStride();
    const pixelStride = plane.getPixelStride();
    const pw = p === 0 ? w : cw;
    const ph = p === 0 ? h : ch;
    for (let y = 0; y < ph; y++) {
      // The last row of a plane may end right after its last pixel: read only what the row holds.
      const row = new Uint8Array(addr.add(y * rowStride).readByteArray((pw - 1) * pixelStride + 1));
      for (let x = 0; x < pw; x++) out[off++] = row[x * pixelStride];
    }
  }
  emit('bitmap', { width: w, height: h, format: 'I420', invoke: invokeSeq + 1, api: api }, out.buffer);
}

function captureBitmap(bmp, api, crop) {
  const w = bmp.getWidth();
  const h = bmp.getHeight();
  if (w * h < cfg.bitmapMinPixels || w * h * 4 > cfg.maxTensorBytes) return;
  const J = javaBridge();
  const px = J.array('int', new Array(w * h).fill(0));
  bmp.getPixels(px, 0, w, 0, 0, w, h);
  const out = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    const v = px[i];
    out[4 * i] = (v >> 16) & 255;
    out[4 * i + 1] = (v >> 8) & 255;
    out[4 * i + 2] = v & 255;
    out[4 * i + 3] = (v >>> 24) & 255;
  }
  const fields = { width: w, height: h, format: 'RGBA_8888', premultiplied: false, invoke: invokeSeq + 1, api: api };
  if (crop) fields.crop = crop;
  emit('bitmap', fields, out.buffer);
}

// --------------------------------------------------------------------------------------------- main

function main() {
  const J = javaBridge();
  emit('session', { agent_version: AGENT_VERSION, pid: Process.id, abi: Process.arch, platform: J !== null ? 'android' : Process.platform, java: J !== null }, null, true);
  installFileHooks();
  Process.attachModuleObserver({
    onAdded(mod) {
      onModule(mod);
    },
  });
  for (let i = watchPending.length - 1; i >= 0; i--) {
    if (watchPending[i].indexOf('!') < 0 && installWatch(watchPending[i], null)) watchPending.splice(i, 1);
  }
  if (J !== null && J.available) installJava(J);
}

rpc.exports = {
  info() {
    return { agent_version: AGENT_VERSION, schema: SCHEMA_VERSION, pending_watch: watchPending.slice() };
  },
  flush() {
    emit('stats', { dropped: stats.dropped, capped: stats.capped }, null, true);
    stats.dropped = 0;
    stats.capped = 0;
    return true;
  },
};

main();
