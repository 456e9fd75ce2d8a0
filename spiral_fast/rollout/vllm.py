"""Sampling through vLLM (optional: imported only when ``engine="vllm"`` is used)."""
from __future__ import annotations


def sample_vllm(llm, prompts: list[list[int]], num_samples: int, *, max_new_tokens: int,
                 temperature: float, eos_token_id, pad_token_id: int, logprobs: bool):
    """Same contract as sample_hf through a ``vllm.LLM`` (built with enable_prefix_caching=True:
    the N trace requests share x, the G aggregation requests share a_j, and the M prompts of a
    problem share x). Not exercised in this repository's tests: vLLM is not installed here.

    The caller keeps the vLLM weights in sync with the trained model. vLLM reports log-probs of the
    raw logits unless the engine was built with logprobs_mode="processed_logprobs"; build it so
    when temperature != 1, or pass logprobs=False (on-policy step).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(n=num_samples, temperature=temperature, top_k=-1, top_p=1.0,
                            max_tokens=max_new_tokens, logprobs=0 if logprobs else None,
                            stop_token_ids=None if eos_token_id is None else [eos_token_id])
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    responses, lps = [], [] if logprobs else None
    for request in outputs:
        for completion in request.outputs:
            tokens = list(completion.token_ids)
            responses.append(tokens)
            if logprobs:
                lps.append([step[t].logprob for t, step in zip(tokens, completion.logprobs)])
    return responses, lps
