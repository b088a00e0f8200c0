/* A stand-in for an app that runs its model in its own engine (as TikTok runs ByteNN): a weight file
 * format nothing else reads ("SIE1"), an exported run function, an unexported one reachable only by its
 * offset, a camera loop whose frames go through the engine, and a result callback that hands a JSON
 * message to post_message (as TikTok's MessageCenter.postMessage).
 *
 * Built by tests/inapp/standin.py twice from this file: the program (stripped after its static run
 * function's offset was read with nm) and, with -DSTANDIN_LIBRARY, a shared library the tests call
 * through ctypes to get the engine's outputs directly.
 *
 * Program: standin WEIGHTS. Environment (test knobs):
 *   STANDIN_CRASH_SUM=S     SIGSEGV in a run function (exported or by offset) given the input whose
 *                           content sum (content_sum below) is S: a bug that one image triggers, every time
 *   STANDIN_HANG_SUM=S      hang forever on that input instead
 *   STANDIN_FED_FILE=PATH   a run function creates PATH when called (tests check nothing was fed)
 *   STANDIN_GARBLE_AT=N     the Nth call posts a message that is not JSON
 *   STANDIN_ASYNC_MS=N      results are posted from another thread N ms after the call returned
 *   STANDIN_CALL_US=N       every call takes N microseconds longer (a slow engine)
 *   STANDIN_FRAME_MS=N      camera frame interval (default 2 ms)
 *   STANDIN_CAMERA=0        no camera frames (the app's screen without its camera view)
 *   STANDIN_MAX_SECONDS=N   exit after N seconds (default 600): no stray process outlives a test
 * It also exits when its parent process dies (a killed host).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef STANDIN_VERSION
#define STANDIN_VERSION "1.4.2"
#endif

#define EXPORT __attribute__((visibility("default"), noinline))

enum { FMT_RGB888 = 1, FMT_RGBA8888 = 2 };

typedef struct {
  int in_w, in_h, c1, c2, n_out;
  float *w1, *b1, *w2, *b2, *w3, *b3;
} Engine;

static Engine engine;
static float *scratch1, *scratch2;

static int read_floats(FILE *f, float **dst, size_t n) {
  *dst = malloc(n * sizeof(float));
  return *dst && fread(*dst, sizeof(float), n, f) == n;
}

/* SIE1 file: magic, then uint32 in_w, in_h, c1, c2, n_out, then float32 w1[c1][3][3][3], b1[c1],
 * w2[c2][c1][3][3], b2[c2], w3[n_out][c2], b3[n_out] (little endian). */
EXPORT int standin_load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  char magic[4];
  uint32_t h[5];
  int ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "SIE1", 4) == 0 && fread(h, 4, 5, f) == 5;
  if (ok) {
    engine.in_w = h[0], engine.in_h = h[1], engine.c1 = h[2], engine.c2 = h[3], engine.n_out = h[4];
    ok = read_floats(f, &engine.w1, (size_t)engine.c1 * 27) && read_floats(f, &engine.b1, engine.c1) &&
         read_floats(f, &engine.w2, (size_t)engine.c2 * engine.c1 * 9) &&
         read_floats(f, &engine.b2, engine.c2) &&
         read_floats(f, &engine.w3, (size_t)engine.n_out * engine.c2) &&
         read_floats(f, &engine.b3, engine.n_out);
  }
  fclose(f);
  if (!ok) return -2;
  scratch1 = malloc(sizeof(float) * (engine.in_w / 2) * (engine.in_h / 2) * engine.c1);
  scratch2 = malloc(sizeof(float) * (engine.in_w / 4) * (engine.in_h / 4) * engine.c2);
  return 0;
}

EXPORT int standin_outputs(void) { return engine.n_out; }

/* 3x3 convolution, stride 2, zero padding 1, ReLU; HWC in, HWC out. */
static void conv3x3s2(const float *in, int w, int h, int cin, const float *wt, const float *b, int cout,
                      float *out) {
  int ow = w / 2, oh = h / 2;
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++)
      for (int o = 0; o < cout; o++) {
        float acc = b[o];
        for (int ky = 0; ky < 3; ky++) {
          int iy = 2 * y + ky - 1;
          if (iy < 0 || iy >= h) continue;
          for (int kx = 0; kx < 3; kx++) {
            int ix = 2 * x + kx - 1;
            if (ix < 0 || ix >= w) continue;
            const float *px = in + ((size_t)iy * w + ix) * cin;
            const float *k = wt + (((size_t)o * cin) * 3 + ky) * 3 + kx;
            for (int c = 0; c < cin; c++) acc += px[c] * k[(size_t)c * 9];
          }
        }
        out[((size_t)y * ow + x) * cout + o] = acc > 0 ? acc : 0;
      }
}

/* One engine instance with shared scratch, so one call at a time: the camera loop and a call from the
 * agent's thread would otherwise race on the scratch (seen: one wrong result in 40 before this lock). */
static pthread_mutex_t engine_lock = PTHREAD_MUTEX_INITIALIZER;
static int engine_run_locked(const uint8_t *pixels, int width, int height, int format, float *out);

static int engine_run(const uint8_t *pixels, int width, int height, int format, float *out) {
  pthread_mutex_lock(&engine_lock);
  int rc = engine_run_locked(pixels, width, height, format, out);
  pthread_mutex_unlock(&engine_lock);
  return rc;
}

/* The engine: pixels (RGB888 or RGBA8888, width x height = the model's input) -> n_out floats. */
static int engine_run_locked(const uint8_t *pixels, int width, int height, int format, float *out) {
  if (width != engine.in_w || height != engine.in_h) return -2;
  if (format != FMT_RGB888 && format != FMT_RGBA8888) return -3;
  int bpp = format == FMT_RGBA8888 ? 4 : 3;
  size_t n = (size_t)width * height;
  float *x = malloc(n * 3 * sizeof(float));
  for (size_t i = 0; i < n; i++)
    for (int c = 0; c < 3; c++) x[i * 3 + c] = (pixels[i * bpp + c] - 127.5f) / 127.5f;
  conv3x3s2(x, width, height, 3, engine.w1, engine.b1, engine.c1, scratch1);
  conv3x3s2(scratch1, width / 2, height / 2, engine.c1, engine.w2, engine.b2, engine.c2, scratch2);
  free(x);
  int cells = (width / 4) * (height / 4);
  for (int o = 0; o < engine.n_out; o++) {
    float acc = engine.b3[o];
    for (int c = 0; c < engine.c2; c++) {
      float mean = 0;
      for (int i = 0; i < cells; i++) mean += scratch2[(size_t)i * engine.c2 + c];
      acc += engine.w3[(size_t)o * engine.c2 + c] * (mean / cells);
    }
    out[o] = acc;
  }
  return 0;
}

/* The app's result message, as its effect SDK would post it: outputs 0 -> age, softmax(1, 2)[0] -> boy_prob. */
EXPORT int standin_format_message(const float *out, char *dst, int size) {
  float m = out[1] > out[2] ? out[1] : out[2];
  float e1 = expf(out[1] - m), e2 = expf(out[2] - m);
  return snprintf(dst, size,
                  "{\"face_count\":1,\"base_infos\":[{\"age\":%.9g,\"boy_prob\":%.9g}],\"raw\":[%.9g,%.9g,%.9g]}",
                  20.0f + 10.0f * out[0], e1 / (e1 + e2), out[0], out[1], out[2]);
}

/* What the app calls with every result (the hook point of the json_message read). */
static const char *volatile last_message;
static volatile unsigned messages_posted;
EXPORT void post_message(const char *json) {
  last_message = json; /* long enough a body for an inline hook to patch */
  messages_posted++;
}

static void *post_later(void *msg) {
  usleep(1000 * atoi(getenv("STANDIN_ASYNC_MS")));
  post_message(msg);
  free(msg);
  return NULL;
}

static __thread int garble_next; /* set by a test knob for the next message of the same thread */

static __attribute__((unused)) void emit(const float *out) {
  char msg[256];
  if (garble_next) {
    garble_next = 0;
    post_message("face_count=1; age=?"); /* an SDK that changed its message format */
    return;
  }
  standin_format_message(out, msg, sizeof msg);
  const char *async = getenv("STANDIN_ASYNC_MS");
  if (async && atoi(async) > 0) { /* as an SDK that delivers results on its own thread, later */
    pthread_t t;
    if (pthread_create(&t, NULL, post_later, strdup(msg)) == 0) pthread_detach(t);
    return;
  }
  post_message(msg);
}

EXPORT const char *standin_version(void) { return STANDIN_VERSION; }

/* Direct engine call for the tests (the library build): no callback, no knobs. */
EXPORT int standin_engine(const uint8_t *pixels, int width, int height, int format, float *out) {
  return engine_run(pixels, width, height, format, out);
}

#ifndef STANDIN_LIBRARY
static int calls;

static int env_int(const char *name, int fallback) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : fallback;
}

/* The input's bytes hashed (s = s * 31 + byte, 32 bits): how the test knobs pick an item by content. */
static unsigned content_sum(const uint8_t *p, int width, int height, int format) {
  size_t n = (size_t)width * height * (format == FMT_RGBA8888 ? 4 : 3);
  unsigned s = 0;
  for (size_t i = 0; i < n; i++) s = s * 31u + p[i];
  return s;
}

static void misbehave(const uint8_t *pixels, int width, int height, int format) {
  calls++;
  const char *fed = getenv("STANDIN_FED_FILE");
  if (fed && *fed) {
    FILE *f = fopen(fed, "a");
    if (f) fclose(f);
  }
  int slow = env_int("STANDIN_CALL_US", 0);
  if (slow > 0) usleep(slow);
  if (calls == env_int("STANDIN_GARBLE_AT", 0)) garble_next = 1;
  const char *crash = getenv("STANDIN_CRASH_SUM"), *hang = getenv("STANDIN_HANG_SUM");
  if (!pixels || width != engine.in_w || height != engine.in_h || (!(crash && *crash) && !(hang && *hang)))
    return;
  char sum[16];
  snprintf(sum, sizeof sum, "%u", content_sum(pixels, width, height, format));
  if (hang && strcmp(hang, sum) == 0)
    for (;;) pause();
  if (crash && strcmp(crash, sum) == 0) {
    int *volatile bad = (int *)(uintptr_t)8;
    *bad = 1; /* SIGSEGV: a real fault, as an app's bug would make */
  }
}

/* The exported entry point: run the engine, post the result message, return the status. */
EXPORT int standin_run(const uint8_t *pixels, int width, int height, int format, float *out) {
  misbehave(pixels, width, height, format);
  int rc = engine_run(pixels, width, height, format, out);
  if (rc == 0) emit(out);
  return rc;
}

/* The same entry without a symbol: static, kept out of line, found only by its offset. */
static __attribute__((noipa, used)) int run_internal(const uint8_t *pixels, int width, int height,
                                                        int format, float *out) {
  misbehave(pixels, width, height, format);
  int rc = engine_run(pixels, width, height, format, out);
  if (rc == 0) emit(out);
  return rc;
}

/* A return-value entry: the age output alone. */
EXPORT float standin_age(const uint8_t *pixels, int width, int height, int format) {
  float out[8];
  misbehave(pixels, width, height, format);
  return engine_run(pixels, width, height, format, out) == 0 ? out[0] : NAN;
}

/* The camera call site: every frame goes through the engine and its result is posted. */
EXPORT void standin_on_frame(uint8_t *frame, int width, int height, int format) {
  float out[8];
  if (engine_run(frame, width, height, format, out) == 0) emit(out);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: standin WEIGHTS\n");
    return 2;
  }
  if (standin_load(argv[1]) != 0) {
    fprintf(stderr, "standin: cannot load %s\n", argv[1]);
    return 3;
  }
  if (argc > 2 && strcmp(argv[2], "--offset-self-test") == 0) { /* keeps run_internal reachable */
    float out[8];
    return run_internal(NULL, 0, 0, 0, out) == -2 ? 0 : 1;
  }
  pid_t parent = getppid();
  int frame_ms = env_int("STANDIN_FRAME_MS", 2), max_s = env_int("STANDIN_MAX_SECONDS", 600);
  int camera = env_int("STANDIN_CAMERA", 1);
  size_t n = (size_t)engine.in_w * engine.in_h * 3;
  uint8_t *frame = malloc(n);
  struct timespec start, now, tick = {0, (long)frame_ms * 1000000L};
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (unsigned k = 0;; k++) {
    for (size_t i = 0; i < n; i++) frame[i] = (uint8_t)(i * 7 + k); /* the "camera" */
    if (camera) standin_on_frame(frame, engine.in_w, engine.in_h, FMT_RGB888);
    nanosleep(&tick, NULL);
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (getppid() != parent || now.tv_sec - start.tv_sec > max_s) return 0;
  }
}
#endif
