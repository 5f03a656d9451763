"""`python -m mosaic_serving.mosaicml_import`: the command line; exit status 2 on a refused import."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import yaml

from mosaic_serving.mosaicml_import import python_env
from mosaic_serving.mosaicml_import.deployment import DeploymentImportError, load_deployment
from mosaic_serving.mosaicml_import.model_folder import find_templates, write_model
from mosaic_serving.mosaicml_import.plan import plan_import
from mosaic_serving.mosaicml_import.render import helm_values, summary
from mosaic_serving.mosaicml_import.sources import SourceError, parse_git_repo_option


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mosaic_serving.mosaicml_import",
        description="Turn a MosaicML inference deployment YAML into a Triton model repository entry.",
    )
    parser.add_argument("deployment", type=Path, help="the MosaicML deployment YAML")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="the model folder to write (default: model_repository/<the deployment's name>)")
    parser.add_argument("--weights", default=None,
                        help="weights for a built-in handler (hub id or directory), instead of the YAML's")
    parser.add_argument("--instance-kind", choices=("gpu", "cpu", "auto"), default="auto",
                        help="Triton instance kind (default auto: the GPUs where there are some, else the CPU; "
                             "gpu pins the deployment's GPUs 0..N-1 and fails to load without them)")
    parser.add_argument("--git-repo", action="append", default=[], metavar="OWNER/NAME=DIR",
                        help="a local checkout for a git_repo integration (put on the model's python_path); repeatable")
    parser.add_argument("--env-cache", type=Path, default=None,
                        help="where the handlers' Python environments are built and cached "
                             "(default: $MOSAIC_SERVING_ENV_CACHE or ~/.cache/mosaic-serving/python-envs)")
    parser.add_argument("--no-env", action="store_true",
                        help="do not build the handler's own Python environment (it runs in the server's)")
    parser.add_argument("--ignore-requirements-txt", action="store_true",
                        help="leave out the requirements.txt next to the handler's module")
    parser.add_argument("--pip-package", action="append", default=[], metavar="REQUIREMENT",
                        help="one more requirement for the handler's environment (e.g. a pin its packages "
                             "forgot); repeatable")
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="a file or package to copy next to model.py (a custom handler's module); repeatable")
    parser.add_argument("--templates", type=Path, default=None,
                        help="the model repository holding the built-in models to copy (default: found)")
    parser.add_argument("--values-file", type=Path, default=None,
                        help="also write Helm values (replicaCount, gpusPerReplica, extraEnv) for deploy/helm")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        deployment = load_deployment(args.deployment)
        name = args.output.name if args.output else str(deployment.get("name") or "")
        if not name:
            raise DeploymentImportError("the deployment has no `name`; pass --output DIR to name the model")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise DeploymentImportError(f"{name!r} cannot name a Triton model: use letters, digits, "
                                        "'-', '_' and '.' (pass --output DIR to choose the name)")
        output = args.output or Path("model_repository") / name
        git_repos = dict(parse_git_repo_option(text) for text in args.git_repo)
        plan = plan_import(deployment, name=output.name, weights=args.weights, git_repos=git_repos,
                           includes=args.include, use_requirements_txt=not args.ignore_requirements_txt)
        instance_kind = args.instance_kind
        if args.pip_package:
            if plan.builtin is not None:
                raise DeploymentImportError("--pip-package applies to a handler class served as it is; "
                                            f"{plan.handler} is built in and runs in the server's environment")
            plan.requirements.extend(args.pip_package)
            plan.requirement_origins.extend(["--pip-package"] * len(args.pip_package))
        templates = find_templates(output, args.templates, plan.template)
        if plan.requirements and not args.no_env:
            env = python_env.build_env(plan.requirements, args.env_cache, log=lambda m: print(m, file=sys.stderr))
            plan.env_path = str(env)
        write_model(plan, output, templates, instance_kind, args.deployment.name, args.include, args.force)
        if args.values_file:
            args.values_file.write_text(yaml.safe_dump(helm_values(plan), sort_keys=False))
    except (DeploymentImportError, SourceError, python_env.EnvBuildError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(plan, output, instance_kind))
    if args.values_file:
        print(f"wrote {args.values_file} (helm install ... -f {args.values_file})")
    return 0
