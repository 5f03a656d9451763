from mosaic_serving.triton.models.mpt import TritonPythonModel  # noqa: F401
