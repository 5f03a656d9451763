from mosaic_serving.triton.models.instructor import TritonPythonModel  # noqa: F401
