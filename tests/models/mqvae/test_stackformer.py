"""Stackformer: KV-cached sampler == the official full recomputation token for token, no
position twice, reproducibility, prefix continuation, presets (supp. Table 2), overfitting,
variants (Stackformer_r, no absolute position), class conditioning, ordering, bad inputs."""
import pytest
import torch

from vqfast import checkpoint
from vqfast.models.common.inference import PackedLinear, can_pack, inference_copy
from vqfast.models.common.outputs import LossOutput
from vqfast.models.mqvae.stackformer import KVCache, Stackformer, order_tokens, run_causal
from vqfast.models.mqvae.sampler import StackformerDecoding, StackformerSample, stackformer_sample

VARIANTS = [pytest.param({}, id="stackformer"), pytest.param(dict(reversed=True), id="reversed"),
            pytest.param(dict(absolute_position=False), id="no-abs"),
            pytest.param(dict(num_classes=5), id="class")]
# sequences longer than the 64-slot spans the cached attention reads
LONG = pytest.param(dict(num_positions=256, max_len=150, num_classes=3, reversed=True), id="long")


def _model(seed: int = 0, **kw) -> Stackformer:
    torch.manual_seed(seed)
    return Stackformer.from_preset("tiny", **kw).eval()


def _tokens(m: Stackformer, B: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    positions = torch.stack([torch.randperm(m.num_positions, generator=g)[:n] for _ in range(B)]).sort(1).values
    return torch.randint(m.codebook_size, (B, n), generator=g), positions


def _labels(m: Stackformer, B: int):
    return torch.arange(B) % m.num_classes if m.num_classes else None


@pytest.mark.parametrize("kw", [*VARIANTS, LONG])
def test_cached_equals_uncached_token_for_token(kw):
    m = _model(**kw)
    lab = _labels(m, 3)
    for seed in (0, 1):
        a = stackformer_sample(m, batch_size=3, class_labels=lab, generator=seed, use_cache=True)
        b = stackformer_sample(m, batch_size=3, class_labels=lab, generator=seed, use_cache=False)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("kw", [*VARIANTS, LONG])
def test_cached_logits_match_teacher_forcing(kw):
    """A cached step-by-step pass over a sequence gives the forward's logits."""
    m = _model(**kw)
    n = min(m.max_len, 140)
    codes, positions = _tokens(m, 2, n)
    lab = _labels(m, 2)
    code_logits, pos_logits = m(codes, positions, lab)
    prev_ids, prev_pos = m.shifted(codes, positions, m.start_ids(lab, 2, "cpu"))
    c1, c2 = m.new_caches(2, n, torch.float32, "cpu")
    first, second = m.stacks
    truth = {"code": codes, "position": positions}
    got = {"code": [], "position": []}
    with torch.no_grad():
        for i in range(n):
            h = run_causal(m.blocks(first), m.inputs(prev_ids[:, i:i + 1], prev_pos[:, i:i + 1], i), c1)
            got[first].append(m.logits(first, h))
            g = run_causal(m.blocks(second), m.second_input(first, h, truth[first][:, i:i + 1]), c2)
            got[second].append(m.logits(second, g))
    torch.testing.assert_close(torch.cat(got["code"], 1), code_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(got["position"], 1), pos_logits, atol=1e-5, rtol=1e-5)


def test_prefill_with_mask_equals_steps():
    """A multi-token cached pass after cached tokens (explicit causal mask) == step by step."""
    m = _model()
    blocks = m.code_blocks
    x = torch.randn(2, 12, 64)
    full = run_causal(blocks, x)
    cache = KVCache(len(blocks), 2, 4, 12, 16, torch.float32, "cpu")
    with torch.no_grad():
        parts = [run_causal(blocks, x[:, :5], cache), run_causal(blocks, x[:, 5:6], cache),
                 run_causal(blocks, x[:, 6:], cache)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_positions_distinct_and_start_token_never_sampled(kw):
    # near-uniform logits and a full sequence: every position is drawn once, the last from one choice
    m = _model(**kw, max_len=64)
    lab = _labels(m, 4)
    codes, positions = stackformer_sample(m, batch_size=4, class_labels=lab, position_top_k=None, position_top_p=None,
                                          temperature=3.0, generator=3)
    assert positions.shape == codes.shape == (4, 64)
    assert (positions < m.num_positions).all() and (positions >= 0).all()
    assert all(sorted(r) == list(range(64)) for r in positions.tolist())
    assert ((codes >= 0) & (codes < m.codebook_size)).all()
    # the paper's filters (position top-k 10) down to the last free position, and greedy
    for t in (1.0, 0.0):
        _, positions = stackformer_sample(m, batch_size=2, class_labels=_labels(m, 2), temperature=t, generator=4)
        assert all(sorted(r) == list(range(64)) for r in positions.tolist())


def test_start_token_forbidden_even_when_favoured():
    m = _model()
    with torch.no_grad():  # make the start token by far the most likely position
        m.position_head.weight[m.start_position].fill_(0.0)
        m.position_norm.bias.fill_(1.0)
        m.position_head.weight[m.start_position, :] = 10.0
    _, positions = stackformer_sample(m, batch_size=4, generator=0)
    assert (positions != m.start_position).all()
    assert all(len(set(r)) == len(r) for r in positions.tolist())


def test_same_seed_same_samples_generator_and_progress():
    m = _model()
    a = stackformer_sample(m, batch_size=2, generator=5)
    b = stackformer_sample(m, batch_size=2, generator=5, progress=True)
    c = stackformer_sample(m, batch_size=2, generator=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    d = stackformer_sample(m, batch_size=2, generator=torch.Generator().manual_seed(9))
    e = stackformer_sample(m, batch_size=2, generator=9)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


def test_batch_rows_are_independent_of_batch_size():
    """Row r draws from row r's noise: the first rows of a bigger batch are the same samples."""
    m = _model()
    a = stackformer_sample(m, batch_size=2, generator=4)
    b = stackformer_sample(m, batch_size=5, generator=4)
    assert torch.equal(a[0], b[0][:2]) and torch.equal(a[1], b[1][:2])


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kw", VARIANTS[:2])
def test_prefix_continuation_redraws_the_rest(kw, use_cache):
    m = _model(**kw)
    codes, positions = stackformer_sample(m, batch_size=3, generator=2)
    c, p = stackformer_sample(m, batch_size=3, generator=2, prefix_codes=codes[:, :11],
                              prefix_positions=positions[:, :11], use_cache=use_cache)
    assert torch.equal(c, codes) and torch.equal(p, positions)
    # a foreign prefix is kept and its positions are never drawn again
    kc, kp = _tokens(m, 3, 7, seed=8)
    c, p = stackformer_sample(m, batch_size=3, generator=1, prefix_codes=kc, prefix_positions=kp, use_cache=use_cache)
    assert torch.equal(c[:, :7], kc) and torch.equal(p[:, :7], kp)
    assert all(len(set(r)) == len(r) for r in p.tolist())


def test_greedy_and_class_labels():
    m = _model(num_classes=5)
    a = stackformer_sample(m, batch_size=3, class_labels=2, temperature=0, generator=0)
    b = stackformer_sample(m, batch_size=3, class_labels=torch.tensor([2, 2, 2]), temperature=0, generator=1)
    assert torch.equal(a[0], b[0]) and (a[0] == a[0][:1]).all()  # greedy: seed-free, rows equal
    c = stackformer_sample(m, batch_size=3, class_labels=torch.tensor([0, 1, 4]), temperature=0)
    assert not torch.equal(c[0][0], c[0][2])  # the class token changes the sequence
    code_logits, pos_logits = m(*_tokens(m, 3, 9), torch.tensor([0, 1, 4]))
    assert code_logits.shape == (3, 9, 256) and pos_logits.shape == (3, 9, 65)
    assert m.code_emb.num_embeddings == 5 + 256


def _step_logits(net: Stackformer, codes, positions, use_cache: bool):
    """Logits of the first stack's head at every step of a teacher-forced decoding."""
    d = StackformerDecoding(net, batch_size=codes.shape[0], num_tokens=codes.shape[1], use_cache=use_cache)
    prev_ids, prev_pos = net.shifted(codes, positions, net.start_ids(None, codes.shape[0], "cpu"))
    first = net.stacks[0]
    out = []
    with torch.no_grad():
        for i in range(codes.shape[1]):
            if use_cache:
                h = run_causal(net.blocks(first), net.inputs(prev_ids[:, i:i + 1], prev_pos[:, i:i + 1], i),
                               d.caches[0])
            else:
                h = run_causal(net.blocks(first), net.inputs(prev_ids[:, :i + 1], prev_pos[:, :i + 1]))
            out.append(net.logits(first, h[:, -1]))
    return torch.stack(out, 1)


def test_bf16_inference_copy_close_to_fp32_and_shares_weights():
    m = _model()
    fast = inference_copy(m, torch.bfloat16, batch_hint=2)
    if any(isinstance(x, PackedLinear) for x in fast.modules()):
        assert fast.code_emb.weight is m.code_emb.weight and fast.code_head.weight is m.code_head.weight
    assert inference_copy(m, torch.bfloat16, batch_hint=2) is fast  # cached
    if not can_pack(m, torch.float32):
        assert inference_copy(m, None) is m and inference_copy(m, torch.float32) is m
    codes, positions = _tokens(m, 2, 12)
    with torch.no_grad():
        ref = m(codes, positions)
        got = fast(codes, positions)
        ref64 = m.double()(codes, positions)
        m.float()
    for r, g, r64 in zip(ref, got, ref64):
        assert g.dtype == torch.float32  # fp32 heads
        bf16_err = (g.double() - r64).abs().max()
        assert bf16_err < 0.05 * r64.abs().max() and bf16_err > (r.double() - r64).abs().max()
    # cached bf16 decoding (one-shape attention over the buffer) == the bf16 full pass, up to bf16 rounding
    a, b = _step_logits(fast, codes, positions, True), _step_logits(fast, codes, positions, False)
    torch.testing.assert_close(a, b, atol=0.02 * float(b.abs().max()), rtol=0)
    with torch.no_grad():
        m.code_blocks[0].mlp[0].weight.add_(1.0)  # a parameter change rebuilds the copy
    assert inference_copy(m, torch.bfloat16, batch_hint=2) is not fast


def test_bf16_sampling_runs_and_keeps_positions_distinct():
    m = _model()
    codes, positions = stackformer_sample(m, batch_size=2, generator=0, autocast_dtype=torch.bfloat16)
    assert positions.shape == (2, 32) and all(len(set(r)) == 32 for r in positions.tolist())
    assert m.code_blocks[0].attn.qkv.weight.dtype == torch.float32  # the model itself is untouched


@pytest.mark.parametrize("name, target", [("307M", 307e6), ("607M", 607e6)])
def test_preset_parameter_counts_match_supp_table_2(name, target):
    """Convention: every parameter (embeddings, blocks, LayerNorms, heads), ImageNet
    class-conditional setting of the preset (1000 classes, K = 1024, 1024 positions, n = 256)."""
    with torch.device("meta"):
        m = Stackformer.from_preset(name)
    count = sum(p.numel() for p in m.parameters())
    assert abs(count - target) / target < 0.03
    c = Stackformer.PRESETS[name]
    assert (len(m.code_blocks), len(m.position_blocks)) == (c["code_depth"], c["position_depth"])
    assert c["dim"] == 1024 and c["heads"] == 16 and c["dropout"] == 0.1


def test_small_presets_follow_supp_table_1():
    with torch.device("meta"):
        models = [Stackformer.from_preset(n) for n in Stackformer.PRESETS if n.startswith("small")]
    layers = {(len(m.code_blocks), len(m.position_blocks)) for m in models}
    assert layers == {(12, 12), (6, 12), (6, 18), (12, 6), (18, 6)}


@pytest.mark.parametrize("kw", VARIANTS)
def test_tiny_model_overfits_a_batch(kw):
    m = _model(**kw).train()
    codes, positions = _tokens(m, 4, 32, seed=1)
    lab = _labels(m, 4)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = m.loss(codes, positions, class_labels=lab)
        first = first or {k: float(v) for k, v in out.terms.items()}
        opt.zero_grad()
        out.total.backward()
        opt.step()
    assert isinstance(out, LossOutput) and set(out.terms) == {"code", "position"}
    torch.testing.assert_close(out.total.detach(), out.terms["code"] + out.terms["position"])
    last = {k: float(v) for k, v in out.terms.items()}
    assert last["code"] < 0.3 * first["code"] and last["position"] < 0.5 * first["position"]


def test_order_tokens_and_loss_order():
    m = _model()
    codes, positions = _tokens(m, 3, 10)
    scores = torch.rand(3, 8, 8)
    c, p = order_tokens(codes, positions, scores, "importance")
    s = scores.flatten(1).gather(1, p)
    assert (s[:, 1:] <= s[:, :-1]).all()
    back = order_tokens(c, p)
    assert torch.equal(back[0], codes) and torch.equal(back[1], positions)
    # ties keep the lower position first
    c, p = order_tokens(codes, positions, torch.zeros(3, 64), "importance")
    assert torch.equal(p, positions)
    # "raster" sorts before training; "given" keeps the importance order
    m.train(False)
    a = m.loss(codes, positions).total
    shuffled = order_tokens(codes, positions, scores, "importance")
    torch.testing.assert_close(m.loss(*shuffled).total, a)
    assert not torch.allclose(m.loss(*shuffled, order="given").total, a)


def test_checkpoint_round_trip(tmp_path):
    m = _model(reversed=True, num_classes=3)
    checkpoint.save(m, tmp_path / "sf")
    m2 = checkpoint.load(tmp_path / "sf", expected=Stackformer)
    codes, positions = _tokens(m, 2, 6)
    lab = torch.tensor([0, 2])
    for a, b in zip(m(codes, positions, lab), m2.eval()(codes, positions, lab)):
        torch.testing.assert_close(a, b)


def test_bad_inputs_name_the_argument():
    m = _model()
    codes, positions = _tokens(m, 2, 8)
    cases = [
        (lambda: m.loss(codes.float(), positions), "codes"),
        (lambda: m.loss(codes, positions[:, :5]), "positions"),
        (lambda: m.loss(codes + 256, positions), "codes"),
        (lambda: m.loss(codes, positions.clamp(max=3)), "positions"),
        (lambda: m.loss(codes, positions + 64), "positions"),
        (lambda: m.loss(codes, positions, class_labels=torch.tensor([0, 1])), "labels"),
        (lambda: m.loss(*_tokens(m, 2, 33)), "max_len"),
        (lambda: m.loss(codes, positions, order="zigzag"), "order"),
        (lambda: _model(num_classes=3).loss(codes, positions), "labels"),
        (lambda: _model(num_classes=3).loss(codes, positions, class_labels=torch.tensor([0, 3])), "labels"),
        (lambda: Stackformer.from_preset("huge"), "preset"),
        (lambda: Stackformer(16, 8, dim=30, heads=4), "dim"),
        (lambda: Stackformer(16, 8, max_len=0), "max_len"),
        (lambda: stackformer_sample(Stackformer(16, 8, dim=8, code_depth=1, position_depth=1, heads=2,
                                                max_len=9), batch_size=1, num_tokens=9), "num_tokens"),
        (lambda: Stackformer(0, 8), "codebook_size"),
        (lambda: stackformer_sample(m, batch_size=0), "batch_size"),
        (lambda: stackformer_sample(m, batch_size=2, num_tokens=33), "num_tokens"),
        (lambda: stackformer_sample(m, batch_size=2, code_top_k=0), "code_top_k"),
        (lambda: stackformer_sample(m, batch_size=2, position_top_p=1.5), "position_top_p"),
        (lambda: stackformer_sample(m, batch_size=2, temperature=-1.0), "temperature"),
        (lambda: stackformer_sample(m, batch_size=2, prefix_codes=codes), "prefix_positions"),
        (lambda: stackformer_sample(m, batch_size=3, prefix_codes=codes, prefix_positions=positions), "prefix_codes"),
        (lambda: stackformer_sample(m, batch_size=2, prefix_codes=codes, prefix_positions=positions.clamp(max=3)),
         "prefix_positions"),
        (lambda: stackformer_sample(m, batch_size=2, class_labels=torch.tensor([0, 1])), "labels"),
        (lambda: stackformer_sample(torch.nn.Linear(2, 2), batch_size=2), "model"),
        (lambda: order_tokens(codes, positions, order="importance"), "scores"),
    ]
    for fn, word in cases:
        with pytest.raises(ValueError, match=word):
            fn()


def test_samples_decode_with_the_tiny_mqvae():
    """The tiny presets match: 32 (code, position) pairs on MQVAE("tiny")'s 8x8 grid, K = 256."""
    from vqfast.models.mqvae.tokenizer import MQVAE
    torch.manual_seed(0)
    vq = MQVAE.from_preset("tiny").eval()
    m = _model()
    assert (m.codebook_size, m.num_positions, m.max_len) == (vq.codebook_size, vq.num_positions, vq.num_kept)
    codes, positions = stackformer_sample(m, batch_size=2, generator=0)
    with torch.no_grad():
        images = vq.decode_tokens(codes, positions)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_sample_returns_named_tuple_and_checks_generator():
    m = _model()
    out = stackformer_sample(m, batch_size=2, num_tokens=5, generator=0)
    assert isinstance(out, StackformerSample) and out.tokens.shape == out.positions.shape == (2, 5)
    with pytest.raises(TypeError, match="generator"):
        stackformer_sample(m, batch_size=2, generator="0")


def test_loss_dropout_draws_from_the_generator():
    """With dropout active, generator fixes the masks; torch's global RNG is left as it was."""
    m = _model(dropout=0.3).train()
    codes, positions = _tokens(m, 2, 16)
    state = torch.get_rng_state()
    a = m.loss(codes, positions, generator=0).total
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(m.loss(codes, positions, generator=torch.Generator().manual_seed(3)).total,
                               m.loss(codes, positions, generator=torch.Generator().manual_seed(3)).total)
    assert torch.equal(m.loss(codes, positions, generator=0).total, a)
    assert not torch.equal(m.loss(codes, positions, generator=1).total, a)
    with pytest.raises(TypeError, match="generator"):
        m.loss(codes, positions, generator=0.5)


def test_checkpoint_with_the_old_argument_names_loads(tmp_path):
    import json

    m = _model(num_classes=3)
    checkpoint.save(m, tmp_path / "sf")
    meta = tmp_path / "sf.json"
    record = json.loads(meta.read_text())
    old = {"dim": "d_model", "heads": "n_heads", "code_depth": "n_code_layers", "position_depth": "n_position_layers"}
    record["config"] = {old.get(k, k): v for k, v in record["config"].items()}
    meta.write_text(json.dumps(record))
    back = checkpoint.load(tmp_path / "sf", expected=Stackformer).eval()
    assert back.config == m.config
    codes, positions = _tokens(m, 2, 6)
    lab = torch.tensor([0, 2])
    for a, b in zip(m(codes, positions, lab), back(codes, positions, lab)):
        torch.testing.assert_close(a, b)
