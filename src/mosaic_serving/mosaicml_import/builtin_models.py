"""Our built-in models and how MosaicML's names map onto them.

The parameters each built-in handler accepts are not listed here: they are read from the
handler class itself (`accepted_parameters`), so the importer cannot drift from the handlers.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Mapping

WEIGHTS_PARAMETER = "model_name_or_path"
_NOT_PARAMETERS = {"self", "device"}  # `device` is the serving adapter's: each instance's own
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@functools.cache
def accepted_parameters(class_path: str) -> frozenset[str]:
    """The constructor kwargs a deployment may give the handler class at `class_path`.

    A class's `CONSTRUCTOR_PARAMETERS` when it declares them, else the keyword parameters of its
    `__init__` (besides `device`). Imports the handler's module (torch, transformers, ...).
    """
    module_name, _, class_name = class_path.rpartition(".")
    handler = getattr(importlib.import_module(module_name), class_name)
    declared = getattr(handler, "CONSTRUCTOR_PARAMETERS", None)
    if declared is not None:
        return frozenset(declared)
    parameters = inspect.signature(handler.__init__).parameters.values()
    return frozenset(p.name for p in parameters if p.kind in _KEYWORD_KINDS) - _NOT_PARAMETERS


@dataclass(frozen=True)
class Builtin:
    """One of our built-in models and how MosaicML's parameters map onto its handler."""

    model: str  # its folder in the model repository
    handler: str
    class_names: frozenset[str]
    renames: Mapping[str, str] = field(default_factory=dict)  # MosaicML name -> ours
    ignored: Mapping[str, str] = field(default_factory=dict)  # MosaicML name -> why

    @property
    def parameters(self) -> frozenset[str]:
        """The handler's constructor kwargs (besides `device`), read from the handler."""
        return accepted_parameters(self.handler)


_COMMON_RENAMES = {"model_name": WEIGHTS_PARAMETER, "torch_dtype": "dtype"}
_FT_PARAMETER = "a FasterTransformer setting; this server runs transformers"
BUILTINS = {
    "mpt": Builtin(
        model="mpt",
        handler="mosaic_serving.handlers.mpt.MPTModelHandler",
        class_names=frozenset({"MPTModelHandler", "MPTFTModelHandler"}),
        renames=_COMMON_RENAMES,
        ignored={
            "attn_impl": "transformers' built-in MPT attention is used",
            "clean_up_tokenization_spaces": "decoding keeps the tokenizer's own setting",
            "ft_lib_path": _FT_PARAMETER,
            "gpus": _FT_PARAMETER,
            "tensor_para_size": _FT_PARAMETER,
            "pipeline_para_size": _FT_PARAMETER,
            "int8_mode": _FT_PARAMETER,
        },
    ),
    "instructor": Builtin(
        model="instructor",
        handler="mosaic_serving.handlers.instructor.HFInstructorHandler",
        class_names=frozenset({"HFInstructorHandler"}),
        renames=_COMMON_RENAMES,
    ),
    "diffusion": Builtin(
        model="diffusion",
        handler="mosaic_serving.handlers.diffusion.StableDiffusionHandler",
        class_names=frozenset({"StableDiffusionHandler"}),
        renames=_COMMON_RENAMES,
    ),
}

# Class paths from our package are built-in handlers when the class name matches; any other
# class (MosaicML's `examples.inference-deployments.mpt.mpt_handler...` too) is served as it is.
_BUILTIN_PACKAGE = "mosaic_serving"


def builtin_for(class_path: str) -> Builtin | None:
    """The built-in model serving `class_path`, or None for a custom handler."""
    module, _, class_name = class_path.rpartition(".")
    if module != _BUILTIN_PACKAGE and not module.startswith(_BUILTIN_PACKAGE + "."):
        return None
    for builtin in BUILTINS.values():
        if class_name in builtin.class_names:
            return builtin
    return None


def default_model_weights(model_type: str) -> tuple[Builtin, str] | None:
    """MosaicML's `default_model.model_type` as one of our models and its hub id."""
    if model_type.startswith("mpt-"):
        return BUILTINS["mpt"], f"mosaicml/{model_type}"
    match = re.fullmatch(r"llama2-(\d+b)(-chat)?", model_type)
    if match:
        return BUILTINS["mpt"], f"meta-llama/Llama-2-{match.group(1)}{match.group(2) or ''}-hf"
    if model_type.startswith("instructor-"):
        return BUILTINS["instructor"], f"hkunlp/{model_type}"
    return None
