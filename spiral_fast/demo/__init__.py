"""The `spiral-fast demo` job: a verifiable toy task, its tokenizer, a tiny model, the training loop
and the plot, all built in code (no download)."""
