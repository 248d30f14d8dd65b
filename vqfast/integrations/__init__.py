"""One-line speed-ups for the VQ libraries people already run (as Liger-Kernel does for
Hugging Face models): each apply_to_* patches its peer's hot paths in place with vqfast's
fused kernels, keeps the peer's signatures and results, passes every option it cannot
serve exactly through to the peer's own code, and returns a handle that reverts it.

    import vqfast.integrations as vi
    with vi.apply_to_vector_quantize_pytorch():
        quantized, indices, loss = vq(x)   # the user's unchanged code
    vi.stats()   # {"vector_quantize_pytorch.Codebook.forward": {"served": 1, "passed_through": 0}, ...}
"""
from vqfast.integrations._diffusers import apply_to_diffusers
from vqfast.integrations._muse_maskgit import apply_to_muse_maskgit
from vqfast.integrations._patch import PatchHandle, reset_stats, stats
from vqfast.integrations._taming import apply_to_taming
from vqfast.integrations._vector_quantize_pytorch import apply_to_vector_quantize_pytorch

__all__ = ["PatchHandle", "apply_to_diffusers", "apply_to_muse_maskgit", "apply_to_taming",
           "apply_to_vector_quantize_pytorch", "reset_stats", "stats"]
