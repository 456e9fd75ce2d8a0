"""The training recipe: what turns the library's pieces into a run.

One loop (``loop``) serves ``spiral-fast train`` (a real model, a TOML config: ``config``) and
``spiral-fast demo`` (a tiny random model on the toy task): task -> sampler -> rollout -> batch ->
``spiral_fast.step`` -> optimizer -> sampler sync. ``data`` (JSONL problems, the problem stream),
``checkpoint`` (torch.distributed.checkpoint + a peft adapter / HF model export), ``distributed``
(process group, FSDP2). The entry point of the command is ``spiral_fast.train``.
"""
