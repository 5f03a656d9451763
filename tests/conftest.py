"""Shared fixtures: the tiny models, built once into the model cache."""

import pytest

from mosaic_serving.tiny_models import tiny_model_path


@pytest.fixture(scope="session")
def tiny_mpt_path():
    return tiny_model_path("mpt")


@pytest.fixture(scope="session")
def tiny_instructor_path():
    return tiny_model_path("instructor")


@pytest.fixture(scope="session")
def tiny_diffusion_path():
    return tiny_model_path("diffusion")
