"""Text tower: layer-level semantics (ln_x eps, bidirectional shift, pooling), init, lock, checkpointing; its
mixers are the shared `vision_rwkv.models.mixing` classes with the text settings."""
import math

import pytest
import torch
import torch.nn.functional as F

from rwkv_clip.text_model import TextBlock, TextRWKV
from vision_rwkv.models.mixing import ChannelMix, TimeMixV6
from vision_rwkv.ops import bi_wkv6_naive


def _bi_shift_by_hand(x: torch.Tensor, N: int) -> torch.Tensor:
    shifted = torch.zeros_like(x)
    for h in range(x.shape[-1] // N):
        lo, mid, hi = h * N, h * N + N // 2, (h + 1) * N
        shifted[:, 1:, lo:mid] = x[:, :-1, lo:mid]   # first half of each head: token t-1
        shifted[:, :-1, mid:hi] = x[:, 1:, mid:hi]   # second half: token t+1
    return shifted


def _time_mix_by_hand(m: TimeMixV6, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain re-statement of DESIGN.md §4/§5 for one time mix (explicit loops over heads, naive WKV)."""
    B, T, C = x.shape
    N = m.head_size
    H = C // N
    xx = _bi_shift_by_hand(x, N) - x
    xxx = x + xx * m.time_maa_x
    lo_rank = torch.tanh(xxx @ m.time_maa_w1).view(B, T, 5, 32)
    mixes = [lo_rank[:, :, i] @ m.time_maa_w2[i] for i in range(5)]  # w, k, v, r, g
    maa = [m.time_maa_w, m.time_maa_k, m.time_maa_v, m.time_maa_r, m.time_maa_g]
    xw, xk, xv, xr, xg = (x + xx * (maa[i] + mixes[i]) for i in range(5))
    r, k, v = m.receptance(xr), m.key(xk), m.value(xv)
    g = F.silu(m.gate(xg))
    w = m.time_decay + torch.tanh(xw @ m.time_decay_w1) @ m.time_decay_w2
    y = bi_wkv6_naive(*(t.reshape(B, T, H, N) for t in (r, k, v)), (-torch.exp(w)).reshape(B, T, H, N),
                      m.time_faaaa)
    y = F.group_norm(y.reshape(B * T, C), H, m.ln_x.weight, m.ln_x.bias, eps).view(B, T, C)
    return m.output(y * g)


def _randomise(module: torch.nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def test_time_mix_matches_hand_written_reference_and_ln_x_eps_is_6_4e_4():
    torch.manual_seed(1)
    m = TextBlock(dim=48, hidden_dim=96, head_size=16, layer_idx=1, depth=3, ln_x_eps=6.4e-4).att
    assert isinstance(m, TimeMixV6) and m.token_shift == "bi_shift_1d" and m.fp32_wkv and m.key_norm is None
    assert m.ln_x.eps == pytest.approx(6.4e-4) and m.ln_x.num_groups == 3
    _randomise(m)
    # small value projections: the WKV output is tiny, so the GroupNorm eps visibly matters
    with torch.no_grad():
        m.value.weight.mul_(0.0005)
    x = torch.randn(2, 7, 48)
    out = m(x)
    ref = _time_mix_by_hand(m, x, eps=6.4e-4)
    wrong_eps = _time_mix_by_hand(m, x, eps=1e-5)
    scale = ref.abs().max()
    err = (out - ref).abs().max() / scale
    assert err < 1e-5
    # the eps is observable at this scale: 1e-5 would give a clearly different layer output
    assert (out - wrong_eps).abs().max() / scale > max(100 * err, 1e-3)


def test_channel_mix_matches_hand_written_reference():
    """ffn: xx = shift(x) - x; xk = x + xx * maa_k; xr = x + xx * maa_r; sigmoid(R xr) * V relu(K xk)^2."""
    torch.manual_seed(3)
    f = TextBlock(dim=32, hidden_dim=40, head_size=8, layer_idx=1, depth=2).ffn
    assert isinstance(f, ChannelMix) and f.token_shift == "bi_shift_1d" and f.key_norm is None
    assert f.time_maa_k.shape == (1, 1, 32) and not hasattr(f, "spatial_mix_k")
    _randomise(f)
    x = torch.randn(2, 9, 32)
    xx = _bi_shift_by_hand(x, 8) - x
    xk, xr = x + xx * f.time_maa_k, x + xx * f.time_maa_r
    ref = torch.sigmoid(xr @ f.receptance.weight.T) * (torch.relu(xk @ f.key.weight.T) ** 2 @ f.value.weight.T)
    torch.testing.assert_close(f(x), ref, rtol=1e-5, atol=1e-6)


def test_block_parameter_names_shapes_and_order():
    """The original checkpoint names and (1, 1, C) shapes; registration order kept (optimizer states are saved by
    parameter index)."""
    b = TextBlock(dim=32, hidden_dim=48, head_size=16, layer_idx=0, depth=2)
    vec = (1, 1, 32)
    expected = [("ln0.weight", (32,)), ("ln0.bias", (32,)), ("ln1.weight", (32,)), ("ln1.bias", (32,)),
                ("ln2.weight", (32,)), ("ln2.bias", (32,))]
    expected += [(f"att.time_maa_{c}", vec) for c in "xwkvrg"]
    expected += [("att.time_maa_w1", (32, 160)), ("att.time_maa_w2", (5, 32, 32)), ("att.time_decay", vec),
                 ("att.time_decay_w1", (32, 64)), ("att.time_decay_w2", (64, 32)), ("att.time_faaaa", (2, 16))]
    expected += [(f"att.{n}.weight", (32, 32)) for n in ("receptance", "key", "value", "output", "gate")]
    expected += [("att.ln_x.weight", (32,)), ("att.ln_x.bias", (32,)), ("ffn.time_maa_k", vec), ("ffn.time_maa_r", vec),
                 ("ffn.key.weight", (48, 32)), ("ffn.receptance.weight", (32, 32)), ("ffn.value.weight", (32, 48))]
    assert [(n, tuple(p.shape)) for n, p in b.named_parameters()] == expected


def test_text_tower_eps_from_head_size_divisor():
    t = TextRWKV(vocab_size=100, context_length=8, width=32, layers=2, head_size=16, hidden_dim=64)
    assert t.ln_x_eps == pytest.approx(6.4e-4)
    assert all(b.att.ln_x.eps == pytest.approx(6.4e-4) for b in t.blocks)
    t4 = TextRWKV(vocab_size=100, context_length=8, width=32, layers=1, head_size=16, head_size_divisor=4)
    assert t4.blocks[0].att.ln_x.eps == pytest.approx(1.6e-4)


def _tiny_text(**kw):
    torch.manual_seed(2)
    t = TextRWKV(**{**dict(vocab_size=300, context_length=12, width=32, layers=2, head_size=16, hidden_dim=64), **kw})
    _randomise(t, 0.2)
    return t.eval()


def test_sentence_embedding_is_mean_of_normalised_tokens_including_padding():
    t = _tiny_text()
    ids = torch.randint(1, 300, (3, 12))
    ids[:, 6:] = 0  # padding takes part
    tokens = t.forward_tokens(ids)
    feats = t(ids)
    assert torch.allclose(feats, F.normalize(tokens, dim=-1).mean(1), atol=1e-6)
    assert (feats.norm(dim=-1) < 1 - 1e-4).all()  # not re-normalised
    # the padding positions matter: a different pad id changes the embedding
    ids2 = ids.clone()
    ids2[:, 6:] = 5
    assert not torch.allclose(t(ids2), feats, atol=1e-4)
    # so shorter inputs are padded as the tokenizer pads: the same embedding as the full-length ids
    assert t.forward_tokens(ids[:, :6]).shape == (3, 12, 32)
    assert torch.equal(t(ids[:, :6]), feats) and torch.equal(t(ids[:, :9]), feats)


def test_text_tower_is_bidirectional_and_has_no_position_embedding():
    t = _tiny_text()
    ids = torch.randint(1, 300, (1, 12))
    base = t.forward_tokens(ids)
    later = ids.clone()
    later[0, 9] = (later[0, 9] + 1) % 300
    changed = t.forward_tokens(later)
    # changing token 9 changes the features of earlier tokens (not causal)
    assert (changed[0, :9] - base[0, :9]).abs().max() > 1e-4
    assert not any("pos" in n for n, _ in t.named_parameters())
    assert t.blocks[0].ln0 is not None and all(b.ln0 is None for b in t.blocks[1:])


def test_text_input_errors():
    t = _tiny_text()
    with pytest.raises(ValueError, match="context_length"):
        t(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="token ids must be int64 or int32, got dtype torch.float32"):
        t(torch.zeros(1, 12))
    with pytest.raises(ValueError, match="batch, tokens"):
        t(torch.zeros(12, dtype=torch.long))
    ids = torch.randint(0, t.vocab_size, (2, 12))
    t(ids)  # in range: runs
    for bad, shown in ((t.vocab_size, f"max {t.vocab_size}"), (-1, "min -1")):
        wrong = ids.clone()
        wrong[1, 5] = bad
        with pytest.raises(ValueError, match=rf"outside the vocabulary \[0, {t.vocab_size}\).*{shown}"):
            t(wrong)


def test_original_init():
    L = 3
    t = TextRWKV(vocab_size=100, context_length=8, width=64, layers=L, head_size=32, hidden_dim=128)
    for i, b in enumerate(t.blocks):
        assert torch.allclose(b.att.ln_x.weight, torch.full((64,), ((i + 1) / L) ** 0.7))
        for z in (b.att.output.weight, b.ffn.value.weight, b.ffn.receptance.weight, b.att.time_maa_w1,
                  b.att.time_decay_w1):
            assert z.abs().max() == 0
        ratio = i / (L - 1)
        n = torch.arange(64) / 63
        assert torch.allclose(b.att.time_decay.flatten(), -6 + 5 * n ** (0.7 + 1.3 * ratio), atol=1e-6)
        zig = 0.1 * (((torch.arange(64) + 1) % 3) - 1)
        assert torch.allclose(b.att.time_faaaa.flatten(), ratio * (1 - n) + zig, atol=1e-6)
        x = torch.arange(64) / 64
        assert torch.allclose(b.ffn.time_maa_k.flatten(), 1 - x ** (1 - i / L), atol=1e-6)
        # orthogonal key with gain 0.1: singular values 0.1
        s = torch.linalg.svdvals(b.att.key.weight)
        assert torch.allclose(s, torch.full_like(s, 0.1), atol=1e-4)
        s = torch.linalg.svdvals(b.ffn.key.weight)  # (128, 64): gain sqrt(2) * 0.5
        assert torch.allclose(s, torch.full_like(s, 0.5 * math.sqrt(2)), atol=1e-4)
        assert 0 < b.att.time_maa_w2.abs().max() <= 0.01
    assert t.emb.weight.abs().max() <= 1e-4


def test_lock_and_grad_checkpointing():
    t = _tiny_text()
    ids = torch.randint(0, 300, (2, 12))
    t.train()
    t.zero_grad()
    t(ids).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None}
    t.zero_grad()
    t.set_grad_checkpointing(True)
    out = t(ids)
    out.square().sum().backward()
    for n, p in t.named_parameters():
        if n in grads:
            assert torch.allclose(p.grad, grads[n], atol=1e-6), n
    t.set_grad_checkpointing(False)

    t.lock(unlocked_layers=1, freeze_layer_norm=True)
    assert not t.emb.weight.requires_grad
    assert not any(p.requires_grad for p in t.blocks[0].parameters())
    assert all(p.requires_grad for p in t.blocks[1].parameters())
    assert all(p.requires_grad for p in t.ln_out.parameters())
    t2 = _tiny_text()
    t2.lock(0, freeze_layer_norm=False)
    trainable = {n for n, p in t2.named_parameters() if p.requires_grad}
    assert trainable and all(".ln" in n or "ln_out" in n or "ln_x" in n for n in trainable)
    assert "emb.weight" not in trainable
