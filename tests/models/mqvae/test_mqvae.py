"""MQ-VAE: top-k selection, masked features kept from the quantizer, the de-mask attention
schedule, the score-multiplication gradient path, presets, training, checkpoints, bad inputs."""
import pytest
import torch
import torch.nn.functional as F

from vqfast import checkpoint
from vqfast.data import CropSampler
from vqfast.models.mqvae import MQVAE, MQVAEEncoding
from vqfast.models.mqvae.mask import select_top

# a smaller tiny model for the tests that train
SMALL = dict(ch=8, z_channels=16, embed_dim=16, codebook_size=64)


def _images(n: int, r: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, r, r, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _random_tokens(m: MQVAE, B: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    positions = torch.stack([torch.randperm(m.num_positions, generator=g)[:n] for _ in range(B)])
    codes = torch.randint(m.codebook_size, (B, n), generator=g)
    return codes, positions


def _oracle_top(scores: torch.Tensor, k: int) -> list[list[int]]:
    """Per row: the k best positions by (score descending, position ascending), then ascending."""
    return [sorted(sorted(range(len(row)), key=lambda j: (-float(row[j]), j))[:k]) for row in scores]


@pytest.mark.parametrize("ratio", [0.25, 0.30, 0.5, 0.75, 1.0])
def test_keeps_exactly_ratio_hw_top_scores(ratio):
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", ratio=ratio).eval()
    k = int(ratio * 64 + 0.5)
    assert m.num_kept == k
    codes, positions, scores = m.encode(_images(5))
    assert codes.shape == positions.shape == (5, k) and codes.dtype == positions.dtype == torch.int64
    assert scores.shape == (5, 8, 8)
    assert (positions[:, 1:] > positions[:, :-1]).all()  # raster order, distinct
    assert positions.tolist() == _oracle_top(scores.flatten(1), k)
    flat = scores.flatten(1)
    kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, positions, True)
    if ratio < 1:
        assert (flat.masked_fill(~kept, 2).min(1).values >= flat.masked_fill(kept, -1).max(1).values).all()


def test_encode_at_given_positions():
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL).eval()
    x = _images(3, seed=2)
    codes, positions, scores = m.encode(x)
    same = m.encode(x, positions=positions)
    for a, b in zip(same, (codes, positions, scores)):
        torch.testing.assert_close(a, b)
    _, other = _random_tokens(m, B=3, n=11, seed=4)
    c, p, _ = m.encode(x, positions=other)
    assert c.shape == (3, 11) and torch.equal(p, other)
    assert m.decode_tokens(c, p).shape == x.shape
    with pytest.raises(ValueError, match="positions"):
        m.encode(x, positions=other[:2])
    with pytest.raises(ValueError, match="positions"):
        m.encode(x, positions=other.float())


def test_select_top_ties_go_to_lower_positions():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 3, (6, 37), generator=g).float()  # many ties
    for k in (1, 5, 18, 37):
        assert select_top(scores, k).tolist() == _oracle_top(scores, k)
    assert select_top(torch.zeros(2, 10), 4).tolist() == [[0, 1, 2, 3]] * 2


def test_masked_features_never_reach_the_quantizer():
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", ratio=0.25)
    seen = {}
    m.encoder.register_forward_hook(lambda mod, inp, out: seen.__setitem__("enc", out.detach()))
    m.quantizer.register_forward_pre_hook(lambda mod, inp: seen.__setitem__("q", inp[0].detach()))
    x = _images(3)
    m.train()
    m(x)
    B, k = 3, m.num_kept
    q = seen["q"]
    assert q.shape == (B, k, m.config["embed_dim"])  # only the k kept tokens, never the h*w map
    # recompute the kept features from the encoder map (still in train mode: same batch-norm statistics)
    with torch.no_grad():
        scores = m.masker.score(seen["enc"]).flatten(1)
        positions = select_top(scores, k)
        tokens = seen["enc"].flatten(2).transpose(1, 2)
        kept = tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))
        expected = m.masker.proj(F.layer_norm(kept, kept.shape[-1:]) * scores.gather(1, positions)[..., None])
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-6)


def test_demask_attention_follows_the_schedule():
    torch.manual_seed(0)
    layers = 4
    m = MQVAE.from_preset("tiny", **SMALL, demask_layers=layers).eval()
    codes, positions = _random_tokens(m, B=3, n=20)
    kept = torch.zeros(3, m.num_positions, dtype=torch.bool).scatter_(1, positions, True)
    with torch.no_grad():
        record = m.demask_attention(codes, positions)
        fast = m.decode_tokens(codes, positions)
        explicit = m.decoder(m.demasker(m.quantizer.indices_to_codes(codes), positions, []))
    assert len(record) == layers
    for layer, (rec, attn) in enumerate(zip(record, m.demasker.attn)):
        a = rec["scale"]
        assert (a[kept] == 1).all()  # kept columns unscaled
        torch.testing.assert_close(a[~kept], torch.full_like(a[~kept], 0.02 ** (0.5 ** layer)))
        # independent softmax from the block input, then column j times a_j, no renormalization
        x = rec["input"]
        C = x.shape[1]
        q, k, _ = attn.qkv(attn.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)
        soft = torch.softmax(q @ k.transpose(1, 2) / C ** 0.5, dim=-1)
        torch.testing.assert_close(rec["weights"], soft * a[:, None, :], rtol=1e-5, atol=1e-7)
        rows = rec["weights"].sum(-1)
        if layer == 0:
            assert (rows < 1 - 1e-3).all()  # masked keys are damped and nothing renormalizes
        torch.testing.assert_close((rec["weights"] / a[:, None, :]).sum(-1), torch.ones_like(rows))
    # the fused path (SDPA on a-scaled values) equals the explicit weights
    torch.testing.assert_close(fast, explicit, rtol=1e-4, atol=1e-5)


def test_decode_tokens_ignores_token_order():
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL).eval()
    codes, positions = _random_tokens(m, B=2, n=m.num_kept, seed=3)
    perm = torch.randperm(m.num_kept)
    with torch.no_grad():
        torch.testing.assert_close(m.decode_tokens(codes, positions),
                                   m.decode_tokens(codes[:, perm], positions[:, perm]), rtol=1e-5, atol=1e-5)


def test_scoring_net_gets_gradient_only_through_the_score_multiplication():
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL, ratio=0.3)
    masker = m.masker
    x = torch.randn(4, SMALL["z_channels"], 8, 8)
    feats, positions, scores = masker(x)
    r = torch.randn_like(feats)
    loss = (feats * r).sum()
    params = list(masker.scorer.parameters())
    g_scores, *g_params = torch.autograd.grad(loss, [scores, *params], retain_graph=True)
    # d loss / d s_p = <Linear(LN(x_p)), r_i> at kept p = positions[i]; exactly 0 at masked p
    with torch.no_grad():
        tokens = x.flatten(2).transpose(1, 2)
        kept_tok = tokens.gather(1, positions[..., None].expand(-1, -1, tokens.shape[-1]))
        c = (masker.proj(F.layer_norm(kept_tok, kept_tok.shape[-1:])) * r).sum(-1)
        expected = torch.zeros(4, 64).scatter_(1, positions, c).view(4, 8, 8)
    torch.testing.assert_close(g_scores, expected, rtol=1e-5, atol=1e-6)
    assert g_scores.abs().sum() > 0
    # and the scoring net's parameter gradients are exactly that score gradient pulled back
    via_scores = torch.autograd.grad(scores, params, grad_outputs=g_scores)
    for got, want in zip(g_params, via_scores):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MQVAE.PRESETS))
def test_preset_shapes(name):
    big = not name.startswith("tiny")
    if big:  # no memory: shapes only
        with torch.device("meta"):
            m = MQVAE.from_preset(name)
    else:
        torch.manual_seed(0)
        m = MQVAE.from_preset(name)
    m.eval()
    cfg = m.config
    f = 2 ** (len(cfg["ch_mult"]) - 1)
    h = cfg["resolution"] // f
    assert m.grid_size == (h, h) and m.num_positions == h * h
    assert m.num_kept == int(cfg["ratio"] * h * h + 0.5) and m.codebook_size == cfg["codebook_size"]
    x = torch.empty(2, 3, cfg["resolution"], cfg["resolution"], device="meta") if big else _images(2, cfg["resolution"])
    enc = m.encode(x)
    assert isinstance(enc, MQVAEEncoding)
    codes, positions, scores = enc
    assert codes.shape == positions.shape == (2, m.num_kept) and scores.shape == (2, h, h)
    assert m.decode_tokens(codes, positions).shape == x.shape
    if big:
        assert (h, m.num_kept, m.codebook_size) == {"f8": (32, 256, 1024), "f8_r30": (32, 307, 1024),
                                                     "f8_official": (32, 307, 1024), "f16": (16, 128, 1024)}[name]
    else:
        rec, tokens, loss = m.train()(x)
        assert rec.shape == x.shape and tokens.shape == (2, m.num_kept)
        assert {"rec", "commit", "quant"} <= set(loss.terms)
        torch.testing.assert_close(loss.total.detach(), loss.terms["rec"] + loss.terms["quant"])


def test_tiny_mqvae_overfits_one_batch():
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL)
    x = CropSampler("train", 32).sample(8, generator=0)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    history = []
    for _ in range(100):
        loss = m(x).loss
        opt.zero_grad()
        loss.total.backward()
        if not history:  # the scoring net learns through the score multiplication
            assert m.masker.scorer[0].weight.grad.abs().sum() > 0
        opt.step()
        history.append(float(loss.terms["rec"]))
    assert history[-1] < 0.15 * history[0], history[::10]


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL, ratio=0.3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = _images(4, seed=5)
    for _ in range(3):  # move the EMA codebook and BatchNorm statistics off their init
        loss = m(x).loss
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    m.eval()
    checkpoint.save(m, tmp_path / "mqvae")
    loaded = checkpoint.load(tmp_path / "mqvae", expected=MQVAE)
    plain = MQVAE(**m.config)
    plain.load_state_dict(m.state_dict())
    plain.eval()
    with torch.no_grad():
        want = m.encode(x)
        for other in (loaded, plain):
            assert other.config == m.config
            got = other.encode(x)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b)
            torch.testing.assert_close(other.decode_tokens(*got[:2]), m.decode_tokens(*want[:2]))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="resolution"):
        MQVAE.from_preset("tiny", resolution=30)  # not divisible by f = 4
    for ratio in (0.0, -0.25, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            MQVAE.from_preset("tiny", ratio=ratio)
    with pytest.raises(ValueError, match="ratio"):
        MQVAE.from_preset("tiny", ratio=0.001)  # keeps no position of 8x8
    with pytest.raises(ValueError, match="preset"):
        MQVAE.from_preset("f4")
    with pytest.raises(TypeError, match="mask_ratio"):
        MQVAE.from_preset("tiny", mask_ratio=0.5)
    m = MQVAE.from_preset("tiny", **SMALL).eval()
    nan = _images(2)
    nan[1, 0, 3, 4] = float("nan")
    for bad in (_images(2, 30), torch.zeros(2, 1, 32, 32), torch.zeros(3, 32, 32), torch.zeros(2, 3, 32, 32).long(),
                torch.zeros(0, 3, 32, 32), nan, _images(2) / 0):
        with pytest.raises(ValueError, match="images"):
            m.encode(bad)
    codes, positions = _random_tokens(m, 2, 10)
    with pytest.raises(ValueError, match="tokens"):
        m.decode_tokens(codes.int(), positions)
    with pytest.raises(ValueError, match="tokens"):
        m.decode_tokens(codes + m.codebook_size, positions)
    with pytest.raises(ValueError, match="positions"):
        m.decode_tokens(codes, positions + m.num_positions)
    dup = positions.clone()
    dup[1, 3] = dup[1, 7]
    with pytest.raises(ValueError, match="positions"):
        m.decode_tokens(codes, dup)
    with pytest.raises(ValueError, match="positions"):
        m.decode_tokens(codes, positions[:, :5])


def test_importance_map_png(tmp_path):
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.importance_map_png(_images(2), tmp_path / "maps" / "importance.png")
    png = (tmp_path / "maps" / "importance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # no EMA/BN update


def test_bf16_model_and_autocast_run():
    torch.manual_seed(0)
    m = MQVAE.from_preset("tiny", **SMALL).eval()
    x = _images(2, seed=6)
    codes, positions, _ = m.encode(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        c, p, _ = m.encode(x)
        assert c.shape == p.shape == codes.shape and m.decode_tokens(c, p).isfinite().all()
    m.to(torch.bfloat16)
    with torch.no_grad():
        c, p, _ = m.encode(x.bfloat16())
        y = m.decode_tokens(c, p)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and y.isfinite().all()
    assert (p[:, 1:] > p[:, :-1]).all() and p.shape == positions.shape
