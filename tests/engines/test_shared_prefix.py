"""Cascade attention over one shared prompt prefix (deep_math/engines/transformers/shared_prefix.py)
and the engine's vectorized top-p / inverse-CDF sampler: both must be exact, not approximately fast."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from deep_math.engines.base import SamplingParams
from deep_math.engines.transformers import shared_prefix
from deep_math.engines.transformers.sampling import RowSampler, row_generators
from deep_math.engines.transformers.shared_prefix import SharedPrefixCache, cascade_attention


def reference_attention(query, prefix_k, prefix_v, key, value, visible, scale):
    """softmax over [prefix | suffix] with the prefix copied per row and KV heads repeated."""
    b, hq = query.shape[:2]
    g = hq // key.shape[1]
    k = torch.cat([prefix_k.expand(b, -1, -1, -1), key], dim=2).repeat_interleave(g, dim=1)
    v = torch.cat([prefix_v.expand(b, -1, -1, -1), value], dim=2).repeat_interleave(g, dim=1)
    scores = (query @ k.transpose(-1, -2)) * scale
    p = prefix_k.shape[2]
    full = torch.ones(scores.shape, dtype=torch.bool)
    full[..., p:] = visible
    out = scores.masked_fill(~full, float("-inf")).softmax(-1) @ v
    return out.transpose(1, 2)


@pytest.mark.parametrize("q", [1, 4])
def test_cascade_attention_equals_attention_over_the_concatenation(q):
    torch.manual_seed(0)
    b, hkv, g, d, p, s = 3, 2, 3, 16, 40, 7
    prefix_k, prefix_v = torch.randn(1, hkv, p, d), torch.randn(1, hkv, p, d)
    layer = shared_prefix.SharedPrefixLayer(prefix_k, prefix_v, b)
    key, value = layer.update(torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d))
    query = torch.randn(b, hkv * g, q, d)
    visible = torch.rand(b, 1, q, s) > 0.4
    visible[0, 0, 0, :] = False  # a query (e.g. at a padding position) that sees no suffix key
    mask = torch.ones(b, 1, q, p + s, dtype=torch.bool)
    mask[..., p:] = visible
    got = cascade_attention(layer, query, key, value, mask, 0.25)
    want = reference_attention(query, prefix_k, prefix_v, key, value, visible, 0.25)
    assert got.shape == (b, q, hkv * g, d)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # An additive float mask means the same as the boolean one.
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(cascade_attention(layer, query, key, value, additive, 0.25), got)
    # No mask: all of the prefix, the suffix causally (the last query is the newest token).
    causal = torch.ones(s, s, dtype=torch.bool).tril()[s - q :].expand(b, 1, q, s)
    torch.testing.assert_close(
        cascade_attention(layer, query, key, value, None, 0.25),
        reference_attention(query, prefix_k, prefix_v, key, value, causal, 0.25),
        atol=1e-5,
        rtol=1e-5,
    )


def test_shared_prefix_layer_grows_in_place_and_selects_rows():
    prefix = torch.zeros(1, 2, 5, 4)
    layer = shared_prefix.SharedPrefixLayer(prefix, prefix, batch=3)
    assert layer.get_seq_length() == 5 and layer.keys.shape == (3, 2, 0, 4)
    steps = [torch.full((3, 2, n, 4), float(i)) for i, n in enumerate((10, 1, 60, 1))]
    for x in steps:
        keys, values = layer.update(x, x + 100)
    assert layer.get_seq_length() == 5 + 72 and layer.get_mask_sizes(1) == (78, 0)
    assert torch.equal(keys, torch.cat(steps, dim=2)) and torch.equal(values, keys + 100)
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert layer.keys.shape == (2, 2, 72, 4) and layer.get_seq_length() == 77
    keys, _ = layer.update(torch.full((2, 2, 1, 4), 9.0), torch.zeros(2, 2, 1, 4))
    assert keys.shape == (2, 2, 73, 4) and torch.equal(keys[:, :, -1], torch.full((2, 2, 4), 9.0))
    assert torch.equal(keys[:, :, :72], torch.cat(steps, dim=2)[[2, 0]])


@pytest.fixture(scope="module")
def model():
    from deep_math.engines.transformers.attention import use_gqa_sdpa
    from deep_math.models import load_model

    m = load_model(None).eval()
    assert use_gqa_sdpa(m)
    return m


def test_model_logits_with_a_shared_prefix_cache_equal_a_per_row_cache(model):
    """Real SmolLM2 layers, rows of different lengths ([prefix | padding | own tokens]), then
    decoding past the buffer's first capacity with one row dropped midway."""
    torch.manual_seed(1)
    p, lens = 70, (2, 5, 9)
    prefix = torch.randint(200, 40000, (1, p))
    width = max(lens)
    ids = torch.zeros(len(lens), p + width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :p], mask[i, :p] = prefix[0], 1
        ids[i, p + width - n :], mask[i, p + width - n :] = torch.randint(200, 40000, (n,)), 1
    with torch.inference_mode():
        layers = [(x.keys, x.values) for x in model(input_ids=prefix, use_cache=True).past_key_values.layers]
        per_row = DynamicCache(
            [(k.expand(3, -1, -1, -1).contiguous(), v.expand(3, -1, -1, -1).contiguous()) for k, v in layers],
            config=model.config,
        )
        shared = SharedPrefixCache(layers, 3)
        valid = mask[:, p:].bool()

        def step(inputs, attention_mask):
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -inputs.shape[1] :]
            want = model(
                input_ids=inputs,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=per_row,
            ).logits
            with shared_prefix.active(shared):
                got = model(
                    input_ids=inputs,
                    attention_mask=attention_mask,
                    position_ids=positions,
                    past_key_values=shared,
                ).logits
            return got, want

        got, want = step(ids[:, p:], mask)
        torch.testing.assert_close(got[valid], want[valid], atol=2e-4, rtol=1e-4)
        token = want[:, -1].argmax(-1, keepdim=True)
        for n in range(70):
            if n == 30:  # the middle row finishes and leaves the batch
                index = torch.tensor([0, 2])
                per_row.batch_select_indices(index)
                shared.batch_select_indices(index)
                mask, token = mask[index], token[index]
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            got, want = step(token, mask)
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
            token = want[:, -1].argmax(-1, keepdim=True)
        assert shared.get_seq_length() == per_row.get_seq_length() == p + width + 70


def test_engine_batches_attend_to_one_copy_of_the_prefix(model, monkeypatch):
    """The engine must actually take the cascade path for a batch sharing a long prefix (and
    give the same tokens as without any prefix reuse)."""
    from deep_math.engines.base import GenRequest
    from deep_math.engines.transformers import TransformersEngine
    from deep_math.models import load_tokenizer

    tok = load_tokenizer(None)
    calls = []
    real = shared_prefix.cascade_attention

    def counting(layer, *args):
        calls.append(layer.batch)
        return real(layer, *args)

    monkeypatch.setattr(shared_prefix, "cascade_attention", counting)
    system = tok.encode("Solve each problem with short Python snippets. " * 10)
    reqs = [
        GenRequest(
            system + tok.encode(f" What is {k} * {k + 1}?"), SamplingParams(temperature=0, max_tokens=5)
        )
        for k in range(4)
    ]
    with TransformersEngine(tokenizer=tok, model=model, prefix_cache=False) as plain:
        want = plain.generate(reqs)
    assert not calls
    with TransformersEngine(tokenizer=tok, model=model, prefix_cache=True, max_batch_size=4) as engine:
        got = engine.generate(reqs)
    assert calls and max(calls) == 4
    assert [r.token_ids for r in got] == [r.token_ids for r in want]


# ---- the sampler ----------------------------------------------------------------------------------


def sorted_top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The textbook definition: sort, drop a token once the mass before it reaches top_p; top_p 1
    keeps everything (float32 cumsums can reach 1.0 before the tail, depending on summation order)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    drop = ((probs.cumsum(-1) - probs) >= top_p.unsqueeze(1)) & (top_p.unsqueeze(1) < 1.0)
    drop[:, 0] = False
    return torch.zeros_like(drop).scatter(1, order, drop)


@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_top_p_without_a_full_sort_keeps_exactly_the_nucleus(spread):
    """`peaked`: the nucleus is inside the first candidate set; `flat`: it needs more than the
    largest candidate set, so the full-vocabulary path runs. Probabilities are distinct enough
    that float rounding cannot move the boundary."""
    vocab = 3000
    generator = torch.Generator().manual_seed(0)
    rows, tops = [], [0.3, 0.9, 0.95, 1.0]
    for _ in tops:
        rank = torch.randperm(vocab, generator=generator).float()
        rows.append(-rank * (0.3 if spread == "peaked" else 0.0005))
    scores = torch.stack(rows)
    sampler = RowSampler(
        [SamplingParams(temperature=1.0, top_p=t) for t in tops],
        [torch.Generator() for _ in tops],
        torch.device("cpu"),
    )
    dropped = torch.isinf(sampler._mask_top_p(scores))
    assert torch.equal(dropped, sorted_top_p(scores, torch.tensor(tops)))
    kept = (~dropped).sum(-1).tolist()
    assert kept[3] == vocab
    if spread == "flat":
        assert kept[2] > max(RowSampler.TOP_P_CANDIDATES)
    else:
        assert kept[2] < min(RowSampler.TOP_P_CANDIDATES)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_draws_follow_the_distribution_and_a_seed_is_independent_of_the_batch(top_p):
    probs = torch.tensor([0.05, 0.0, 0.5, 0.25, 0.0, 0.2])
    scores = probs.log().expand(3, -1).clone()
    rows = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_p=top_p, seed=7)]
    rows.append(SamplingParams(temperature=1.0, top_p=top_p, seed=8))
    together = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    alone = torch.Generator().manual_seed(7)
    counts = torch.zeros(6)
    for _ in range(4000):
        batch = RowSampler(rows, [None, *together], torch.device("cpu"))
        choice = batch(torch.zeros((3, 1), dtype=torch.long), scores.clone()).argmax(-1)
        single = RowSampler(rows[1:2], [alone], torch.device("cpu"))
        assert single(torch.zeros((1, 1), dtype=torch.long), scores[:1].clone()).argmax() == choice[1]
        assert choice[0] == 2
        counts[choice[1]] += 1
    # top_p=0.8 keeps 0.5 + 0.25 + 0.2 (the mass before 0.05 is 0.95 >= 0.8), renormalized.
    want = probs if top_p == 1.0 else torch.tensor([0.0, 0.0, 0.5, 0.25, 0.0, 0.2]) / 0.95
    assert counts[1] == counts[4] == 0
    assert (counts / 4000 - want).abs().max() < 0.03


def test_row_generators_live_on_the_cpu_whatever_the_model_device():
    """`_draw` takes its uniforms with `torch.rand(generator=g)` on the CPU: a generator made on the
    model's device (CUDA) would make every sampled step fail there, and seeded rows would draw
    different streams on CPU and GPU."""
    rows = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, seed=7),
        SamplingParams(temperature=0.7),
    ]
    generators = row_generators(rows)
    assert generators[0] is None
    assert all(g.device.type == "cpu" for g in generators[1:])
    assert torch.equal(
        torch.rand(3, generator=generators[1]), torch.rand(3, generator=torch.Generator().manual_seed(7))
    )


def test_policy_rollouts_never_reuse_a_prefix_computed_with_old_weights():
    """Local GRPO rollouts cache the shared prompt prefix; after an optimizer step changed the
    weights in place, the next rollout must match an engine with no cache at all."""
    from types import SimpleNamespace

    from deep_math.agent.config import AgentConfig
    from deep_math.engines.base import GenRequest
    from deep_math.engines.transformers import TransformersEngine
    from deep_math.models import load_model, load_tokenizer
    from deep_math.training.sources import PolicyTraceSource

    tok, model = load_tokenizer(None), load_model(None).eval()
    system = tok.encode("Use Python for every computation and box the final answer. " * 8)
    prompts = [system + tok.encode(f" Problem: compute {k} squared.") for k in range(3)]
    sampling = [SamplingParams(temperature=0, max_tokens=6) for _ in prompts]
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    source = PolicyTraceSource(AgentConfig(max_steps=1, max_agent_output=6), tok, batch_wait_ms=300)

    def uncached() -> list[list[int]]:
        with TransformersEngine(tokenizer=tok, model=model, prefix_cache=False) as plain:
            return [
                r.token_ids
                for r in plain.generate([GenRequest(p, s) for p, s in zip(prompts, sampling, strict=True)])
            ]

    try:
        first = [t.completion_ids for t in source.generate(prompts, sampling, trainer)]
        assert first == uncached()
        assert source.engine._prefix.misses == 1  # the shared prefix was cached
        with torch.no_grad():  # "an optimizer step"
            for layer in model.model.layers:
                layer.mlp.down_proj.weight.mul_(1.5)
        second = [t.completion_ids for t in source.generate(prompts, sampling, trainer)]
        assert second == uncached() and second != first
        assert source.engine._prefix.misses == 2
    finally:
        source.close()


def test_appending_rows_right_aligns_both_sides_behind_zero_padding():
    prefix = torch.zeros(1, 1, 3, 2)
    a, b = SharedPrefixCache([(prefix, prefix)], 2), SharedPrefixCache([(prefix, prefix)], 1)
    a.layers[0].update(torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2))
    b.layers[0].update(torch.full((1, 1, 5, 2), 7.0), torch.full((1, 1, 5, 2), 7.0))
    a.append_rows(b)
    keys = a.layers[0].keys
    assert keys.shape == (3, 1, 5, 2) and a.get_seq_length() == 3 + 5
    assert torch.equal(keys[:2, :, :3], torch.zeros(2, 1, 3, 2))  # padding in front of the short rows
    assert torch.equal(keys[:2, :, 3:], torch.ones(2, 1, 2, 2))
    assert torch.equal(keys[2], torch.full((1, 5, 2), 7.0))
    a.layers[0].update(torch.full((3, 1, 1, 2), 4.0), torch.zeros(3, 1, 1, 2))  # room to grow
    assert torch.equal(a.layers[0].keys[:, :, -1], torch.full((3, 1, 2), 4.0))
    other = SharedPrefixCache([(prefix.clone(), prefix.clone())], 1)
    with pytest.raises(ValueError, match="do not share one prefix"):
        a.append_rows(other)


def test_shortening_the_prefix_moves_its_tail_into_every_row():
    prefix_k = torch.arange(6.0).view(1, 1, 6, 1)
    cache = SharedPrefixCache([(prefix_k, -prefix_k)], 2)
    cache.layers[0].update(torch.full((2, 1, 2, 1), 9.0), torch.full((2, 1, 2, 1), -9.0))
    cache.shorten_prefix(4)
    layer = cache.layers[0]
    assert cache.prefix_length == 4 and cache.get_seq_length() == 8 and layer.length == 4
    assert layer.keys[:, 0, :, 0].tolist() == [[4.0, 5.0, 9.0, 9.0]] * 2
    assert layer.values[:, 0, :, 0].tolist() == [[-4.0, -5.0, -9.0, -9.0]] * 2
    assert layer.prefix_keys[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
