"""The Triton Python-backend side: one shared adapter, a thin model class per handler.

Modules that import `triton_python_backend_utils` (adapter, models) only load inside
Triton's Python backend stub; `config`, `tensors` and `local_server` load anywhere.
"""
