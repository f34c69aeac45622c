"""TransformersEngine on the embedded SmolLM2-135M (CPU), plus its sampler and micro-batcher."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from deep_math.engines.base import EngineError, GenRequest, GenResult, SamplingParams
from deep_math.engines.batching import MicroBatcher
from deep_math.engines.stops import decode, first_stop
from deep_math.engines.transformers import RowSampler, TransformersEngine


@pytest.fixture(scope="module")
def engine():
    eng = TransformersEngine(device="cpu", batch_wait_ms=50)
    yield eng
    eng.close()


def chat(engine, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def greedy(max_tokens: int = 8, stop: list[str] | None = None) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop or [])


# ---- the sampler on synthetic scores (no model) ---------------------------------------------------


def test_row_sampler_top_k_top_p_and_logprobs():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    rows = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=2, seed=0),
        SamplingParams(temperature=1.0, top_p=0.7, seed=0),
    ]
    gens = [None] + [torch.Generator().manual_seed(i) for i in (1, 2)]
    seen = [set(), set(), set()]
    for _ in range(200):
        sampler = RowSampler(rows, gens, torch.device("cpu"))
        out = sampler(torch.zeros((3, 1), dtype=torch.long), scores.clone())
        choice = out.argmax(dim=-1).tolist()
        assert torch.isinf(out).sum().item() == 3 * 3  # exactly one finite entry per row
        for row, token in enumerate(choice):
            seen[row].add(token)
        lp = sampler.logprobs[0].tolist()
        assert lp[0] == pytest.approx(math.log(0.5), abs=1e-5)  # greedy: raw model logprob
        expected_k = {0: 0.5 / 0.8, 1: 0.3 / 0.8}[choice[1]]  # top-2 renormalized
        assert lp[1] == pytest.approx(math.log(expected_k), abs=1e-5)
        expected_p = {0: 0.5 / 0.8, 1: 0.3 / 0.8}[choice[2]]  # 0.5 + 0.3 reaches 0.7
        assert lp[2] == pytest.approx(math.log(expected_p), abs=1e-5)
    assert seen == [{0}, {0, 1}, {0, 1}]


def test_row_sampler_temperature_and_raw_mode():
    scores = torch.log(torch.tensor([[0.6, 0.4]]))
    rows = [SamplingParams(temperature=0.5, seed=1)]
    for mode in ("processed", "raw"):
        sampler = RowSampler(rows, [torch.Generator().manual_seed(1)], torch.device("cpu"), mode=mode)
        token = sampler(torch.zeros((1, 1), dtype=torch.long), scores.clone()).argmax().item()
        p = torch.tensor([0.6, 0.4]) ** 2
        p = p / p.sum() if mode == "processed" else torch.tensor([0.6, 0.4])
        assert sampler.logprobs[0].item() == pytest.approx(math.log(p[token].item()), abs=1e-5)


# ---- micro-batcher (no model) ---------------------------------------------------------------------


def _echo(requests: list[GenRequest]) -> list[GenResult]:
    return [GenResult(r.prompt_ids, [0.0] * len(r.prompt_ids), "", "length") for r in requests]


def test_micro_batcher_groups_concurrent_callers():
    batcher = MicroBatcher(_echo, max_batch_size=16, wait_s=0.3)
    results: dict[int, list[int]] = {}

    def call(i: int) -> None:
        results[i] = batcher.submit([GenRequest([i], SamplingParams())])[0].token_ids

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {i: [i] for i in range(8)}
    assert sum(batcher.stats.batch_sizes) == 8
    assert batcher.stats.batches <= 2  # 8 callers within 0.3 s: one batch (two if a thread starts late)


def test_micro_batcher_respects_max_batch_size_and_errors():
    batcher = MicroBatcher(_echo, max_batch_size=3, wait_s=0.05)
    batcher.submit([GenRequest([i], SamplingParams()) for i in range(7)])
    assert batcher.stats.batch_sizes == [3, 3, 1]
    batcher.close()
    with pytest.raises(EngineError, match="closed"):
        batcher.submit([GenRequest([1], SamplingParams())])

    def boom(requests):
        raise RuntimeError("CUDA error: device-side assert")

    failing = MicroBatcher(boom, wait_s=0)
    with pytest.raises(EngineError, match="device-side assert"):
        failing.submit([GenRequest([1], SamplingParams())])
    # The worker survives a failed batch.
    failing.run_batch = _echo
    assert failing.submit([GenRequest([5], SamplingParams())])[0].token_ids == [5]
    failing.close()


def test_micro_batcher_join_admits_accepted_requests_and_keeps_the_rest_in_order():
    """A running batch takes queued requests its `accept` admits; the others wait, in order, for
    the next batch; a rejected one fails alone."""
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(requests, join):
        if not batches:
            started.set()
            release.wait(5)
            requests = requests + join(2, lambda r: r.prompt_ids[0] % 2 == 0)
        batches.append([r.prompt_ids[0] for r in requests])
        return _echo(requests)

    batcher = MicroBatcher(
        run, wait_s=0, joinable=True, reject=lambda r: "bad" if r.prompt_ids[0] == 99 else None
    )
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher.submit([GenRequest([i], SamplingParams())])[0].token_ids
        except EngineError as exc:
            results[i] = str(exc)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert started.wait(5)
    others = []
    for i in (1, 99, 2, 3, 4, 6):  # queued while batch [0] runs
        others.append(threading.Thread(target=call, args=(i,)))
        others[-1].start()
        time.sleep(0.02)
    release.set()
    for t in [first, *others]:
        t.join()
    batcher.close()
    assert batches[0] == [0, 2, 4]  # joined: the first two even ones, in arrival order
    assert [i for b in batches[1:] for i in b] == [1, 3, 6]  # the rest kept their order
    assert results[99] == "bad" and all(results[i] == [i] for i in (0, 1, 2, 3, 4, 6))
    assert batcher.stats.batch_sizes[0] == 3


# ---- the real model -------------------------------------------------------------------------------


def test_greedy_results_are_consistent(engine):
    prompts = [chat(engine, "What is 2+2?"), chat(engine, "Name a prime number.")]
    results = engine.generate([GenRequest(p, greedy(8)) for p in prompts])
    for result in results:
        assert 1 <= len(result.token_ids) <= 8
        assert len(result.logprobs) == len(result.token_ids)
        assert all(lp <= 0 for lp in result.logprobs)
        ids = result.token_ids[:-1] if result.finish_reason == "eos" else result.token_ids
        assert result.text == decode(engine.tokenizer, ids)
        if result.finish_reason == "length":
            assert len(result.token_ids) == 8


def test_logprobs_match_hf_generate_scores(engine):
    prompt = chat(engine, "What is 2+2?")
    [result] = engine.generate([GenRequest(prompt, greedy(6))])
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=6,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, len(prompt) :].tolist()
    ref = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new, strict=False)]
    assert result.token_ids == new[: len(result.token_ids)]
    assert result.logprobs == pytest.approx(ref[: len(result.token_ids)], abs=1e-4)


def test_stop_string_cut_at_token_granularity(engine):
    prompt = chat(engine, "Write one sentence about the sea.")
    [free] = engine.generate([GenRequest(prompt, greedy(12))])
    words = free.text.split()
    assert len(words) >= 3, free.text
    stop = words[2][:3]  # a string that first appears inside the third word (or earlier)
    expected_n, _ = first_stop(engine.tokenizer, free.token_ids, [stop])
    [cut] = engine.generate([GenRequest(prompt, greedy(12, stop=[stop, "never-there"]))])
    assert cut.finish_reason == "stop"
    assert cut.stop_string == stop
    assert cut.token_ids == free.token_ids[:expected_n]
    assert cut.logprobs == pytest.approx(free.logprobs[:expected_n], abs=1e-4)
    assert stop in cut.text and stop not in decode(engine.tokenizer, cut.token_ids[:-1])


def test_left_padded_batch_equals_single(engine):
    short = chat(engine, "Hi!")
    long = chat(engine, "Explain in detail why the sum of two even numbers is always even.")
    before = engine.stats.batches
    [alone] = engine.generate([GenRequest(short, greedy(8))])
    together = engine.generate([GenRequest(short, greedy(8)), GenRequest(long, greedy(8))])
    assert engine.stats.batch_sizes[-1] == 2 and engine.stats.batches == before + 2
    assert together[0].token_ids == alone.token_ids
    assert together[0].logprobs == pytest.approx(alone.logprobs, abs=1e-3)


def test_per_row_params_and_seeds_in_one_batch(engine):
    prompt = chat(engine, "Tell me a random animal.")
    sampled = SamplingParams(temperature=1.0, top_k=50, max_tokens=6, seed=1234)
    [a] = engine.generate([GenRequest(prompt, sampled)])
    b, g = engine.generate([GenRequest(prompt, sampled), GenRequest(prompt, greedy(3))])
    assert engine.stats.batch_sizes[-1] == 2
    assert a.token_ids == b.token_ids  # the seed pins the row's random stream
    assert len(g.token_ids) <= 3


def test_concurrent_callers_are_micro_batched(engine):
    prompts = [chat(engine, q) for q in ("1+1?", "2+3?", "Capital of France?", "Color of sky?")]
    before = (engine.stats.batches, engine.stats.requests)
    results: dict[int, GenResult] = {}

    def call(i: int) -> None:
        results[i] = engine.generate([GenRequest(prompts[i], greedy(4))])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = engine.stats.batches - before[0]
    assert engine.stats.requests - before[1] == 4
    assert batches < 4, engine.stats.batch_sizes  # 4 callers within the 50 ms window share batches
    assert all(len(r.token_ids) == len(r.logprobs) >= 1 for r in results.values())


def test_request_errors_fail_alone(engine):
    good = GenRequest(chat(engine, "Hi"), greedy(2))
    with pytest.raises(EngineError, match="empty prompt"):
        engine.generate([GenRequest([], greedy(2))])
    with pytest.raises(EngineError, match="one set of weights"):
        engine.generate([GenRequest(good.prompt_ids, greedy(2), lora_path="/some/adapter")])
    assert len(engine.generate([good])[0].token_ids) >= 1


def test_update_weights_waits_for_generate_and_validates(engine):
    name = "model.norm.weight"
    original = engine.model.state_dict()[name].clone()
    with pytest.raises(KeyError, match="unknown parameter"):
        engine.update_weights({"no.such.weight": original})
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights({name: original[:3]})
    prompt = chat(engine, "Count to ten.")
    worker = threading.Thread(target=engine.generate, args=([GenRequest(prompt, greedy(8))],))
    worker.start()
    time.sleep(0.1)  # let the generate start; the update must wait for it
    engine.update_weights({"base_model.model." + name: original * 2})
    worker.join()
    assert torch.equal(engine.model.state_dict()[name], original * 2)
    engine.update_weights({name: original})
    assert torch.equal(engine.model.state_dict()[name], original)


def test_load_lora_swaps_weights_between_batches(engine, tmp_path):
    from peft import LoraConfig, get_peft_model

    from deep_math.models import load_model

    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(load_model(), lora).save_pretrained(adapter)
    request = GenRequest(chat(engine, "What is 3*3?"), greedy(4))
    [base] = engine.generate([request])
    engine.load_lora(str(adapter))
    try:
        assert engine.lora_path == str(adapter)
        [tuned] = engine.generate([GenRequest(request.prompt_ids, request.sampling, lora_path=str(adapter))])
        assert tuned.logprobs != pytest.approx(base.logprobs, abs=1e-3)
    finally:
        engine.load_lora(None)
    [again] = engine.generate([request])
    assert again.token_ids == base.token_ids


@pytest.mark.slow
def test_throughput_batch_vs_single(engine):
    """Reports tokens/s for one sequence vs a batch of 8 (run with -m slow -s)."""
    prompts = [chat(engine, f"Write a short story about the number {i}.") for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=64)
    engine.generate([GenRequest(prompts[0], SamplingParams(temperature=0, max_tokens=4))])  # warm-up
    start = time.perf_counter()
    [single] = engine.generate([GenRequest(prompts[0], params)])
    single_tps = len(single.token_ids) / (time.perf_counter() - start)
    start = time.perf_counter()
    batch = engine.generate([GenRequest(p, params) for p in prompts])
    batch_tps = sum(len(r.token_ids) for r in batch) / (time.perf_counter() - start)
    sampled = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_tokens=64, seed=0)
    start = time.perf_counter()
    sampled_batch = engine.generate([GenRequest(p, sampled) for p in prompts])
    sampled_tps = sum(len(r.token_ids) for r in sampled_batch) / (time.perf_counter() - start)
    print(
        f"\nsingle: {single_tps:.1f} tok/s ({len(single.token_ids)} tokens); "
        f"batch of 8 greedy: {batch_tps:.1f} tok/s; batch of 8 sampled (top-p/top-k): {sampled_tps:.1f} tok/s"
    )
    assert batch_tps > single_tps


def test_gqa_sdpa_attention_gives_identical_batched_outputs():
    """The CPU grouped-query attention the engine switches to must not change a single logit."""
    import torch

    from deep_math.engines.transformers.attention import NAME, use_gqa_sdpa
    from deep_math.models import load_model

    model = load_model(None).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[2, 2, 2, 504, 3717, 314], [1, 504, 3717, 314, 1345, 28]])
    mask = (ids != 2).long()
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).logits
        assert use_gqa_sdpa(model) and model.config._attn_implementation == NAME
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before[mask.bool()], after[mask.bool()])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prefix_cache_reuses_the_shared_prompt_and_changes_no_output(attention):
    """Agent prompts share a long system prompt; reusing its KV must give the same tokens.
    sdpa: switched to our CPU attention, one shared copy of the prefix (cascade attention);
    eager: any other attention, the path CUDA takes, the prefix copied into every row."""
    from deep_math.engines.base import GenRequest, SamplingParams
    from deep_math.engines.transformers import TransformersEngine
    from deep_math.engines.transformers.shared_prefix import SharedPrefixCache
    from deep_math.models import load_model, load_tokenizer

    tok, model = load_tokenizer(None), load_model(None).eval()
    model.set_attn_implementation(attention)
    system = tok.encode("You solve math problems with Python. " * 12)
    prompts = [system + tok.encode(f" Problem {k}: what is {k} + {k}?") for k in range(3)] + [system]
    reqs = [GenRequest(p, SamplingParams(temperature=0, max_tokens=6)) for p in prompts]
    plain = TransformersEngine(tokenizer=tok, model=model, prefix_cache=False).generate(reqs)
    engine = TransformersEngine(tokenizer=tok, model=model, prefix_cache=True)
    cached = engine.generate(reqs)
    again = engine.generate(reqs[:2])
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]
    assert [r.token_ids for r in again] == [r.token_ids for r in plain[:2]]
    for a, b in zip(cached, plain, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-3
    assert engine._prefix.misses == 1 and engine._prefix.hits == 1
    shared = isinstance(engine._prefix.expand(system, 2), SharedPrefixCache)
    assert shared == (attention == "sdpa")
    engine.close()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_chunked_batches_drop_finished_rows_without_changing_samples(attention):
    """Rows leave the batch between chunks; seeded samples must be the same as unchunked.
    (eager: transformers' own cache and attention, the path CUDA takes.)"""
    from deep_math.engines.base import GenRequest, SamplingParams
    from deep_math.engines.transformers import TransformersEngine
    from deep_math.models import load_model, load_tokenizer

    tok, model = load_tokenizer(None), load_model(None).eval()
    model.set_attn_implementation(attention)
    prompts = [tok.encode(f"Count to {k}: 1, 2,") for k in (3, 9, 20)]
    reqs = [
        GenRequest(p, SamplingParams(temperature=0.8, top_p=0.9, max_tokens=m, stop=["5"], seed=k))
        for k, (p, m) in enumerate(zip(prompts, (3, 17, 30), strict=True))
    ]
    whole = TransformersEngine(tokenizer=tok, model=model, chunk_tokens=0).generate(reqs)
    chunked = TransformersEngine(tokenizer=tok, model=model, chunk_tokens=4).generate(reqs)
    assert [r.token_ids for r in chunked] == [r.token_ids for r in whole]
    assert [r.finish_reason for r in chunked] == [r.finish_reason for r in whole]
    for a, b in zip(chunked, whole, strict=True):
        assert len(a.logprobs) == len(a.token_ids)
        assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0) < 1e-3


@pytest.mark.parametrize("warm", [True, False])
def test_requests_arriving_mid_batch_join_it_and_get_the_same_tokens(warm):
    """Prompts sharing the system prefix join a running batch between chunks (continuous
    batching); what each row samples must not depend on when it joined. warm: the shared prefix
    is cached; cold: the running batch's prefix is its one prompt, shortened to the shared part
    when the others join."""
    from deep_math.models import load_model, load_tokenizer

    tok, model = load_tokenizer(None), load_model(None).eval()
    system = tok.encode("Answer with one short Python snippet, then box the result. " * 8)
    prompt = [system + tok.encode(f" Question {k}: what is {k} cubed?") for k in range(4)]
    long = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=48, seed=1)
    short = [SamplingParams(temperature=0.9, top_p=0.9, max_tokens=10, seed=s) for s in (2, 3)]
    with TransformersEngine(tokenizer=tok, model=model, prefix_cache=False) as plain:
        want = [
            plain.generate([GenRequest(p, s)])[0] for p, s in zip(prompt[1:], [long, *short], strict=True)
        ]
    engine = TransformersEngine(
        tokenizer=tok, model=model, prefix_cache=True, chunk_tokens=4, batch_wait_ms=0
    )
    if warm:
        engine.generate([GenRequest(p, greedy(1)) for p in prompt[:2]])  # caches the shared prefix
    got: dict[int, GenResult] = {}
    first = threading.Thread(
        target=lambda: got.update({0: engine.generate([GenRequest(prompt[1], long)])[0]})
    )
    first.start()
    time.sleep(0.5)  # the first batch is decoding its 48 tokens now
    late = [
        threading.Thread(
            target=lambda k=k: got.update({k: engine.generate([GenRequest(prompt[k + 1], short[k - 1])])[0]})
        )
        for k in (1, 2)
    ]
    for t in late:
        t.start()
    for t in [first, *late]:
        t.join()
    engine.close()
    assert engine.stats.batch_sizes[-1:] == [3], "the late requests did not join the running batch"
    assert len(engine.stats.batch_sizes) == (2 if warm else 1)
    for k in range(3):
        assert got[k].token_ids == want[k].token_ids
        assert max(abs(a - b) for a, b in zip(got[k].logprobs, want[k].logprobs, strict=True)) < 1e-3
