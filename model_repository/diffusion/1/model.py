from mosaic_serving.triton.models.diffusion import TritonPythonModel  # noqa: F401
