// Python module entry for vqfast._C. The ops themselves are registered with
// TORCH_LIBRARY_FRAGMENT(vqfast_cpu, ...) in the other files of this folder and are
// reached through torch.ops.vqfast_cpu.* (benchmark- and test-only ops: torch.ops.vqfast_bench.*);
// importing this module loads them.
#include <Python.h>

#include <c10/util/Exception.h>

#include "isa.h"

namespace {

// cpu_kernels() -> {"search": ..., "sampling": ..., "diffusion": ..., "ema": ...}: the build of
// each kernel group that runs on this CPU ("avx512", "avx512-bf16" for the search when its bf16
// micro-kernel runs, "avx512-amx" when its candidate pass runs on AMX tiles, or "portable").
// ValueError for a VQFAST_CPU_PORTABLE or VQFAST_CPU_AMX other than 0 or 1.
PyObject* cpu_kernels(PyObject*, PyObject*) {
  try {
    const char* isa = vqfast::cpu::use_avx512() ? "avx512" : "portable";
    const char* search = vqfast::cpu::use_amx() ? "avx512-amx" : vqfast::cpu::cpu_has_bf16_dot() ? "avx512-bf16" : isa;
    return Py_BuildValue("{s:s,s:s,s:s,s:s}", "search", search, "sampling", isa, "diffusion", isa, "ema", isa);
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
}

PyMethodDef methods[] = {
    {"cpu_kernels", cpu_kernels, METH_NOARGS, "The build of each CPU kernel group that runs here."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef vqfast_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&vqfast_c_module); }
