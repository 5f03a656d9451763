"""Turn a MosaicML inference deployment YAML into a Triton model repository entry.

    python -m mosaic_serving.mosaicml_import deployment.yaml --output model_repository/NAME

A MosaicML deployment names a handler class and its constructor kwargs:

    name: mpt-7b-custom
    compute: {gpus: 1}              # or the older `gpu_num: 1`
    replicas: 2
    model:
      model_handler: examples.inference-deployments.mpt.mpt_handler.MPTModelHandler
      model_parameters: {model_name: mosaicml/mpt-7b}
      download_parameters: {hf_path: mosaicml/mpt-7b}

(or `default_model: {model_type: mpt-7b-instruct, checkpoint_path: {hf_path: ...}}`).

- `model.model_handler` is served as it is: the class it names (MosaicML's own
  `examples.inference-deployments...` ones included) runs in a copy of the generic
  `custom_example` model, with `model_parameters` as its constructor kwargs (types kept).
  Its code comes from `--include` (copied next to model.py) or from a `git_repo` integration
  mapped to a local checkout (`--git-repo mosaicml/examples=DIR`, put on the model's
  `python_path`). Its packages (`pip_packages` integrations, a `requirements.txt` next to its
  module, a repository's `pip_install`) become its own Python environment (EXECUTION_ENV_PATH,
  see `python_env`), built once and cached.
- `download_parameters`: a model parameter naming the same `hf_path` / `s3_path` / `gcp_path`
  gets `--weights` (a local copy) when given; a hub id is otherwise kept (the class downloads
  it on first load, as MosaicML's downloader had filled the hub cache before).
- Our own classes (`mosaic_serving.handlers...`) and `default_model.model_type` (mpt-7b,
  mpt-30b-chat, llama2-*, instructor-*) become a copy of a built-in model, parameters renamed
  to ours (`model_name` is `model_name_or_path`).
- `gpu_num` / `compute.gpus` N: KIND_AUTO instances by default (one on each GPU the server
  sees, the CPU where there is none, so the entry also loads on a CPU machine);
  `--instance-kind gpu` pins one instance on each of GPUs 0..N-1 (each holds a whole copy of
  the model; there is no tensor parallelism). `replicas` is for the Kubernetes Deployment:
  printed, and written with `--values-file` as values for deploy/helm.
- What has no equivalent here (image, command, downloader, ...) is reported, not silently
  dropped; parameters that a built-in handler does not take are an error.

The package, in the order an import runs: `deployment` (the YAML, typed), `builtin_models`
(our models, each handler's parameters read from the handler), `sources` and `python_env`
(a custom handler's code and packages), `plan`, `render` (config.pbtxt, Helm values, the
report), `model_folder` (the folder written), `cli`.
"""

from mosaic_serving.mosaicml_import.builtin_models import BUILTINS, Builtin, accepted_parameters, builtin_for
from mosaic_serving.mosaicml_import.cli import main, parse_args
from mosaic_serving.mosaicml_import.deployment import (
    Deployment,
    DeploymentImportError,
    load_deployment,
    parse_deployment,
)
from mosaic_serving.mosaicml_import.model_folder import find_templates, write_model
from mosaic_serving.mosaicml_import.plan import Plan, plan_import
from mosaic_serving.mosaicml_import.render import helm_values, parameter_text, render_config, summary

__all__ = ["BUILTINS", "Builtin", "Deployment", "DeploymentImportError", "Plan", "accepted_parameters", "builtin_for",
           "find_templates", "helm_values", "load_deployment", "main", "parameter_text", "parse_args",
           "parse_deployment", "plan_import", "render_config", "summary", "write_model"]
