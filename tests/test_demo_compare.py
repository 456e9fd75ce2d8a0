"""The demo's GRPO configuration, its evaluation, --save / eval and a tiny --compare."""

import pytest
import torch
from training_cases import assert_grads_close, grads

import spiral_fast
from spiral_fast._utils import torch_threads
from spiral_fast.recipe.demo import DemoConfig, demo_settings, load_demo, run_compare, save_demo, train_demo
from spiral_fast.recipe.loop import METHOD_SETUPS, grpo_rollout, spiral_rollout
from spiral_fast.recipe.scaling import EvalConfig, evaluate_demo
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.tasks.toy import ToyTask

TINY = dict(iterations=2, problems=2, traces=3, sets=2, set_size=2, aggregations=2, hidden_size=16, layers=1)
TINY_EVAL = dict(problems=4, samples=4, population=3, steps=2, votes=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the models are tiny, and a thread pool on a shared CPU only contends
    (the demo does the same; measured 10x slower with 2 threads on the loaded 2-core machine)."""
    with torch_threads(1):
        yield


def _model(task, seed=0):
    return tiny_qwen2(len(task.tokenizer), seed=seed, hidden_size=16, num_layers=1)


def test_grpo_matches_spiral_response_tokens_and_scores_traces_alone():
    config = DemoConfig(**TINY)
    task = ToyTask(base=config.base)
    model = _model(task)
    problems = task.sample_problems(3, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    spiral, _ = spiral_rollout(model, task, problems, demo_settings(config), torch.Generator().manual_seed(0))
    grpo, metrics = grpo_rollout(model, task, problems, demo_settings(config), None)
    for s, g, problem in zip(spiral.problems, grpo.problems, problems):
        spiral_tokens = sum(y.numel() for y in s.traces) + sum(z.numel() for zs in s.aggregations for z in zs)
        (group,) = g.aggregations
        assert sum(z.numel() for z in group) == spiral_tokens == 3 + 2 * 2
        assert g.agg_prompts[0].tolist() == task.prompt(problem)  # each response answers x alone
        assert g.rewards[0] == [float(task.trace_correct(problem, z.tolist())) for z in group]
    rewards = [r for g in grpo.problems for r in g.rewards[0]]
    assert metrics["trace_acc"] == pytest.approx(sum(rewards) / len(rewards))


@pytest.mark.parametrize("impl", ["step", "step_reference"])
def test_grpo_step_is_the_plain_grpo_gradient(impl):
    """On-policy, the step on the GRPO batch has the gradient of the textbook GRPO loss
    -1/T sum_i (r_i - mean r) sum_t logp(y_it) (token-mean over the group's T tokens)."""
    config = DemoConfig(**TINY)
    task = ToyTask(base=config.base)
    problems = task.sample_problems(2, torch.Generator().manual_seed(1))
    model = _model(task, seed=1)
    torch.manual_seed(1)
    batch, _ = grpo_rollout(model, task, problems, demo_settings(config), None)
    _, overrides = METHOD_SETUPS["grpo"]
    step_config = spiral_fast.SpiralConfig(scale="none", estimator="grpo", **overrides)
    getattr(spiral_fast, impl)(model, batch, config=step_config)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    total, loss = 0, 0.0
    for pr in batch.problems:
        rewards = torch.tensor(pr.rewards[0])
        adv = rewards - rewards.mean()
        for a, z in zip(adv, pr.aggregations[0]):
            ids = torch.cat([pr.prompt, z])[None]
            logits = model(input_ids=ids).logits[0, pr.prompt.numel() - 1 : -1].float()
            loss = loss - a * logits.log_softmax(-1).gather(1, z[:, None]).sum()
            total += z.numel()
    (loss / total).backward()
    assert_grads_close(got, grads(model), rel=1e-4)
    assert any(float(g.abs().max()) > 0 for g in got.values())  # some reward varied: a real check


def test_train_demo_grpo_runs_the_same_loop_and_learns_something():
    run = train_demo(DemoConfig(seed=5, method="grpo", **TINY), progress=False)
    for row in run.history:
        assert set(row) >= {"reward", "trace_acc", "dropped", "loss"} and "agg_reward" not in row
        assert row["reward"] == row["trace_acc"] and row["step/tokens_trained"] > 0
    fresh = _model(run.task, seed=5)  # the model every method starts from under seed 5
    assert any(bool((run.model.state_dict()[k] != v).any()) for k, v in fresh.state_dict().items())


def test_evaluate_demo_shapes_monotone_and_seeded():
    config = DemoConfig(**TINY)
    model = _model(ToyTask(base=config.base), seed=2)
    eval_config = EvalConfig(**TINY_EVAL)
    a = evaluate_demo(model, config, eval_config)
    assert len(a.pass_at_k) == len(a.majority) == 4 and len(a.rsa) == 3
    assert all(0.0 <= v <= 1.0 for v in a.pass_at_k + a.majority + a.rsa)
    assert all(x <= y + 1e-12 for x, y in zip(a.pass_at_k, a.pass_at_k[1:]))  # pass@k grows with k
    assert a.majority[0] <= a.pass_at_k[-1] + 1e-12
    assert a == evaluate_demo(model, config, eval_config)
    with pytest.raises(ValueError, match="set_size"):  # RSA sets of the trained K=2 from 1 candidate
        evaluate_demo(model, config, EvalConfig(problems=2, population=1))


def test_save_and_load_round_trip(tmp_path):
    config = DemoConfig(**TINY)
    model = _model(ToyTask(base=config.base), seed=3)
    save_demo(model, config, tmp_path / "m")
    loaded, loaded_config = load_demo(tmp_path / "m")
    assert loaded_config == config
    for (n, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)
    with pytest.raises(ValueError, match="spiral-fast demo --save"):
        load_demo(tmp_path)


def test_run_compare_trains_both_and_evaluates_both():
    results = run_compare(DemoConfig(seed=1, **TINY), EvalConfig(**TINY_EVAL), progress=False)
    assert list(results) == ["spiral", "grpo"]
    (s_run, s_eval), (g_run, g_eval) = results["spiral"], results["grpo"]
    assert len(s_run.history) == len(g_run.history) == 2
    assert len(s_eval.rsa) == len(g_eval.rsa) == 3
    with pytest.raises(ValueError, match="baseline"):
        run_compare(DemoConfig(**TINY), baseline="spiral")


def test_cli_compare_save_and_eval(tmp_path, capsys):
    from spiral_fast.cli import main

    tiny = [
        "--iterations",
        "2",
        "--problems",
        "2",
        "--traces",
        "3",
        "--sets",
        "2",
        "--set-size",
        "2",
        "--aggregations",
        "2",
        "--hidden-size",
        "16",
        "--layers",
        "1",
        "--no-progress",
    ]
    tiny_eval = ["--problems", "4", "--samples", "4", "--population", "3", "--steps", "2", "--votes", "4"]
    out = tmp_path / "compare.png"
    main(
        [
            "demo",
            *tiny,
            "--compare",
            "grpo",
            "--out",
            str(out),
            "--save",
            str(tmp_path / "models"),
            *[a.replace("--", "--eval-") if a.startswith("--") else a for a in tiny_eval],
        ]
    )
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "spiral iter    1" in text and "grpo iter    1" in text
    for line in ("pass@4", "maj@4", "RSA step 2"):
        assert line in text
    assert "RSA step 3" not in text and "pass@5" not in text
    eval_png = tmp_path / "eval.png"
    main(["eval", "--model", str(tmp_path / "models" / "grpo"), *tiny_eval, "--out", str(eval_png)])
    text = capsys.readouterr().out
    assert eval_png.read_bytes()[:4] == b"\x89PNG" and "pass@4" in text and "RSA step 2" in text
    _, config = load_demo(tmp_path / "models" / "grpo")
    assert config.method == "grpo" and config.traces == 3 and config.set_size == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--model", "/nonexistent/dir"], "--model"),
        (["eval", "--set-size", "9"], "--set-size must be <="),  # the option the user typed
        (["eval", "--samples", "0"], "positive integer"),
        (["demo", "--compare", "spiral"], "invalid choice"),
        (["demo", "--method", "ppo"], "invalid choice"),
        (["demo", "--eval-population", "2", "--eval-set-size", "3"], "--eval-set-size must be <="),
    ],
    ids=["model-missing", "K-above-population", "samples-0", "compare-spiral", "method", "eval-K"],
)
def test_bad_arguments_fail_clearly(argv, message, capsys):
    from spiral_fast.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
