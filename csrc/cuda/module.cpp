// Python module entry for vqfast._C_cuda (GPU builds only). The ops are registered with
// TORCH_LIBRARY_FRAGMENT(vqfast_cuda, ...) in the *_binding.cpp files of this folder and
// reached through torch.ops.vqfast_cuda.*; importing this module loads them.
#include <Python.h>

static struct PyModuleDef vqfast_c_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&vqfast_c_cuda_module); }
