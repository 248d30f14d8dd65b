// Python module entry for vqfast._C. The ops themselves are registered with
// TORCH_LIBRARY_FRAGMENT(vqfast_cpu, ...) in the other files of this folder and are
// reached through torch.ops.vqfast_cpu.*; importing this module loads them.
#include <Python.h>

static struct PyModuleDef vqfast_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&vqfast_c_module); }
