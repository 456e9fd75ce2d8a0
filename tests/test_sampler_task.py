"""The Sampler interface, HFSampler, the Task implementations and the loop's method table (issue 17)."""

import pytest
import torch
from train_fixtures import save_tiny_model

import spiral_fast as sf
from spiral_fast.evaluate import recursive_aggregation
from spiral_fast.recipe.loop import grpo_group_size, grpo_rollout, grpo_shape, spiral_rollout, step_config_for
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.rollout import as_sampler
from spiral_fast.rollout.config import RolloutConfig
from spiral_fast.rollout.hf import sample_hf
from spiral_fast.tasks import MathTask, Task, ToyTask

TOY = ToyTask(base=5)


def _model(seed=0):
    return tiny_qwen2(len(TOY.tokenizer), seed=seed, hidden_size=16, num_layers=1)


class ScriptedSampler(sf.Sampler):
    """A sampler of our own: response s to a prompt is the token ``digit0 + (len(prompt) + s) % 5``;
    counts generate / sync / close calls. Shows that rollout, RSA and the loop need only the interface."""

    def __init__(self):
        self.calls, self.syncs, self.closed = [], 0, False

    def generate(self, prompts, num_samples, *, max_new_tokens, temperature, eos_token_id=None, logprobs=True):
        self.calls.append((len(prompts), num_samples, max_new_tokens))
        out = [[TOY.tokenizer.digit0 + (len(p) + s) % 5] for p in prompts for s in range(num_samples)]
        return out, ([[-1.0] for _ in out] if logprobs else None)

    def sync(self, model):
        self.syncs += 1
        return {"seconds": 0.0}

    def close(self):
        self.closed = True


def test_hf_sampler_equals_generate_and_rollout_takes_either():
    model = _model()
    prompts = [TOY.prompt(p) for p in TOY.sample_problems(3, torch.Generator().manual_seed(1))]
    torch.manual_seed(5)
    direct = sample_hf(
        model,
        prompts,
        2,
        max_new_tokens=1,
        temperature=1.0,
        eos_token_id=None,
        pad_token_id=TOY.pad_token_id,
        logprobs=True,
    )
    torch.manual_seed(5)
    via = sf.HFSampler(model, pad_token_id=TOY.pad_token_id).generate(prompts, 2, max_new_tokens=1, temperature=1.0)
    assert via[0] == direct[0]  # HFSampler's sample_decode draws generate's tokens; log-probs up to float rounding
    for a, b in zip(via[1], direct[1]):
        assert a == pytest.approx(b, abs=1e-5)
    kwargs = dict(
        reward_fn=lambda i, s, z: 1.0,
        template=TOY.template,
        num_traces=3,
        num_sets=2,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=1,
        pad_token_id=TOY.pad_token_id,
    )
    torch.manual_seed(7)
    a = sf.rollout(model, prompts, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.manual_seed(7)
    b = sf.rollout(
        sf.HFSampler(model, pad_token_id=TOY.pad_token_id),
        prompts,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    for pa, pb in zip(a.problems, b.problems):
        assert [y.tolist() for y in pa.traces] == [y.tolist() for y in pb.traces] and pa.sets == pb.sets


def test_a_sampler_of_ones_own_drives_rollout_and_rsa():
    sampler = ScriptedSampler()
    prompts = [TOY.prompt((1,)), TOY.prompt((2, 3)[:1])]
    batch = sf.rollout(
        sampler,
        prompts,
        reward_fn=lambda i, s, z: 0.5,
        template=TOY.template,
        num_traces=3,
        num_sets=2,
        set_size=2,
        num_aggregations=2,
        max_new_tokens=1,
    )
    assert sampler.calls[0] == (2, 3, 1) and sampler.calls[1] == (4, 2, 1)  # traces, then every a_j at once
    assert batch.problems[0].trace_old_logprobs[0].tolist() == [-1.0]
    rsa = recursive_aggregation(
        sampler,
        prompts,
        template=TOY.template,
        score_fn=lambda p, r: 1.0,
        population=3,
        set_size=2,
        steps=2,
        max_new_tokens=1,
    )
    assert rsa.accuracy == [1.0, 1.0, 1.0] and len(sampler.calls) == 5
    with sampler:
        pass
    assert sampler.closed


def test_as_sampler_keeps_the_old_engine_switch():
    model, scripted = _model(), ScriptedSampler()
    assert isinstance(as_sampler(model), sf.HFSampler) and as_sampler(scripted, "hf") is scripted
    with pytest.raises(ValueError, match="VLLMSampler"):
        as_sampler(model, "vllm")
    with pytest.raises(ValueError, match="VLLMSampler"):
        as_sampler(scripted, "vllm")
    with pytest.raises(ValueError, match="engine must be one of"):
        as_sampler(model, "sglang")
    with pytest.raises(ValueError, match="Hugging Face causal LM"):
        sf.HFSampler(object())


def test_hf_sampler_copy_is_refreshed_by_sync():
    model = _model()
    sampler = sf.HFSampler(model, copy=True)
    assert sampler.model is not model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    assert not torch.equal(next(sampler.model.parameters()), next(model.parameters()))
    info = sampler.sync(model)
    assert info["bytes"] > 0
    for a, b in zip(sampler.model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    plain = sf.HFSampler(model)
    assert plain.model is model and plain.sync(model)["bytes"] == 0


def test_tasks_implement_the_interface(tmp_path):
    from transformers import AutoTokenizer

    assert isinstance(TOY, Task) and TOY.score((1,), [TOY.tokenizer.digit0 + 2]) == 1.0
    assert TOY.answer_of([TOY.tokenizer.digit0 + 3]) == 3 and TOY.describe((1,)) == ("1 ?", "2")
    stream = TOY.train_problems(0)
    assert stream.take(4) == TOY.train_problems(0).take(4) and stream.position == 4
    assert TOY.train_problems(0, position=4).take(2) == stream.take(2)  # a resumed stream continues

    folder = save_tiny_model(str(tmp_path / "model"))
    rows = [{"problem": "1 + 2 = ?", "answer": "3"}, {"problem": "2 + 2 = ?", "answer": "4"}]
    task = MathTask(
        AutoTokenizer.from_pretrained(folder),
        rows,
        rows[:1],
        search="{problem}",
        aggregation="{problem} {candidates} =",
        candidate="candidate {index} : {solution}",
    )
    assert isinstance(task, Task) and task.eos_token_id == 1 and task.pad_token_id == 0
    x = task.prompt(rows[0])
    boxed = task.tokenizer("\\boxed{ 3 }", add_special_tokens=False)["input_ids"]
    assert task.score(rows[0], boxed) == 1.0 and task.score(rows[1], boxed) == 0.0
    assert task.answer_of(boxed) == "3" and task.reward(rows[0], [boxed], boxed) == 1.0
    agg = task.decode(task.template(x, [boxed, boxed]))
    assert agg.startswith("1+2=?") and agg.count("1:3}") == 1 and agg.count("2:3}") == 1  # problem, both candidates
    assert sorted(r["answer"] for r in task.train_problems(0).take(2)) == ["3", "4"]
    assert task.eval_problems(1) == rows[:1]
    with pytest.raises(ValueError, match="evaluation problems"):
        task.eval_problems(5)
    with pytest.raises(ValueError, match="reward"):
        MathTask(task.tokenizer, rows, reward="fuzzy")


def _settings(**kw):
    return RolloutConfig(
        **{
            "problems_per_step": 2,
            "num_traces": 4,
            "num_sets": 2,
            "set_size": 2,
            "num_aggregations": 4,
            "max_new_tokens": 48,
            "agg_max_new_tokens": 48,
            **kw,
        }
    )


def test_grpo_matches_the_sampled_token_budget_and_drops_the_trace_role():
    # "count": responses as long as a trace, N + M*G of them at equal lengths
    assert grpo_shape(_settings(grpo_match="count")) == (4 + 2 * 4, 48)
    longer = _settings(grpo_match="count", num_aggregations=2, max_new_tokens=32, agg_max_new_tokens=64)
    assert grpo_group_size(longer) == (4 * 32 + 2 * 2 * 64) // 32
    # "length" (the default, the paper's): responses as long as a trace plus an aggregation, the same tokens
    assert _settings().grpo_match == "length"
    assert grpo_shape(_settings()) == ((4 * 48 + 2 * 4 * 48) // 96, 96)
    paper = RolloutConfig()  # 8 x 4096 + 16 x 4096 = 12 x 8192
    assert grpo_shape(paper) == (12, 8192)
    config = sf.SpiralConfig(aggregation="parallel")
    assert step_config_for("grpo", config).trace_coef == 0.0 and step_config_for("grpo", config).aggregation == "text"
    assert step_config_for("spiral", config) == config
    with pytest.raises(ValueError, match="method"):
        _settings(method="ppo")
    with pytest.raises(ValueError, match="grpo_match"):
        _settings(grpo_match="tokens")
    problems = TOY.sample_problems(2, torch.Generator().manual_seed(0))
    for match in ("count", "length"):
        one = RolloutConfig(
            problems_per_step=2,
            num_traces=3,
            num_sets=2,
            set_size=2,
            num_aggregations=2,
            max_new_tokens=1,
            agg_max_new_tokens=1,
            grpo_match=match,
        )
        spiral, metrics = spiral_rollout(ScriptedSampler(), TOY, problems, one, torch.Generator().manual_seed(0))
        sampler = ScriptedSampler()
        grpo, _ = grpo_rollout(sampler, TOY, problems, one, None)
        sampled = sum(y.numel() for y in spiral.problems[0].traces) + sum(
            z.numel() for zs in spiral.problems[0].aggregations for z in zs
        )
        r, length = grpo_shape(one)
        assert len(grpo.problems[0].aggregations[0]) == r and sampler.calls[-1][2] == length
        # the fewest responses of up to `length` tokens that cover SPIRAL's budget (equal when it divides)
        assert (r - 1) * length < sampled <= r * length
        assert set(metrics) == {"reward", "agg_reward", "set_value", "set_value_std", "trace_acc"}


def test_the_demo_and_the_command_share_the_loop():
    import inspect

    from spiral_fast.recipe import command, demo, loop

    assert "train_loop" in inspect.getsource(demo._train) and "train_loop" in inspect.getsource(command.train)
    assert "informative_batch" not in inspect.getsource(demo) + inspect.getsource(command)
    assert "def informative_batch" not in inspect.getsource(loop)  # dynamic sampling: recipe.dynamic_sampling
