/* sampling.py's rule for plain rows (no greedy, no top-k or top-p cut), compiled.

   At batch 1 the generator calls the sampler once per character, and a dozen numpy calls on 65
   numbers, each with numpy's per-call cost and with caches the model's step has just emptied,
   cost a fifth of an int8 step. This is the same rule with the same float arithmetic in one
   call: rule 2 (logits - max, / temperature, in float32), rule 4 (exp in float64, rounded to
   float32) and rule 6 (sequential float32 sums, compared in float64 with uniform * total).

   Built where a C compiler is found at install (setup.py marks it optional) as the top-level
   module _charrnn_export_plain: top-level, so that the package read from a source tree (the
   tests') finds it in the environment an install put it in. sampling.py falls back to numpy
   without it. Rows with a logit that is not below SAFE_LOGIT in magnitude (NaN and
   inf included) are not judged here: the functions say so and the caller takes numpy's path,
   which judges each row (broken_rows).

   Compiled with -ffp-contract=off: a fused multiply-add would round differently from numpy. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define SAFE_LOGIT 1e38f

/* One row: the id, or -1 when a logit is not below SAFE_LOGIT in magnitude. `scratch` holds
   vocab floats. */
static Py_ssize_t plain_row(const float *logits, Py_ssize_t vocab, float temperature, int scale,
                            double uniform, Py_ssize_t unk, float *scratch)
{
    float max = -INFINITY;
    for (Py_ssize_t i = 0; i < vocab; i++) {
        float x = logits[i];
        if (!(fabsf(x) < SAFE_LOGIT))
            return -1;
        if (i != unk && x > max)
            max = x;
    }
    float total = 0.0f;
    for (Py_ssize_t i = 0; i < vocab; i++) {
        float scaled = i == unk ? -INFINITY : logits[i] - max;
        if (scale)
            scaled = scaled / temperature;
        total = total + (float)exp((double)scaled);
        scratch[i] = total;
    }
    double threshold = uniform * (double)total;
    Py_ssize_t lo = 0, hi = vocab;  /* the count of cdf entries <= threshold: cdf never decreases */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if ((double)scratch[mid] <= threshold)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int get_buffer(PyObject *obj, Py_buffer *view, const char *format, Py_ssize_t itemsize,
                      int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || view->format == NULL || strcmp(view->format, format) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous array of format '%s', got '%s'", name,
                     format, view->format ? view->format : "?");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* plain_id(logits (vocab,) float32, uniform, temperature, unk) -> id, or -1 (not judged here).
   unk: the id never sampled, or -1. */
static PyObject *plain_id(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "plain_id(logits, uniform, temperature, unk)");
        return NULL;
    }
    double uniform = PyFloat_AsDouble(args[1]);
    double temperature = PyFloat_AsDouble(args[2]);
    Py_ssize_t unk = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (get_buffer(args[0], &view, "f", 4, 0, "logits") < 0)
        return NULL;
    Py_ssize_t vocab = view.len / 4;
    float scratch_small[256];
    float *scratch = vocab <= 256 ? scratch_small : PyMem_Malloc(vocab * sizeof(float));
    if (scratch == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    float t = (float)temperature;
    Py_ssize_t id = plain_row((const float *)view.buf, vocab, t, t != 1.0f, uniform, unk, scratch);
    if (scratch != scratch_small)
        PyMem_Free(scratch);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(id);
}

/* plain_ids(logits (rows, vocab) float32, temperature (rows,) float32 or None, uniforms (rows,)
   float64, unk, out (rows,) int32) -> True, or False when some row has a logit not below
   SAFE_LOGIT (out is then incomplete: the caller judges every row with numpy). */
static PyObject *plain_ids(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "plain_ids(logits, temperature, uniforms, unk, out)");
        return NULL;
    }
    Py_ssize_t unk = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer lv, tv, uv, ov;
    int have_t = args[1] != Py_None;
    if (get_buffer(args[0], &lv, "f", 4, 0, "logits") < 0)
        return NULL;
    if (lv.ndim != 2) {
        PyBuffer_Release(&lv);
        PyErr_SetString(PyExc_ValueError, "logits: expected (rows, vocab)");
        return NULL;
    }
    Py_ssize_t rows = lv.shape[0], vocab = lv.shape[1];
    if (have_t && get_buffer(args[1], &tv, "f", 4, 0, "temperature") < 0) {
        PyBuffer_Release(&lv);
        return NULL;
    }
    if (get_buffer(args[2], &uv, "d", 8, 0, "uniforms") < 0) {
        PyBuffer_Release(&lv);
        if (have_t)
            PyBuffer_Release(&tv);
        return NULL;
    }
    if (get_buffer(args[4], &ov, "i", 4, 1, "out") < 0) {
        PyBuffer_Release(&lv);
        if (have_t)
            PyBuffer_Release(&tv);
        PyBuffer_Release(&uv);
        return NULL;
    }
    PyObject *result = NULL;
    if (uv.len / 8 < rows || ov.len / 4 < rows || (have_t && tv.len / 4 < rows)) {
        PyErr_SetString(PyExc_ValueError, "temperature, uniforms and out need a value per row");
        goto done;
    }
    float *scratch = PyMem_Malloc((vocab ? vocab : 1) * sizeof(float));
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *logits = (const float *)lv.buf;
    const float *temperatures = have_t ? (const float *)tv.buf : NULL;
    const double *uniforms = (const double *)uv.buf;
    int32_t *out = (int32_t *)ov.buf;
    int judged = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows; r++) {
        float t = temperatures ? temperatures[r] : 1.0f;
        Py_ssize_t id = plain_row(logits + r * vocab, vocab, t, t != 1.0f, uniforms[r], unk, scratch);
        if (id < 0) {
            judged = 0;
            break;
        }
        out[r] = (int32_t)id;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(scratch);
    result = PyBool_FromLong(judged);
done:
    PyBuffer_Release(&lv);
    if (have_t)
        PyBuffer_Release(&tv);
    PyBuffer_Release(&uv);
    PyBuffer_Release(&ov);
    return result;
}

static PyMethodDef methods[] = {
    {"plain_id", (PyCFunction)(void (*)(void))plain_id, METH_FASTCALL,
     "plain_id(logits, uniform, temperature, unk) -> id, or -1 when a logit is not below 1e38 in magnitude"},
    {"plain_ids", (PyCFunction)(void (*)(void))plain_ids, METH_FASTCALL,
     "plain_ids(logits, temperature or None, uniforms, unk, out) -> False when a row is not judged here"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_charrnn_export_plain", "sampling.py's plain rule, compiled",
                                    -1, methods};

PyMODINIT_FUNC PyInit__charrnn_export_plain(void) { return PyModule_Create(&module); }
