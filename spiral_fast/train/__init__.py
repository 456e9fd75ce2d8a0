"""``spiral-fast train``: the paper's SPIRAL recipe on a real model from one TOML file, on one
process or many (FSDP2 under torchrun), with checkpoints and resume.

config (TOML schema), data (JSONL problems), rewards, prompts (chat templates), loop (the training
loop), checkpoint (torch.distributed.checkpoint + a peft adapter / HF model export), distributed
(process group, FSDP2, the per-rank sampler).
"""
