"""The patch machinery: revert, context manager, counters, missing peers, switch checks."""
import pytest

import vqfast.integrations as vi
from vqfast.integrations import _patch


class _Peer:
    def hot(self):
        return "peer"


def test_handle_reverts_and_context_manager_restores():
    original = _Peer.hot
    handle = _patch.PatchHandle("peer")
    handle.set(_Peer, "hot", lambda self: "vqfast")
    assert _Peer().hot() == "vqfast" and handle.patched == ["_Peer.hot"]
    handle.revert()
    assert _Peer.hot is original and handle.patched == []
    handle.revert()  # a second revert does nothing
    with _patch.PatchHandle("peer") as h:
        h.set(_Peer, "hot", lambda self: "vqfast")
        assert _Peer().hot() == "vqfast"
    assert _Peer.hot is original


def test_applying_twice_patches_once_and_any_revert_order_restores():
    original = _Peer.hot
    for order in ("first-applied first", "last-applied first"):
        first, second = _patch.PatchHandle("peer"), _patch.PatchHandle("peer")
        first.set(_Peer, "hot", lambda self: "vqfast")
        second.set(_Peer, "hot", lambda self: "vqfast again")
        assert _Peer().hot() == "vqfast" and second.patched == []
        for h in ((first, second) if order == "first-applied first" else (second, first)):
            h.revert()
        assert _Peer.hot is original, order


def test_stats_count_served_and_passed_through():
    vi.reset_stats()
    _patch.served("peer.hot")
    _patch.served("peer.hot")
    _patch.passed_through("peer.hot")
    assert vi.stats() == {"peer.hot": {"served": 2, "passed_through": 1}}
    vi.reset_stats()
    assert vi.stats() == {}


def test_missing_peer_names_the_package():
    with pytest.raises(ImportError, match="pip install not-a-vq-peer"):
        _patch.require("not_a_vq_peer_module", "not-a-vq-peer")


@pytest.mark.parametrize("apply, switch", [(vi.apply_to_vector_quantize_pytorch, "codebook"),
                                           (vi.apply_to_taming, "vector_quantizer"),
                                           (vi.apply_to_diffusers, "amused_scheduler"),
                                           (vi.apply_to_muse_maskgit, "sampler")])
def test_switches_must_be_bool(apply, switch):
    with pytest.raises(TypeError, match=switch):
        apply(**{switch: "yes"})
