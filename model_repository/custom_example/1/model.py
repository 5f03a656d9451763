from mosaic_serving.triton.models.custom import TritonPythonModel  # noqa: F401
